"""NATS users and subject permissions: each service may publish and subscribe only where its role needs.

One table (:data:`ROLES`) says, per NATS user, what it may publish and subscribe to, and which part
of the bus topology (``coo.common.topology``) it declares or waits for. From it come:

* the nats-server configuration (``authorization { users = [...] }``) with bcrypt hashes of the
  passwords (:meth:`NatsAuth.server_config`), written 0600 into the stack's state dir;
* one random password per user, generated on the first ``coo up`` and reused, in a 0600 file
  under ``<state>/secrets/`` (:meth:`NatsAuth.ensure_passwords`); a service reads its own through
  ``COO_NATS_PASSWORD_FILE`` (:class:`coo.common.config.CommonSettings`), so no secret is ever in a
  command line, in supervisord's configuration or in the environment;
* the permissions to declare exactly the part of the topology each user declares
  (:data:`coo.common.topology.SCOPES`, used by :mod:`coo.common.declare`).

Users (subjects in ``docs/security.md``):

==============  ===========================================================================
orchestrator    the streams and its three consumers; the ``coo_missions`` bucket; publishes tasks,
                sandbox runs, control and timeline events; reads the timeline and the DLQ, replays
                dead letters (so it may also publish results); budget ``set_limit``/``status``
agent           its three task consumers (``agent-<role>``); publishes agent results; budget
                ``reserve``/``settle``/``release`` only: never the ledger's KV, never control
budget          the ``coo_budget`` bucket (the ledger); serves ``coo.budget.*`` (nats.micro,
                ``$SRV.*`` discovery); publishes budget timeline events
sandbox         the ``sandbox-runs`` consumer; the ``coo_sandbox_runs`` bucket; publishes sandbox
                results: no missions, no tasks
admin           everything (operators, tests); never used by a service
==============  ===========================================================================

Each user's inbox is its own (``_INBOX_<user>.>``, the bus connects with that ``inbox_prefix``), so
no service can subscribe to the replies another one gets (a KV read of a mission, a budget reply).

``python -m coo.stack.nats_auth --state-dir var/stack`` writes the files from a shell (the Docker
stack's init container, or by hand after removing a password file to rotate it).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bcrypt

from coo.common import topology as T
from coo.stack.render import atomic_write

API = "$JS.API"
SERVICE_USERS = ("orchestrator", "agent", "budget", "sandbox")
ADMIN = "admin"
USERS = (*SERVICE_USERS, ADMIN)
#: bcrypt cost of the hashes in the server config (nats-server checks each CONNECT against it).
BCRYPT_COST = 11


inbox_prefix = T.inbox_prefix
_kv = T.bucket_stream


# ------------------------------------------------------------------- permission building blocks
def _stream_owner(stream: str) -> list[str]:
    return [f"{API}.STREAM.CREATE.{stream}", f"{API}.STREAM.UPDATE.{stream}", f"{API}.STREAM.INFO.{stream}"]


def _stream_info(stream: str) -> list[str]:
    return [f"{API}.STREAM.INFO.{stream}"]


def _consumer(name: str, *, declare: bool = True) -> list[str]:
    """Pull from a durable consumer of the topology (fetch, ack/nak/term/in-progress, info), and
    declare it (create or update that one consumer, with its own filter subject)."""
    spec = T.consumers()[name]
    out = [f"{API}.CONSUMER.MSG.NEXT.{spec.stream}.{name}", f"{API}.CONSUMER.INFO.{spec.stream}.{name}",
           f"$JS.ACK.{spec.stream}.{name}.>"]
    if declare:
        out.append(f"{API}.CONSUMER.CREATE.{spec.stream}.{name}.{spec.config.filter_subject}")
    return out


def _ordered_reader(stream: str) -> list[str]:
    """Ephemeral ordered consumers on a stream (a KV watch or ``keys()``, a timeline read)."""
    return [f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.INFO.{stream}.*", f"{API}.CONSUMER.DELETE.{stream}.*",
            f"$JS.FC.{stream}.>"]


def _bucket_owner(bucket: str) -> list[str]:
    """Declare, read (get, direct get, watch, keys) and write (put, create, update, delete) one bucket."""
    stream = _kv(bucket)
    return [*_stream_owner(stream), f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.STREAM.MSG.GET.{stream}", *_ordered_reader(stream), f"$KV.{bucket}.>"]


@dataclass(frozen=True)
class Role:
    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    scope: T.Scope | None = None   # None: declares the whole topology (admin)
    doc: str = ""

    def permissions(self) -> dict[str, Any]:
        perms: dict[str, Any] = {"publish": {"allow": list(self.publish)},
                                 "subscribe": {"allow": list(self.subscribe)}}
        if self.allow_responses:
            perms["allow_responses"] = True
        return perms


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _roles() -> dict[str, Role]:
    work = list(T.WORK_STREAMS)
    all_streams = list(T.ALL_STREAMS)
    orch_consumers = T.ORCHESTRATOR_CONSUMERS
    agent_consumers = T.AGENT_CONSUMERS
    budget = f"{T.BUDGET}."
    roles = [
        Role(
            "orchestrator",
            publish=_dedupe([
                *(p for s in all_streams for p in _stream_owner(s)),
                *(p for c in orch_consumers for p in _consumer(c)),
                *_bucket_owner(T.BUCKET_MISSIONS),
                # mission retention: a deleted mission's purge marker, and its timeline subject
                f"{API}.STREAM.PURGE.{_kv(T.BUCKET_MISSIONS)}", f"{API}.STREAM.PURGE.{T.STREAM_TIMELINE}",
                # the mission pipeline
                f"{T.TASKS}.*", T.SANDBOX_RUNS, f"{T.CONTROL}.*", f"{T.TIMELINE}.*",
                # the timeline read (an ordered consumer per request)
                *_ordered_reader(T.STREAM_TIMELINE),
                # dead letters: list, read the original, replay it (any work subject), drop the letter
                f"{API}.STREAM.MSG.GET.{T.STREAM_DLQ}", f"{API}.STREAM.MSG.DELETE.{T.STREAM_DLQ}",
                *(f"{API}.STREAM.MSG.GET.{s}" for s in work), T.AGENT_RESULTS, T.SANDBOX_RESULTS,
                # the budget: a mission's limit, and the ledger's status for GET /v1/budget
                budget + "set_limit", budget + "status",
            ]),
            subscribe=(inbox_prefix("orchestrator") + ".>",),
            scope=T.SCOPES["orchestrator"],
            doc="declares the streams; runs missions; reads the timeline and the DLQ, replays dead letters",
        ),
        Role(
            "agent",
            publish=_dedupe([
                *_stream_info(T.STREAM_TASKS), *_stream_info(T.STREAM_RESULTS),
                *(p for c in agent_consumers for p in _consumer(c)),
                T.AGENT_RESULTS,
                budget + "reserve", budget + "settle", budget + "release",
            ]),
            subscribe=(inbox_prefix("agent") + ".>",),
            scope=T.SCOPES["agent"],
            doc="takes tasks of its roles, publishes results, reserves and settles budget through the service",
        ),
        Role(
            "budget",
            publish=_dedupe([
                *_bucket_owner(T.BUCKET_BUDGET), f"{API}.STREAM.PURGE.{_kv(T.BUCKET_BUDGET)}",
                *_stream_info(T.STREAM_TIMELINE), f"{T.TIMELINE}.*",
                # replies to its callers' inboxes: allow_responses covers a reply only on the connection
                # that received the request; one sent after a reconnect (a NATS node lost) needs this
                *(inbox_prefix(caller) + ".>" for caller in ("orchestrator", "agent")),
            ]),
            # nats.micro: its endpoints (queue group) and discovery ($SRV.PING|INFO|STATS[.budget[.<id>]])
            subscribe=(budget + "*", "$SRV.*", "$SRV.*.budget", "$SRV.*.budget.*", inbox_prefix("budget") + ".>"),
            allow_responses=True,
            scope=T.SCOPES["budget"],
            doc="owns the ledger (coo_budget KV) and serves coo.budget.* requests",
        ),
        Role(
            "sandbox",
            publish=_dedupe([
                *_stream_info(T.STREAM_SANDBOX), *_stream_info(T.STREAM_RESULTS),
                *_consumer("sandbox-runs"), *_bucket_owner(T.BUCKET_SANDBOX_RUNS), T.SANDBOX_RESULTS,
            ]),
            subscribe=(inbox_prefix("sandbox") + ".>",),
            scope=T.SCOPES["sandbox"],
            doc="takes sandbox runs, keeps them by run id (coo_sandbox_runs KV), publishes results",
        ),
        Role(ADMIN, publish=(">",), subscribe=(">",), doc="operators and tests; no service uses it"),
    ]
    # Every service may ask whether JetStream is up (account info: its limits and usage, nothing
    # of another service): a cluster answers only once its meta group has a leader.
    roles = [r if r.user == ADMIN else replace(r, publish=(f"{API}.INFO", *r.publish)) for r in roles]
    return {r.user: r for r in roles}


#: The permission table, by NATS user.
ROLES: dict[str, Role] = _roles()


# ------------------------------------------------------------------------------ passwords
def bcrypt_hash(password: str, cost: int = BCRYPT_COST) -> str:
    """A ``$2a$`` bcrypt hash (the prefix every nats-server accepts)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost, prefix=b"2a")).decode()


def bcrypt_check(password: str, hashed: str) -> bool:
    return bcrypt.checkpw(password.encode(), hashed.encode())


@dataclass
class NatsAuth:
    """The users of one NATS server: their password files and the server's authorization config."""

    secrets_dir: Path
    users: tuple[str, ...] = USERS
    #: connections without credentials act as this user (tests only: the harness maps them to admin)
    no_auth_user: str | None = None
    hash_passwords: bool = True
    #: the name nats-server is started with (-n): in the file too, or a reload (SIGHUP) is refused
    server_name: str | None = None
    _hashes: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    @classmethod
    def for_state(cls, state: Path, **kwargs: Any) -> NatsAuth:
        return cls(secrets_dir(state), **kwargs)

    def password_file(self, user: str) -> Path:
        return self.secrets_dir / f"nats-{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def ensure_passwords(self) -> NatsAuth:
        """A random password per user, written once (0600, in a 0700 directory) and reused."""
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        for user in self.users:
            path = self.password_file(user)
            if not path.exists() or not path.read_text().strip():
                atomic_write(path, secrets.token_urlsafe(32) + "\n", mode=0o600)
            elif path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
        return self

    def _stored(self, user: str) -> str:
        """What the server config holds for a user: a bcrypt hash (the config file is 0600 too)."""
        password = self.password(user)
        if user == self.no_auth_user:
            return password  # nats-server maps credential-less connections to it only when stored plain
        cached = self._hashes.get(user)
        if cached and cached[0] == password:
            return cached[1]
        stored = (bcrypt_hash(password) if self.hash_passwords else None) or password
        self._hashes[user] = (password, stored)
        return stored

    def authorization(self) -> dict[str, Any]:
        users = []
        for user in self.users:
            role = ROLES[user]
            users.append({"user": user, "password": self._stored(user), "permissions": role.permissions()})
        return {"users": users}

    def server_config(self) -> str:
        """nats-server configuration text (every string JSON-quoted, so ``$JS``/``$2a$`` stay literal)."""
        lines = ["# Generated by coo.stack.nats_auth from its permission table; do not edit (rewritten at",
                 "# each start). Passwords are bcrypt hashes; each service's password is in its own 0600",
                 f"# file under {self.secrets_dir}."]
        if self.server_name:
            lines.append(f"server_name: {json.dumps(self.server_name)}")
        lines.append("authorization " + json.dumps(self.authorization(), indent=2))
        if self.no_auth_user:
            lines.append(f"no_auth_user: {json.dumps(self.no_auth_user)}")
        return "\n".join(lines) + "\n"

    def write_server_config(self, path: Path) -> Path:
        self.ensure_passwords()
        return atomic_write(path, self.server_config(), mode=0o600)

    def service_env(self, user: str) -> dict[str, str]:
        """The environment that makes a service connect as ``user`` (a path, never the password)."""
        return {"COO_NATS_USER": user, "COO_NATS_PASSWORD_FILE": str(self.password_file(user))}


def secrets_dir(state: Path) -> Path:
    return state / "secrets"


def server_config_path(state: Path) -> Path:
    return state / "nats" / "nats.conf"


def prepare(state: Path, server_name: str | None = None) -> NatsAuth:
    """``coo up``: the password files (kept) and the server config (rewritten) of the local stack."""
    auth = NatsAuth.for_state(state, server_name=server_name)
    auth.write_server_config(server_config_path(state))
    return auth


# ----------------------------------------------------------------------------- docs
def markdown_table() -> str:
    """The permission table as Markdown (docs/security.md holds this text; a test compares)."""
    rows = ["| user | role | may publish (and JetStream API) | may subscribe |", "|---|---|---|---|"]
    for role in ROLES.values():
        pub = "<br>".join(f"`{p}`" for p in role.publish)
        sub = "<br>".join(f"`{p}`" for p in role.subscribe)
        if role.allow_responses:
            sub += "<br>(and replies to the requests it receives: `allow_responses`)"
        rows.append(f"| `{role.user}` | {role.doc} | {pub} | {sub} |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m coo.stack.nats_auth",
                                description="Write the NATS users' password files (kept) and the server config.")
    p.add_argument("--state-dir", type=Path, default=Path("var/stack"))
    p.add_argument("--config", type=Path, default=None, help="default: <state>/nats/nats.conf")
    p.add_argument("--server-name", default=None, help="the nats-server's -n (the local stack: coo-local)")
    p.add_argument("--markdown", action="store_true", help="print the permission table (docs/security.md) and exit")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
        return
    auth = NatsAuth.for_state(args.state_dir, server_name=args.server_name)
    path = auth.write_server_config(args.config or server_config_path(args.state_dir))
    print(f"nats config: {path}\npassword files: {auth.secrets_dir}/nats-<user>.password")


if __name__ == "__main__":
    main()

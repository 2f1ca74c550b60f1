"""Access control: NATS users with subject permissions (coo.stack.nats_auth), the API's bearer token,
and secrets kept out of process arguments, metric labels and committed files.

Every denial is checked against the server itself: nats-server answers a forbidden publish or
subscribe with ``-ERR 'Permissions Violation for Publish to "<subject>"'`` (or ``Subscription to``),
which nats-py hands to the connection's error callback; a forbidden JetStream call gets no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, StreamConfig

from coo.common import timeline
from coo.common import topology as T
from coo.common.bus import Bus
from coo.common.config import CommonSettings
from coo.common.declare import declare as declare_topology
from coo.common.scrub import scrub_text
from coo.common.secret_patterns import PATTERN_SPECS, PY_FLAGS
from coo.stack import nats_auth
from coo.stack.components import StackSettings, components, prepare
from coo.stack.nats_auth import ROLES, SERVICE_USERS, USERS, NatsAuth, inbox_prefix
from coo.v1 import agent_pb2, budget_pb2, sandbox_pb2
from tests.natsserver import NatsServer

REPO = Path(__file__).resolve().parents[1]
VIOLATION = "Permissions Violation"


# =========================================================== the table (no server needed)
def test_every_stream_consumer_and_bucket_is_declared_by_exactly_one_user():
    scoped = {u: r.scope for u, r in ROLES.items() if r.scope is not None}
    assert set(scoped) == set(SERVICE_USERS)
    for kind, names in (("streams", [c.name for c in T.streams(CommonSettings())]),
                        ("consumers", list(T.consumers())),
                        ("buckets", [b.bucket for b in T.buckets()])):
        for name in names:
            owners = [u for u, s in scoped.items() if name in getattr(s, kind)]
            assert len(owners) == 1, f"{kind[:-1]} {name} is declared by {owners or 'nobody'}"
    # a user waits only for streams another user declares
    for user, scope in scoped.items():
        for stream in scope.waits_for:
            assert stream not in scope.streams and any(stream in s.streams for s in scoped.values()), (user, stream)


def test_each_consumer_is_pulled_by_its_service_only():
    for name, spec in T.consumers().items():
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{name}"
        users = [u for u in SERVICE_USERS if pull in ROLES[u].publish]
        assert users == [name.split("-", 1)[0]], (name, users)


def test_no_service_user_has_a_blanket_permission():
    blanket = {">", "*", "$JS.>", "$JS.API.>", "$JS.API.STREAM.>", "$JS.API.CONSUMER.>", "$KV.>", "_INBOX.>",
               "coo.>", "$SRV.>", "$JS.API.STREAM.INFO.*", "$JS.API.DIRECT.GET.>"}
    for user in SERVICE_USERS:
        role = ROLES[user]
        assert not blanket & set(role.publish), (user, blanket & set(role.publish))
        assert not blanket & set(role.subscribe), (user, blanket & set(role.subscribe))
        inboxes = [s for s in role.subscribe if s.startswith("_INBOX")]
        assert inboxes == [inbox_prefix(user) + ".>"], (user, inboxes)
        assert not [p for p in role.publish
                    if p.startswith(("$JS.API.STREAM.DELETE", "$JS.API.CONSUMER.DURABLE"))], user
    # the ledger is written by the budget service only; missions by the orchestrator only
    for bucket, owner in ((T.BUCKET_BUDGET, "budget"), (T.BUCKET_MISSIONS, "orchestrator"),
                          (T.BUCKET_SANDBOX_RUNS, "sandbox")):
        users = [u for u in SERVICE_USERS if any(p.startswith(f"$KV.{bucket}.") or p.endswith(f"KV_{bucket}")
                                                  or f"KV_{bucket}." in p for p in ROLES[u].publish)]
        assert users == [owner], (bucket, users)


def test_docs_show_the_permission_table_of_the_code():
    doc = (REPO / "docs" / "security.md").read_text()
    block = doc.split("<!-- BEGIN nats-permissions -->\n", 1)[1].split("<!-- END nats-permissions -->", 1)[0]
    assert block == nats_auth.markdown_table(), "run `python -m coo.stack.nats_auth --markdown` into docs/security.md"


def test_password_files_and_server_config(tmp_path):
    auth = NatsAuth.for_state(tmp_path)
    conf_path = tmp_path / "nats" / "nats.conf"
    auth.write_server_config(conf_path)
    assert stat.S_IMODE(auth.secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(conf_path.stat().st_mode) == 0o600
    passwords = {}
    for user in USERS:
        path = auth.password_file(user)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        passwords[user] = auth.password(user)
        assert len(passwords[user]) >= 40
    assert len(set(passwords.values())) == len(USERS)
    text = conf_path.read_text()
    hashes = re.findall(r'"password": "([^"]+)"', text)
    assert len(hashes) == len(USERS)
    for user, hashed in zip(USERS, hashes):
        assert passwords[user] not in text
        assert hashed.startswith("$2a$11$") and nats_auth.bcrypt_check(passwords[user], hashed)
    # kept across starts: a second `coo up` reuses every password
    NatsAuth.for_state(tmp_path).write_server_config(conf_path)
    assert {u: auth.password(u) for u in USERS} == passwords


def test_settings_read_the_password_file_and_say_what_is_wrong(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("s3cret-from-file\n")
    monkeypatch.setenv("COO_NATS_USER", "agent")
    monkeypatch.setenv("COO_NATS_PASSWORD_FILE", str(pw))
    s = CommonSettings()
    assert s.nats_user == "agent" and s.nats_password.get_secret_value() == "s3cret-from-file"
    assert "s3cret" not in repr(s)
    monkeypatch.setenv("COO_NATS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="COO_NATS_PASSWORD_FILE"):
        CommonSettings()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("COO_NATS_PASSWORD_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is empty"):
        CommonSettings()


def test_the_stack_gives_each_service_a_user_and_a_password_file(tmp_path):
    s = StackSettings(state_dir=tmp_path / "state")
    prepare(s)
    parts = {c.name: c for c in components(s)}
    auth = NatsAuth.for_state(s.state)
    passwords = [auth.password(u) for u in USERS]
    assert ["-c", str(nats_auth.server_config_path(s.state))] == parts["nats"].command[-2:]
    assert nats_auth.server_config_path(s.state).exists()
    for name, c in parts.items():
        flat = " ".join(c.command) + " " + json.dumps(c.env)
        assert not [p for p in passwords if p in flat], name
        assert "COO_NATS_PASSWORD" not in c.env, name
        if name in SERVICE_USERS:
            assert c.env["COO_NATS_USER"] == name
            assert Path(c.env["COO_NATS_PASSWORD_FILE"]) == auth.password_file(name)
        else:
            assert "COO_NATS_USER" not in c.env, name


def test_the_stacks_nats_server_reloads_its_users_without_a_restart(tmp_path):
    """The rotation in docs/security.md: the local stack's nats command, SIGHUP, a new password."""
    from tests.natsserver import free_port

    s = StackSettings(state_dir=tmp_path / "state", nats_port=free_port(), nats_monitor_port=free_port())
    prepare(s)
    nats_cmd = next(c for c in components(s) if c.name == "nats").command
    log = tmp_path / "nats.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(nats_cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        auth = NatsAuth.for_state(s.state)
        old = auth.password("agent")
        auth.password_file("agent").unlink()
        subprocess.run([sys.executable, "-m", "coo.stack.nats_auth", "--state-dir", str(s.state),
                        "--server-name", "coo-local"], check=True, capture_output=True)
        proc.send_signal(signal.SIGHUP)
        while "Reloaded server configuration" not in log.read_text() and time.monotonic() < deadline:
            assert "Failed to reload" not in log.read_text(), log.read_text()[-2000:]
            time.sleep(0.05)
        assert "Reloaded server configuration" in log.read_text(), log.read_text()[-2000:]

        async def connect(password: str) -> None:
            nc = await nats.connect(f"nats://127.0.0.1:{s.nats_port}", user="agent", password=password,
                                    allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
            await nc.close()

        asyncio.run(connect(auth.password("agent")))
        with pytest.raises(nats.errors.Error):
            asyncio.run(connect(old))
    finally:
        proc.terminate()
        proc.wait(10)


# ======================================================= a real nats-server with the config
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A nats-server with the stack's users (no anonymous user); the topology declared by the
    services' own users, the orchestrator last (the others wait for its streams)."""
    root = tmp_path_factory.mktemp("authz")
    auth = NatsAuth.for_state(root).ensure_passwords()
    srv = NatsServer(data_dir=root / "nats", auth_config=auth.server_config()).start()

    async def declare() -> None:
        conns = {u: await Conn.open(srv, auth, u) for u in SERVICE_USERS}
        try:
            others = [asyncio.create_task(declare_topology(conns[u].bus.js, conns[u].bus.settings, wait_seconds=20))
                      for u in ("agent", "budget", "sandbox")]
            await asyncio.sleep(0.5)
            assert not any(t.done() for t in others), "a service declared before the streams existed"
            await declare_topology(conns["orchestrator"].bus.js, conns["orchestrator"].bus.settings)
            await asyncio.gather(*others)
            for c in conns.values():
                assert not c.errors, c.errors
        finally:
            for c in conns.values():
                await c.close()

    try:
        asyncio.run(declare())
        yield srv, auth
    finally:
        srv.cleanup()


class Conn:
    """One connection as one user, with the errors the server sent it."""

    def __init__(self, bus: Bus, errors: list[str]) -> None:
        self.bus = bus
        self.nc = bus.nc
        self.js = bus.nc.jetstream(timeout=1.5)
        self.errors = errors

    @classmethod
    async def open(cls, srv: NatsServer, auth: NatsAuth, user: str) -> Conn:
        errors: list[str] = []

        async def error_cb(exc: Exception) -> None:
            errors.append(str(exc))

        password = auth.password(user)
        nc = await nats.connect(srv.url, user=user, password=password, inbox_prefix=inbox_prefix(user),
                                error_cb=error_cb, allow_reconnect=False, connect_timeout=5)
        settings = CommonSettings(nats_url=srv.url, nats_user=user, nats_password=password)
        return cls(Bus(nc, user, settings), errors)

    async def violation(self, subject: str, verb: str = "Publish to", timeout: float = 3.0) -> str:
        needle = f'{VIOLATION} for {verb} "{subject}"'.lower()  # nats-py lower-cases the server's -ERR
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.errors if needle in e.lower()]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {needle!r} from the server; errors: {self.errors}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


@pytest.fixture
async def conns(server):
    srv, auth = server
    opened: dict[str, Conn] = {}

    async def as_user(user: str) -> Conn:
        if user not in opened:
            opened[user] = await Conn.open(srv, auth, user)
        return opened[user]

    yield as_user
    for c in opened.values():
        await c.close()


async def _attempt(coro, timeout: float = 2.0) -> Exception | None:
    try:
        await asyncio.wait_for(coro, timeout)
    except Exception as exc:  # noqa: BLE001 - a denied request times out; that is the point
        return exc
    return None


# ------------------------------------------------------------------------------ what roles CAN do
async def test_orchestrator_runs_the_pipeline_reads_the_timeline_and_replays_dead_letters(conns):
    orch = await conns("orchestrator")
    kv = await orch.bus.kv(T.BUCKET_MISSIONS)
    await kv.put("m-can-1", b"mission")
    assert (await kv.get("m-can-1")).value == b"mission" and "m-can-1" in await kv.keys()
    await orch.bus.publish(T.task_subject("coo"), agent_pb2.AgentTask(task_id="t-can-1", mission_id="m-can-1"))
    await orch.bus.publish(T.SANDBOX_RUNS, sandbox_pb2.SandboxRun(run_id="r-can-1", mission_id="m-can-1"))
    await timeline.record(orch.bus, "m-can-1", "mission.created", "created")
    events = await timeline.read(orch.bus, "m-can-1")
    assert [e.type for e in events] == ["mission.created"]
    # a dead letter: an agent result terminated by the orchestrator's consumer, listed and replayed
    await orch.bus.publish(T.AGENT_RESULTS, agent_pb2.AgentResult(task_id="t-dead", mission_id="m-can-1"))
    sub = await orch.js.pull_subscribe_bind("orchestrator-agent-results", stream=T.STREAM_RESULTS)
    msg = (await sub.fetch(1, timeout=3))[0]
    await msg._client.publish(msg.reply, b"+TERM test dead letter")
    deadline = time.monotonic() + 5
    while not (letters := await orch.bus.dead_letters()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert letters and letters[-1]["stream"] == T.STREAM_RESULTS
    replayed = await orch.bus.replay(letters[-1]["dlq_id"])
    assert replayed["replayed"] and replayed["subject"] == T.AGENT_RESULTS
    again = (await sub.fetch(1, timeout=3))[0]
    await again.ack()
    assert not orch.errors, orch.errors


async def test_agent_takes_tasks_publishes_results_and_calls_the_budget_service(conns):
    orch, agent, budget = await conns("orchestrator"), await conns("agent"), await conns("budget")

    async def reserve(req: budget_pb2.ReserveRequest) -> budget_pb2.ReserveReply:
        return budget_pb2.ReserveReply(ok=True, reservation_id=req.reservation_id)

    await budget.bus.serve("budget", {"coo.budget.reserve": (budget_pb2.ReserveRequest, reserve)})
    await orch.bus.publish(T.task_subject("engineer"), agent_pb2.AgentTask(task_id="t-can-2", mission_id="m-2"))
    sub = await agent.js.pull_subscribe_bind("agent-engineer", stream=T.STREAM_TASKS)
    msg = (await sub.fetch(1, timeout=3))[0]
    await msg.in_progress()
    await msg.ack()
    reply = await agent.bus.request("coo.budget.reserve", budget_pb2.ReserveRequest(reservation_id="r-1"),
                                    budget_pb2.ReserveReply)
    assert reply.ok and reply.reservation_id == "r-1"
    await agent.bus.publish(T.AGENT_RESULTS, agent_pb2.AgentResult(task_id="t-can-2", mission_id="m-2"))
    assert not agent.errors and not budget.errors, (agent.errors, budget.errors)


async def test_budget_owns_the_ledger_and_sandbox_its_runs(conns):
    budget, sandbox, orch = await conns("budget"), await conns("sandbox"), await conns("orchestrator")
    ledger = await budget.bus.kv(T.BUCKET_BUDGET)
    await ledger.put("mission.m-3", b"{}")
    assert (await ledger.get("mission.m-3")).value == b"{}" and "mission.m-3" in await ledger.keys()
    await budget.js.purge_stream(f"KV_{T.BUCKET_BUDGET}", subject=f"$KV.{T.BUCKET_BUDGET}.mission.m-3")
    await timeline.record(budget.bus, "m-3", "budget.warning", "80% spent")
    runs = await sandbox.bus.kv(T.BUCKET_SANDBOX_RUNS)
    await runs.put("r-3", b"run")
    assert "r-3" in await runs.keys()
    await orch.bus.publish(T.SANDBOX_RUNS, sandbox_pb2.SandboxRun(run_id="r-3", mission_id="m-3"))
    sub = await sandbox.js.pull_subscribe_bind("sandbox-runs", stream=T.STREAM_SANDBOX)
    for msg in await sub.fetch(10, timeout=3):
        await msg.ack()
    await sandbox.bus.publish(T.SANDBOX_RESULTS, sandbox_pb2.SandboxResult(run_id="r-3", mission_id="m-3"))
    assert not budget.errors and not sandbox.errors, (budget.errors, sandbox.errors)


# --------------------------------------------------------------------------- what roles CANNOT do
KV_BUDGET, KV_MISSIONS, KV_RUNS = (f"KV_{b}" for b in (T.BUCKET_BUDGET, T.BUCKET_MISSIONS, T.BUCKET_SANDBOX_RUNS))
PUB, SUB = "Publish to", "Subscription to"

DENIED = [
    # user, what, action on a Conn, the subject the server refuses, verb
    ("agent", "write the budget ledger (KV put)", lambda c: c.nc.publish("$KV.coo_budget.mission.m-x", b"{}"),
     "$KV.coo_budget.mission.m-x", PUB),
    ("agent", "open the ledger bucket", lambda c: c.js.key_value(T.BUCKET_BUDGET),
     f"$JS.API.STREAM.INFO.{KV_BUDGET}", PUB),
    ("agent", "read the ledger (direct get)",
     lambda c: c.nc.request(f"$JS.API.DIRECT.GET.{KV_BUDGET}.$KV.coo_budget.limits.daily", b"", timeout=1),
     f"$JS.API.DIRECT.GET.{KV_BUDGET}.$KV.coo_budget.limits.daily", PUB),
    ("agent", "purge the ledger", lambda c: c.js.purge_stream(KV_BUDGET), f"$JS.API.STREAM.PURGE.{KV_BUDGET}", PUB),
    ("agent", "watch the ledger with its own consumer",
     lambda c: c.js.add_consumer(KV_BUDGET, ConsumerConfig(deliver_subject=inbox_prefix("agent") + ".x")),
     f"$JS.API.CONSUMER.CREATE.{KV_BUDGET}", PUB),
    ("agent", "publish a control message", lambda c: c.js.publish("coo.control.m-x", b"x"), "coo.control.m-x", PUB),
    ("agent", "set a mission's budget limit", lambda c: c.nc.request("coo.budget.set_limit", b"", timeout=1),
     "coo.budget.set_limit", PUB),
    ("agent", "publish a task", lambda c: c.js.publish("coo.tasks.engineer", b"x"), "coo.tasks.engineer", PUB),
    ("agent", "publish a sandbox result", lambda c: c.js.publish(T.SANDBOX_RESULTS, b"x"), T.SANDBOX_RESULTS, PUB),
    ("agent", "change the task stream", lambda c: c.js.update_stream(StreamConfig(name=T.STREAM_TASKS,
                                                                                  subjects=["coo.tasks.>"])),
     f"$JS.API.STREAM.UPDATE.{T.STREAM_TASKS}", PUB),
    ("agent", "create a stream", lambda c: c.js.add_stream(name="STEAL", subjects=["steal.>"]),
     "$JS.API.STREAM.CREATE.STEAL", PUB),
    ("agent", "alter the orchestrator's consumer",
     lambda c: c.js.add_consumer(T.STREAM_RESULTS, T.consumers()["orchestrator-agent-results"].config),
     f"$JS.API.CONSUMER.CREATE.{T.STREAM_RESULTS}.orchestrator-agent-results.{T.AGENT_RESULTS}", PUB),
    ("agent", "read the budget service's replies", lambda c: c.nc.subscribe(inbox_prefix("budget") + ".>"),
     inbox_prefix("budget") + ".>", SUB),
    ("agent", "read every inbox", lambda c: c.nc.subscribe("_INBOX.>"), "_INBOX.>", SUB),
    ("agent", "listen to everything", lambda c: c.nc.subscribe(">"), ">", SUB),
    ("sandbox", "open the missions bucket", lambda c: c.js.key_value(T.BUCKET_MISSIONS),
     f"$JS.API.STREAM.INFO.{KV_MISSIONS}", PUB),
    ("sandbox", "read a mission (direct get)",
     lambda c: c.nc.request(f"$JS.API.DIRECT.GET.{KV_MISSIONS}.$KV.coo_missions.m-can-1", b"", timeout=1),
     f"$JS.API.DIRECT.GET.{KV_MISSIONS}.$KV.coo_missions.m-can-1", PUB),
    ("sandbox", "read a mission (message get)",
     lambda c: c.nc.request(f"$JS.API.STREAM.MSG.GET.{KV_MISSIONS}", b'{"last_by_subj":"$KV.coo_missions.m-can-1"}',
                            timeout=1),
     f"$JS.API.STREAM.MSG.GET.{KV_MISSIONS}", PUB),
    ("sandbox", "listen to mission writes", lambda c: c.nc.subscribe("$KV.coo_missions.>"), "$KV.coo_missions.>", SUB),
    ("sandbox", "subscribe to the tasks", lambda c: c.nc.subscribe("coo.tasks.>"), "coo.tasks.>", SUB),
    ("sandbox", "pull the engineers' tasks",
     lambda c: c.nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{T.STREAM_TASKS}.agent-engineer", b"", timeout=1),
     f"$JS.API.CONSUMER.MSG.NEXT.{T.STREAM_TASKS}.agent-engineer", PUB),
    ("sandbox", "read a task by sequence",
     lambda c: c.nc.request(f"$JS.API.STREAM.MSG.GET.{T.STREAM_TASKS}", b'{"seq":1}', timeout=1),
     f"$JS.API.STREAM.MSG.GET.{T.STREAM_TASKS}", PUB),
    ("sandbox", "publish an agent result", lambda c: c.js.publish(T.AGENT_RESULTS, b"x"), T.AGENT_RESULTS, PUB),
    ("budget", "publish a task", lambda c: c.js.publish("coo.tasks.coo", b"x"), "coo.tasks.coo", PUB),
    ("budget", "publish a control message", lambda c: c.js.publish("coo.control.m-x", b"x"), "coo.control.m-x", PUB),
    ("budget", "publish an agent result", lambda c: c.js.publish(T.AGENT_RESULTS, b"x"), T.AGENT_RESULTS, PUB),
    ("budget", "open the missions bucket", lambda c: c.js.key_value(T.BUCKET_MISSIONS),
     f"$JS.API.STREAM.INFO.{KV_MISSIONS}", PUB),
    ("orchestrator", "write the budget ledger", lambda c: c.nc.publish("$KV.coo_budget.limits.daily", b"{}"),
     "$KV.coo_budget.limits.daily", PUB),
    ("orchestrator", "reserve budget (agents do)", lambda c: c.nc.request("coo.budget.reserve", b"", timeout=1),
     "coo.budget.reserve", PUB),
    ("orchestrator", "open the sandbox runs", lambda c: c.js.key_value(T.BUCKET_SANDBOX_RUNS),
     f"$JS.API.STREAM.INFO.{KV_RUNS}", PUB),
    ("orchestrator", "delete a stream", lambda c: c.js.delete_stream(T.STREAM_TASKS),
     f"$JS.API.STREAM.DELETE.{T.STREAM_TASKS}", PUB),
    ("orchestrator", "serve the budget endpoints", lambda c: c.nc.subscribe("coo.budget.*"), "coo.budget.*", SUB),
]


@pytest.mark.parametrize("user,what,action,subject,verb", DENIED,
                         ids=[f"{d[0]}-cannot-{d[1].replace(' ', '-')}" for d in DENIED])
async def test_denied(conns, user, what, action, subject, verb):
    c = await conns(user)
    attempt = asyncio.create_task(_attempt(action(c)))  # a denied request would only time out
    try:
        error = await c.violation(subject, verb)
    finally:
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
    assert VIOLATION.lower() in error.lower()


async def test_a_denied_ledger_write_changes_nothing(conns):
    agent, admin_budget = await conns("agent"), await conns("budget")
    ledger = await admin_budget.bus.kv(T.BUCKET_BUDGET)
    await ledger.put("limits.daily", b'{"limit_nusd": 1}')
    before = await ledger.get("limits.daily")
    await agent.nc.publish("$KV.coo_budget.limits.daily", b'{"limit_nusd": null}')
    await agent.nc.publish("$KV.coo_budget.mission.m-evil", b"{}")
    await agent.nc.flush()
    await agent.violation("$KV.coo_budget.limits.daily")
    after = await ledger.get("limits.daily")
    assert (after.revision, after.value) == (before.revision, before.value)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await ledger.get("mission.m-evil")


@pytest.mark.parametrize("user,password", [("mallory", "whatever-password-1"), ("agent", "wrong-password-123"),
                                           ("agent", None), (None, None)],
                         ids=["unknown-user", "wrong-password", "user-without-password", "no-credentials"])
async def test_unknown_user_or_wrong_password_is_rejected(server, user, password):
    srv, _ = server
    kwargs = {"user": user, "password": password or ""} if user else {}
    with pytest.raises(nats.errors.Error) as err:
        nc = await nats.connect(srv.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3, **kwargs)
        await nc.close()
    assert "Authorization Violation" in str(err.value) or isinstance(err.value, nats.errors.AuthorizationError)


async def test_the_hash_in_the_config_is_not_a_password(server):
    srv, auth = server
    hashed = re.search(r'"user": "agent",\s*"password": "([^"]+)"', auth.server_config()).group(1)
    with pytest.raises(nats.errors.Error):
        nc = await nats.connect(srv.url, user="agent", password=hashed, allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=3)
        await nc.close()


async def test_bus_connects_as_its_user_with_its_own_inbox(server):
    """Bus.connect sets the user's inbox prefix (the only inbox its permissions allow) and
    declares only the service's own part of the topology."""
    srv, auth = server
    settings = CommonSettings(nats_url=srv.url, nats_user="sandbox", nats_password=auth.password("sandbox"))
    bus = await Bus.connect("sandbox", settings)
    try:
        assert bytes(bus.nc._inbox_prefix) == inbox_prefix("sandbox").encode()
        await asyncio.wait_for(bus.ensure_topology(), 20)
        kv = await bus.kv(T.BUCKET_SANDBOX_RUNS)
        await kv.put("r-bus", b"ok")
    finally:
        await bus.close()


# ================================================ the services as processes, as their users
CANARY_LLM_KEY = "sk-proj-" + "AccessCanaryLLMKey0123" * 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.harness import ServiceStack

    root = tmp_path_factory.mktemp("authstack")
    srv = NatsServer(data_dir=root / "nats").start()
    s = ServiceStack(root, srv, env={"COO_LLM_API_KEY": CANARY_LLM_KEY}, auth=True)
    assert s.auth and s.nats_auth is not None
    try:
        s.start()
        yield s
    finally:
        s.stop()
        srv.cleanup()


def _secrets(stack) -> dict[str, str]:
    from tests.harness import TEST_TOKEN

    out = {f"nats password of {u}": stack.nats_auth.password(u) for u in USERS}
    out["LLM API key"] = CANARY_LLM_KEY
    out["API token"] = TEST_TOKEN
    return out


def _session_pids(leader: int) -> list[int]:
    """A process and everything it started (the harness starts each service in its own session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader or int(entry.name) == leader:  # session id
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make test installs it)")
def test_services_run_a_mission_as_their_own_users_without_a_permission_violation(stack):
    m = stack.submit("write a FizzBuzz function with tests")
    done = stack.wait_status(m["mission_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    for name in SERVICE_USERS:
        log = stack.log(name)
        assert VIOLATION.lower() not in log.lower() and "authorization violation" not in log.lower(), \
            (name, log[-2000:])
    conns = httpx.get(f"{stack.nats.monitor_url}/connz", params={"auth": "true", "limit": 1000}, timeout=5).json()
    users = {c.get("name"): c.get("authorized_user") for c in conns["connections"]}
    for name in SERVICE_USERS:
        assert users.get(name) == name, users


def test_no_secret_in_process_arguments_or_in_the_environment(stack):
    secrets_ = _secrets(stack)
    nats_passwords = {k: v for k, v in secrets_.items() if k.startswith("nats password")}
    pids = {"nats-server": [stack.nats._proc.pid]}
    for name, proc in stack.procs.items():
        pids[name] = _session_pids(proc.pid)
    assert all(pids.values()), pids
    leaks = []
    for name, plist in pids.items():
        for pid in plist:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            leaks += [f"{what} in the arguments of {name} ({pid})" for what, v in secrets_.items() if v in cmdline]
            # NATS passwords live in files only: not even in a service's environment
            leaks += [f"{what} in the environment of {name} ({pid})" for what, v in nats_passwords.items()
                      if v in environ]
    assert not leaks, leaks


def test_no_secret_in_metrics_or_the_nats_monitor(stack):
    secrets_ = _secrets(stack)
    pages = {name: httpx.get(stack.url(name, "/metrics"), timeout=5).text for name in stack.services}
    for path in ("/varz", "/connz?auth=true&subs=true", "/subsz?subs=true", "/jsz?accounts=true"):
        pages[f"nats{path}"] = httpx.get(stack.nats.monitor_url + path, timeout=5).text
    assert "coo_bus_messages_total" in pages["orchestrator"]
    leaks = [f"{what} in {where}" for where, text in pages.items() for what, v in secrets_.items() if v in text]
    assert not leaks, leaks


def _example(schema: dict, spec: dict):
    """A minimal valid-looking JSON body for a request schema (auth must fail before validation)."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return dict.fromkeys(schema.get("required", []), "x")


def test_every_mutating_route_needs_the_bearer_token(stack):
    from tests.harness import TEST_READ_TOKEN, TEST_TOKEN

    base = stack.url("orchestrator")
    spec = httpx.get(base + "/openapi.json", timeout=5).json()
    routes = [(method.upper(), path, op) for path, ops in spec["paths"].items() for method, op in ops.items()
              if method.lower() in ("post", "put", "patch", "delete")]
    assert {("POST", "/v1/missions"), ("POST", "/v1/missions/{mission_id}/control"),
            ("POST", "/v1/dlq/{dlq_id}/replay"), ("POST", "/v1/alerts")} <= {(m, p) for m, p, _ in routes}
    bad = {"missing": {}, "wrong": {"Authorization": "Bearer " + "y" * len(TEST_TOKEN)},
           "one character off": {"Authorization": "Bearer " + TEST_TOKEN[:-1] + "?"},
           "prefix": {"Authorization": "Bearer " + TEST_TOKEN[:-1]},
           "other scheme": {"Authorization": "Basic " + TEST_TOKEN},
           "token scheme": {"Authorization": "Token " + TEST_TOKEN},
           "no scheme": {"Authorization": TEST_TOKEN}}
    failures = []
    with httpx.Client(base_url=base, timeout=10) as c:
        for method, path, op in routes:
            url = re.sub(r"\{[^}]+\}", "1", path)
            schema = ((op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema"))
            body = _example(schema, spec) if schema else None
            for why, headers in bad.items():
                resp = c.request(method, url, json=body, headers=headers)
                if resp.status_code != 401:
                    failures.append(f"{method} {path} with {why} token: {resp.status_code}")
            # the read-only token is known but not enough: 403, saying which token it takes
            ro = c.request(method, url, json=body, headers={"Authorization": f"Bearer {TEST_READ_TOKEN}"})
            if ro.status_code != 403 or "read-only" not in ro.json().get("detail", ""):
                failures.append(f"{method} {path} with the read-only token: {ro.status_code} {ro.text[:100]}")
            # the right token gets past authentication (whatever the request then says)
            ok = c.request(method, url, json=body, headers={"Authorization": f"Bearer {TEST_TOKEN}"})
            if ok.status_code in (401, 403):
                failures.append(f"{method} {path} refuses the right token: {ok.status_code}")
    assert not failures, failures


#: What answers without a token: the probes, the metrics and the API's own description.
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


def test_every_read_needs_a_token_and_the_read_only_token_is_enough(stack):
    from tests.harness import TEST_READ_TOKEN, TEST_TOKEN

    base = stack.url("orchestrator")
    spec = httpx.get(base + "/openapi.json", timeout=5).json()
    reads = sorted(path for path, ops in spec["paths"].items() if "get" in ops)
    assert set(reads) == {
        "/v1/missions", "/v1/missions/{mission_id}", "/v1/missions/{mission_id}/timeline",
        "/v1/missions/{mission_id}/workspace", "/v1/missions/{mission_id}/workspace/files/{name}",
        "/v1/missions/{mission_id}/workspace.tar.gz", "/v1/dlq", "/v1/budget", "/v1/status",
        "/v1/system/timeline"}, reads
    done = stack.wait_status(stack.submit("write a FizzBuzz function with tests")["mission_id"],
                             {"completed", "failed"})
    assert done["status"] == "completed", done
    with stack.api() as api:
        name = api.get(f"/v1/missions/{done['mission_id']}/workspace").json()["files"][0]["name"]
    bad = {"no token": {}, "wrong token": {"Authorization": "Bearer " + "y" * len(TEST_READ_TOKEN)},
           "read token, one character off": {"Authorization": "Bearer " + TEST_READ_TOKEN[:-1] + "?"},
           "other scheme": {"Authorization": "Basic " + TEST_READ_TOKEN}}
    good = {"read-only": TEST_READ_TOKEN, "operator": TEST_TOKEN}
    failures = []
    with httpx.Client(base_url=base, timeout=10) as c:
        for path in reads:
            url = path.replace("{mission_id}", done["mission_id"]).replace("{name}", name)
            for why, headers in bad.items():
                resp = c.get(url, headers=headers)
                if resp.status_code != 401 or resp.headers.get("www-authenticate") != "Bearer":
                    failures.append(f"GET {path} with {why}: {resp.status_code}")
                elif done["mission_id"] in resp.text or "FizzBuzz" in resp.text:
                    failures.append(f"GET {path} with {why} tells something of the mission: {resp.text[:100]}")
            for who, token in good.items():
                resp = c.get(url, headers={"Authorization": f"Bearer {token}"})
                if resp.status_code != 200:
                    failures.append(f"GET {path} with the {who} token: {resp.status_code} {resp.text[:100]}")
        for path in OPEN_PATHS:
            if (code := c.get(path).status_code) != 200:
                failures.append(f"GET {path} without a token: {code} (it stays open)")
    assert not failures, failures


def test_the_cli_reads_with_the_read_only_token_and_says_why_it_cannot_change_anything(stack, tmp_path):
    from tests.harness import TEST_READ_TOKEN

    env = {k: v for k, v in os.environ.items() if not k.startswith("COO_API_TOKEN")}
    env.update({"COO_API_URL": stack.url("orchestrator"), "COO_STATE_DIR": str(tmp_path),  # no token files here
                "COO_API_READ_TOKEN": TEST_READ_TOKEN})

    def coo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coo.cli", *args], check=False, capture_output=True, text=True,
                              env=env, timeout=60)

    listed = coo("missions", "--json")
    assert listed.returncode == 0, listed.stderr
    mission_id = json.loads(listed.stdout)["missions"][0]["mission_id"]
    assert coo("mission", mission_id, "--json").returncode == 0
    assert coo("budget", "--json").returncode == 0
    refused = coo("cancel", mission_id, "--reason", "read-only")
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr and "read-only" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    del env["COO_API_READ_TOKEN"]
    none = coo("missions")
    assert none.returncode == 1 and "no API token" in none.stderr, none.stderr


def test_the_read_only_token_is_generated_beside_the_operators_and_never_equal_to_it(tmp_path, monkeypatch):
    from coo.orchestrator.settings import OrchestratorSettings

    for var in ("COO_API_TOKEN", "COO_API_TOKEN_FILE", "COO_API_READ_TOKEN", "COO_API_READ_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    s = OrchestratorSettings(data_dir=tmp_path)
    operator, reader = s.resolve_api_token(), s.resolve_api_read_token()
    assert len(reader) >= 40 and reader != operator
    path = tmp_path / "api-read-token"
    assert path.read_text() == reader and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert OrchestratorSettings(data_dir=tmp_path).resolve_api_read_token() == reader  # kept across restarts
    monkeypatch.setenv("COO_API_READ_TOKEN", operator)
    with pytest.raises(ValueError, match="give reads a token of their own"):
        OrchestratorSettings(data_dir=tmp_path).resolve_api_read_token()


# ======================================================================= committed files
#: Files whose purpose is to hold fake secrets of every shape: the scrubber's pattern table and its
#: docs, and the scrubber's own tests.
FIXTURE_FILES = {
    "tests/test_scrub.py",
    "services/coo/common/secret_patterns.py",
    "services/coo/common/scrub.py",
    "tests/reliability/test_secret_leaks.py",   # one canary of every kind, sent through every path
    "services/coo/common/gitleaks_rules.py",    # gitleaks' patterns (fixed token prefixes among them)
    "observability/otelcol/config.yaml",        # the same patterns, as the collector's processors
    "scripts/gen_gitleaks_rules.py",
    "tests/secret_corpus.py",                   # the generated secret corpus and its shapes
    "tests/test_gitleaks_rules.py",
    "bench/scrub.py",                           # the benchmark's generated corpus and its shapes
}
#: Prose the scrubber reads as key/value pairs ("detect-secrets: findings", "Secret leaks: canaries").
ALLOWED_VALUES_PROSE = {"findings", "canaries"}
#: Fake secrets that say nothing of being fake, each where it is used (everything else fake must
#: say so in its line: EXAMPLE, canary, fake, dummy, test, mock, DoNotUse...).
ALLOWED_VALUES = {
    ("tests/test_cli.py", "hunter2hunter2"),            # `coo scrub` input
    ("tests/test_access_control.py", "true&subs=true"),  # a NATS monitoring query (?auth=true&subs=true)
    ("tests/test_mockllm.py", "sk-stack-roman-csv"),    # an echo-secret scenario value
    ("tests/reliability/figures.py", "Secret leaks — canaries through every path, searched in every sink"),  # a title
}
_FAKE_WORDS = re.compile(r"(?i)example|canary|fake|dummy|donot(?:use|leak)|not-?a-?real|(?:\b|_)(?:test|mock)(?:\b|_)")
# Placeholders, variable references and template slots are not values.
_PLACEHOLDER = re.compile(r"""(?ix)^(?:change-me|not-needed|none|null|redacted|\.\.\.|…|x{3,}
    |<[^>]*>|\$\{.*|\$\(.*|\$[A-Z_][A-Z0-9_]*|\{[^}]*\}|%\([^)]*\)s|\*+)$""")
# A key/value match whose "value" is code: a call, an attribute chain, an identifier in prose.
_CODE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?:\(.*)?$")
_KV_RULES = {"kv_json_literal", "kv_dq", "kv_edq", "kv_sq", "kv_bare", "kv_flag", "kv_flag_quoted", "kv_line",
             "kv_query", "kv_conn", "cookie_header", "cli_login_password", "cli_user_password"}
_RULES = [(p.name, re.compile(p.regex, PY_FLAGS)) for p in PATTERN_SPECS if not p.pii]


def _python_strings(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    try:
        return [(t.start, t.end) for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type == tokenize.STRING]
    except (tokenize.TokenError, SyntaxError):
        return None


def secret_findings(path: str, text: str) -> list[str]:
    """Lines the scrubber would change, reduced to the values that could be real secrets."""
    out = []
    strings = _python_strings(text) if path.endswith(".py") else None
    for lineno, line in enumerate(text.splitlines(), 1):
        if scrub_text(line) == line:
            continue
        for name, rx in _RULES:
            for m in rx.finditer(line):
                groups = m.re.groupindex
                if "secret" in groups and m.group("secret") is not None:
                    start, end = m.span("secret")
                else:
                    start = m.end("pre") if "pre" in groups and m.group("pre") is not None else m.start()
                    end = m.start("post") if "post" in groups and m.group("post") is not None else m.end()
                value = line[start:end]
                bare = value.strip().strip("\"'`,;.)]")
                if strings is not None and not any(a <= (lineno, start) and (lineno, end) <= b for a, b in strings):
                    continue  # Python code, not a literal
                if _PLACEHOLDER.match(bare) or _FAKE_WORDS.search(line) or (path, bare) in ALLOWED_VALUES \
                        or (name in _KV_RULES and bare.lower() in ALLOWED_VALUES_PROSE):
                    continue
                if name in _KV_RULES and (len(bare) < 8 or (_CODE.match(bare) and ("." in bare or "(" in bare))):
                    continue
                out.append(f"{path}:{lineno}: {name}: {value[:40]!r}")
    return out


def test_the_scanner_finds_a_committed_secret():
    # (assembled at run time, so this file holds no line the scanner would flag)
    assert secret_findings("x.env", "=".join(["OPENAI_API_KEY", "sk-proj-" + "Q9" * 20]))
    assert secret_findings("x.py", 'DB = "postgres://app:' + "Hx7-kq2-mLpz9" + '@db:5432/app"')
    assert secret_findings("x.yml", ": ".join(["password", "Tr0ub4dor-and-3-more"]))
    assert secret_findings("x.py", 'settings = {"api_key": "' + "k" * 8 + 'Z7q"}')
    assert not secret_findings("x.py", "token = context.attach(ctx)")
    assert not secret_findings("x.yml", "COO_API_TOKEN: ${COO_API_TOKEN:-}")
    assert not secret_findings("x.py", 'KEY = "AKIAIOSFODNN7EXAMPLE"')


def test_no_secret_in_committed_files():
    res = subprocess.run(["git", "ls-files", "-z"], check=False, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip("not a git checkout")
    findings = []
    for path in filter(None, res.stdout.split("\0")):
        if path in FIXTURE_FILES:
            continue
        full = REPO / path
        try:
            if full.stat().st_size > 2_000_000:
                continue
            text = full.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        findings += secret_findings(path, text)
    assert not findings, "possible secrets in committed files (a fake one must say so: see ALLOWED_VALUES):\n" \
        + "\n".join(findings)

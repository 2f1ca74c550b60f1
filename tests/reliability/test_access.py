"""Access control on NATS under faults: the services keep their own NATS users (and their
permissions) through a SIGKILL of nats-server, start in any order (the ones that only use the
orchestrator's streams wait for them), and come back after a password rotation while the old
password is refused.

Figures: recovery time after nats-server is killed, the wait of services started before the
orchestrator, the rotated service's downtime, and permission violations seen in any service log
(target 0: the permission table covers everything the services do).
"""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import nats
import nats.errors
import pytest

from coo.stack.nats_auth import SERVICE_USERS
from tests.harness import ServiceStack
from tests.natsserver import NatsServer

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

GOAL = "write a FizzBuzz function with tests"


def _stack(tmp_path) -> ServiceStack:
    nats_server = NatsServer(data_dir=tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    stack = ServiceStack(tmp_path, nats_server, auth=True)   # restarts the server with the users' config
    assert stack.auth and nats_server.auth_config
    return stack


def _violations(stack: ServiceStack) -> dict[str, int]:
    out = {}
    for name in SERVICE_USERS:
        log = stack.log(name).lower()
        out[name] = log.count("permissions violation") + log.count("authorization violation")
    return out


def _users(stack: ServiceStack) -> dict[str, str]:
    """Connection name -> the NATS user it authenticated as, from the server's monitor."""
    conns = httpx.get(f"{stack.nats.monitor_url}/connz", params={"auth": "true", "limit": 1000}, timeout=5).json()
    return {c.get("name"): c.get("authorized_user") for c in conns.get("connections", [])}


def _complete(stack: ServiceStack, timeout: float = 120) -> float:
    started = time.monotonic()
    m = stack.submit(GOAL)
    done = stack.wait_status(m["mission_id"], {"completed", "failed"}, timeout=timeout)
    assert done["status"] == "completed", done
    return time.monotonic() - started


async def _connect(url: str, user: str, password: str) -> None:
    nc = await nats.connect(url, user=user, password=password, allow_reconnect=False, max_reconnect_attempts=0,
                            connect_timeout=3)
    await nc.close()


def test_services_reconnect_as_their_users_after_nats_is_killed(tmp_path, figures):
    stack = _stack(tmp_path)
    try:
        stack.start()
        _complete(stack)
        stack.nats.kill()
        time.sleep(1.0)
        killed = time.monotonic()
        stack.nats.start()
        # every service back, as its own user
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            users = _users(stack)
            if all(users.get(n) == n for n in SERVICE_USERS):
                break
            time.sleep(0.2)
        reconnected = time.monotonic() - killed
        figures.add("access", "services reconnected as their own NATS users after SIGKILL of nats-server",
                    f"{reconnected:.1f}s", target="< 30s", ok=reconnected < 30)
        assert all(users.get(n) == n for n in SERVICE_USERS), users
        took = _complete(stack, timeout=180)
        figures.add("access", "first mission after the nats-server restart (submit to completed)", f"{took:.1f}s")
        bad = _violations(stack)
        figures.add("access", "permission violations in service logs (kill + restart of nats-server)",
                    sum(bad.values()), target="0", ok=not any(bad.values()), note=str(bad))
        assert not any(bad.values()), bad
    finally:
        stack.stop()
        stack.nats.cleanup()


def test_services_started_before_the_orchestrator_wait_for_its_streams(tmp_path, figures):
    stack = _stack(tmp_path)
    try:
        for name in ("mockllm", "budget", "sandbox", "agent"):
            stack.start(name)
        time.sleep(2.0)
        waiting = [n for n in ("budget", "sandbox", "agent")
                   if "waiting for a stream the orchestrator declares" in stack.log(n)]
        figures.add("access", "services that waited for the orchestrator's streams (started first)",
                    f"{len(waiting)}/3", target="3/3", ok=len(waiting) == 3)
        assert len(waiting) == 3, {n: stack.log(n)[-1500:] for n in ("budget", "sandbox", "agent")}
        stack.start("orchestrator")
        stack.wait_engine()
        took = _complete(stack)
        figures.add("access", "first mission with the orchestrator started last (submit to completed)",
                    f"{took:.1f}s")
        bad = _violations(stack)
        assert not any(bad.values()), bad
    finally:
        stack.stop()
        stack.nats.cleanup()


def test_a_rotated_password_takes_over_and_the_old_one_is_refused(tmp_path, figures):
    stack = _stack(tmp_path)
    auth = stack.nats_auth
    try:
        stack.start()
        _complete(stack)
        old = auth.password("agent")
        # rotate: a new password file, the server config rewritten and reloaded, the agent restarted
        auth.password_file("agent").unlink()
        auth.ensure_passwords()
        assert auth.password("agent") != old
        stack.nats.auth_config = auth.server_config()
        rotated = time.monotonic()
        stack.nats.reload()
        time.sleep(1.0)
        with pytest.raises(nats.errors.Error):
            asyncio.run(_connect(stack.nats.url, "agent", old))
        asyncio.run(_connect(stack.nats.url, "agent", auth.password("agent")))
        stack.stop("agent")
        stack.start("agent")
        took = _complete(stack)
        downtime = time.monotonic() - rotated - took
        figures.add("access", "password rotation of one service: reload + restart until it works again",
                    f"{downtime:.1f}s", target="< 30s", ok=downtime < 30)
        figures.add("access", "old password after rotation", "refused", target="refused", ok=True)
        assert _users(stack).get("agent") == "agent"
        others = {n: c for n, c in _violations(stack).items() if n != "agent"}
        assert not any(others.values()), others
    finally:
        stack.stop()
        stack.nats.cleanup()

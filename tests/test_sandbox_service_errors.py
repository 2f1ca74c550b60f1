"""The sandbox service tells why: the backend it chose (log line at start, `coo health`), and the
cause of a run that could not happen, from the backend to the SandboxResult, the log line and the
span status. And every service binds the host its COO_<NAME>_HOST says (containers need 0.0.0.0)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import nats
import pytest
from opentelemetry.trace import StatusCode

from coo.common import topology
from coo.common.bus import Bus
from coo.common.config import CommonSettings, service_host
from coo.common.service import serve_service
from coo.sandbox.service import SandboxService
from coo.sandbox.settings import SandboxSettings
from coo.v1 import common_pb2, sandbox_pb2
from tests.harness import ServiceStack
from tests.natsserver import free_port

NO_ENGINE = "unix:///nonexistent-coo-test/docker.sock"


def _run(run_id: str) -> sandbox_pb2.SandboxRun:
    run = sandbox_pb2.SandboxRun(run_id=run_id, mission_id="m-err", task_id="t0")
    run.files.append(common_pb2.File(name="main.py", content="print('hi')"))
    run.command.extend(["python3", "main.py"])
    run.limits.CopyFrom(sandbox_pb2.SandboxLimits(timeout_seconds=5, memory_mb=128, cpu_seconds=2))
    return run


def test_service_host_reads_one_variable_per_service(monkeypatch):
    for name in ("orchestrator", "agent", "budget", "sandbox", "mockllm"):
        monkeypatch.delenv(f"COO_{name.upper()}_HOST", raising=False)
        assert service_host(name) == "127.0.0.1"
        monkeypatch.setenv(f"COO_{name.upper()}_HOST", "0.0.0.0")
        assert service_host(name) == "0.0.0.0"
    monkeypatch.setenv("COO_AGENT_HOST", "agent.internal")
    assert service_host("agent") == "agent.internal"
    monkeypatch.setenv("COO_AGENT_HOST", "0.0.0.0; rm -rf /")
    with pytest.raises(ValueError, match="COO_AGENT_HOST"):
        service_host("agent")


def _listening(port: int) -> set[str]:
    """Local addresses listening on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


async def test_a_service_binds_the_host_its_variable_names(nats_server, monkeypatch):
    """What agent, budget and sandbox run through (coo.common.service): COO_<NAME>_HOST=0.0.0.0
    binds every address, unset binds loopback only."""
    for host, want in (("0.0.0.0", "0.0.0.0"), ("", "127.0.0.1")):
        monkeypatch.setenv("COO_BUDGET_HOST", host)
        port, stop, started = free_port(), asyncio.Event(), asyncio.Event()

        async def start(ctx, started: asyncio.Event = started) -> None:
            started.set()

        task = asyncio.create_task(serve_service("budget", port, CommonSettings(nats_url=nats_server.url), start,
                                                 stop=stop, install_signals=False))
        await asyncio.wait_for(started.wait(), 20)
        try:
            deadline = time.monotonic() + 10
            while not _listening(port) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert _listening(port) == {want}
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def test_a_run_that_cannot_start_keeps_its_cause_in_the_result_and_the_span(nats_server, spans, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    settings = SandboxSettings(nats_url=nats_server.url, sandbox_backend="docker")
    bus = await Bus.connect("sandbox", settings)
    try:
        await bus.ensure_topology()
        svc = SandboxService(bus, settings)
        assert svc.backend.name == "docker" and svc.backend_reason == "COO_SANDBOX_BACKEND=docker"
        await svc.start()
        await bus.publish(topology.SANDBOX_RUNS, _run("r-err-1"), mission_id="m-err")
        kv = await bus.kv(topology.BUCKET_SANDBOX_RUNS)
        result = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                result = sandbox_pb2.SandboxResult.FromString((await kv.get("r-err-1")).value)
            except Exception:  # noqa: BLE001 - not there yet
                result = None
            if result is not None and result.outcome != sandbox_pb2.SANDBOX_OUTCOME_UNSPECIFIED:
                break
            await asyncio.sleep(0.1)
        assert result is not None and result.outcome == sandbox_pb2.SANDBOX_OUTCOME_ERROR, result
        assert result.error.startswith("no Docker engine answers: "), result.error
        assert "nonexistent-coo-test" in result.error or "No such file" in result.error, result.error
    finally:
        await bus.close()
    run_spans = [s for s in spans.get_finished_spans() if s.name == "execute_tool sandbox"]
    assert run_spans, [s.name for s in spans.get_finished_spans()]
    span = run_spans[-1]
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == result.error
    assert span.attributes["coo.sandbox.outcome"] == "error"
    assert span.attributes["error.type"] == "sandbox_docker"


def test_the_service_logs_its_backend_and_each_errors_cause_and_health_shows_it(tmp_path, nats_server):
    stack = ServiceStack(tmp_path, nats_server, services=("sandbox",), auth=False,
                         env={"COO_SANDBOX_BACKEND": "docker", "DOCKER_HOST": NO_ENGINE, "COO_SANDBOX_HOST": "0.0.0.0"})
    from tests.reliability.helpers import ensure_topology

    ensure_topology(nats_server.url)
    stack.start()
    try:
        port = stack.settings.sandbox_port
        assert _listening(port) == {"0.0.0.0"}
        # readiness (what `coo health` prints for the sandbox): the backend, why, and why it fails
        deadline = time.monotonic() + 30
        while "backend" not in (ready := httpx.get(stack.url("sandbox", "/readyz"), timeout=10).json())["checks"]:
            assert time.monotonic() < deadline, ready
            time.sleep(0.1)
        backend = ready["checks"]["backend"]
        assert not backend["ok"]
        assert backend["detail"].startswith("docker (COO_SANDBOX_BACKEND=docker): no Docker engine answers"), backend

        async def one_run() -> sandbox_pb2.SandboxResult:
            nc = await nats.connect(nats_server.url)
            got: asyncio.Future = asyncio.get_running_loop().create_future()

            async def on_result(msg) -> None:
                if not got.done():
                    got.set_result(sandbox_pb2.SandboxResult.FromString(msg.data))

            await nc.subscribe(topology.SANDBOX_RESULTS, cb=on_result)
            await nc.jetstream().publish(topology.SANDBOX_RUNS, _run("r-err-2").SerializeToString(),
                                         headers={"Coo-Type": "coo.v1.SandboxRun", "Nats-Msg-Id": "r-err-2"})
            try:
                return await asyncio.wait_for(got, 30)
            finally:
                await nc.close()

        # `coo health` prints the same in its sandbox row (the other checks fail here: no stack)
        env = {**os.environ, "COO_SANDBOX_PORT": str(port), "COO_STATE_DIR": str(tmp_path / "state")}
        shown = subprocess.run([sys.executable, "-m", "coo.cli", "health", "--json"], capture_output=True, text=True,
                               env=env, timeout=120, check=False)
        row = next(c for c in json.loads(shown.stdout)["checks"] if c["check"] == "sandbox")
        assert not row["ok"]
        assert row["detail"].startswith("backend: docker (COO_SANDBOX_BACKEND=docker): no Docker engine answers"), row

        result = asyncio.run(one_run())
        assert result.outcome == sandbox_pb2.SANDBOX_OUTCOME_ERROR and result.error.startswith("no Docker engine")
    finally:
        stack.stop()
    lines = [json.loads(line) for line in stack.log("sandbox").splitlines() if line.startswith("{")]
    chosen = [line for line in lines if line.get("event") == "sandbox backend chosen"]
    assert chosen and chosen[0]["backend"] == "docker" and chosen[0]["reason"] == "COO_SANDBOX_BACKEND=docker"
    failed = [line for line in lines if line.get("event") == "sandbox run could not run"]
    assert failed and failed[0]["error"] == result.error and failed[0]["run_id"] == "r-err-2", failed
    assert failed[0]["level"] == "warning"

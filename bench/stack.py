"""The services as real processes (``tests/harness.py``'s ServiceStack) for the mission benchmarks:
a nats-server, mockllm (answering at once), budget, sandbox (bubblewrap), agent(s), orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx

FINAL = {"completed", "failed", "cancelled", "budget_exceeded"}


class _FinishWatch:
    """Mission ids as their final timeline event is published (a NATS subscription on the
    timeline subjects, in a thread), so the runner starts the next mission at once and reads each
    final view with one request, instead of polling the API on a clock (whose period would set
    the pace and add its own load)."""

    def __init__(self, nats_url: str) -> None:
        self.finished: queue.Queue[str] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(nats_url,), name="finish-watch", daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"timeline watch did not start: {self._error}")

    def _run(self, url: str) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._subscribe(url))
        self._loop.run_forever()

    async def _subscribe(self, url: str) -> None:
        import nats

        from coo.common import topology
        from coo.v1 import mission_pb2, timeline_pb2

        final = {mission_pb2.MISSION_STATUS_COMPLETED, mission_pb2.MISSION_STATUS_FAILED,
                 mission_pb2.MISSION_STATUS_CANCELLED, mission_pb2.MISSION_STATUS_BUDGET_EXCEEDED}

        async def on_event(msg) -> None:
            event = timeline_pb2.TimelineEvent()
            with contextlib.suppress(Exception):
                event.ParseFromString(msg.data)
                if event.status in final:
                    self.finished.put(event.mission_id)

        try:
            self._nc = await nats.connect(url, name="bench-finish-watch")
            await self._nc.subscribe(topology.timeline_subject("*"), cb=on_event)
            await self._nc.flush()
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
        self._ready.set()

    def close(self) -> None:
        async def stop() -> None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self._error is None:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def missing() -> str:
    """Why the stack cannot run here ("" when it can)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (make test installs it)"
    return ""


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class Stack:
    """Start with ``with Stack(work_dir, env=..., agents=2) as s:``; ``s.run(n, concurrency)``."""

    def __init__(self, work_dir: Path, *, env: dict[str, str] | None = None, agents: int = 1) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="stack-", dir=work_dir))
        self.env = env or {}
        self.agents = agents
        self.extra: list[subprocess.Popen] = []
        self.extra_urls: list[str] = []

    def __enter__(self) -> Stack:
        from tests.harness import ServiceStack
        from tests.natsserver import NatsServer

        self.nats = NatsServer(data_dir=self.root / "nats").start()
        # The harness's NATS users (when it has them) cost nothing measurable; without them the
        # benchmark does not depend on their set-up.
        kw = {"auth": False} if "auth" in {f.name for f in dataclasses.fields(ServiceStack)} else {}
        self.s = ServiceStack(self.root, self.nats, env=self.env, **kw)
        try:
            self.s.start(timeout=60)
            for i in range(1, self.agents):
                self._add_agent(i)
            self.watch = _FinishWatch(self.nats.url)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _add_agent(self, i: int) -> None:
        """Another agent replica: the same command and environment on another port (the
        replicas share the durable consumers, so JetStream spreads the tasks)."""
        from tests.natsserver import free_port

        c = self.s.parts["agent"]
        port = free_port()
        env = self.s._env(c)
        env["COO_AGENT_PORT"] = str(port)
        env["COO_DATA_DIR"] = str(self.root / "data" / f"agent-{i}")
        from tests.harness import _die_with_parent

        with open(self.root / "logs" / f"agent-{i}.log", "ab") as log:
            proc = subprocess.Popen(c.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)  # noqa: PLW1509 - PR_SET_PDEATHSIG has no other hook
        self.extra.append(proc)
        url = f"http://127.0.0.1:{port}"
        self.extra_urls.append(url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"agent replica {i} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"agent replica {i} not healthy")

    def __exit__(self, *exc) -> None:
        if hasattr(self, "watch"):
            self.watch.close()
        for proc in self.extra:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if hasattr(self, "s"):
            self.s.stop()
        if hasattr(self, "nats"):
            self.nats.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------- metrics
    def _metric_sum(self, urls: list[str], name: str) -> float:
        total = 0.0
        pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", re.M)
        for url in urls:
            text = httpx.get(url + "/metrics", timeout=5).text
            total += sum(float(v) for v in pattern.findall(text))
        return total

    def llm_seconds(self) -> float:
        """Seconds the agents spent in LLM calls so far (their histogram's sum)."""
        return self._metric_sum([self.s.url("agent"), *self.extra_urls], "coo_llm_request_duration_seconds_sum")

    def sandbox_seconds(self) -> float:
        return self._metric_sum([self.s.url("sandbox")], "coo_sandbox_run_duration_seconds_sum")

    # ------------------------------------------------------------------ missions
    def run(self, n: int, concurrency: int, *, first: int = 0, timeout: float = 180.0, marker: str = "") -> dict:
        """Run ``n`` missions, at most ``concurrency`` at a time; their final views, and the span
        from the first creation to the last finish (server-side timestamps). ``marker`` is added to
        every goal (a mock scenario such as ``[mock:slow=2]``)."""
        from tests.harness import GOALS

        done: list[dict] = []
        live: dict[str, float] = {}
        next_goal = first
        deadline = time.monotonic() + timeout
        with self.s.api() as api:
            while len(done) < n:
                while len(live) < concurrency and next_goal < first + n:
                    resp = api.post("/v1/missions", json={"goal": f"{GOALS[next_goal % len(GOALS)]} {marker}".strip()})
                    resp.raise_for_status()
                    live[resp.json()["mission_id"]] = time.monotonic()
                    next_goal += 1
                try:                 # a final timeline event; every second, look at all of them anyway
                    candidates = [self.watch.finished.get(timeout=1.0)]
                except queue.Empty:
                    candidates = list(live)
                for mid in candidates:
                    if mid not in live:
                        continue     # another run's mission, or one already done
                    view = api.get(f"/v1/missions/{mid}").json()
                    if view["status"] in FINAL:
                        done.append(view)
                        del live[mid]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(done)}/{n} missions finished in {timeout}s")
        starts = [_ts(m["created_at"]) for m in done]
        ends = [_ts(m["finished_at"]) for m in done]
        return {"missions": done, "wall_seconds": max(ends) - min(starts),
                "statuses": sorted({m["status"] for m in done})}

    def run_one_by_one(self, n: int, *, first: int = 0) -> list[dict]:
        """``n`` missions one after another, each with the LLM and sandbox seconds it used
        (read from the agents' and the sandbox's histograms before and after)."""
        out = []
        for i in range(n):
            llm0, sb0 = self.llm_seconds(), self.sandbox_seconds()
            view = self.run(1, 1, first=first + i)["missions"][0]
            view["llm_seconds"] = self.llm_seconds() - llm0
            view["sandbox_seconds"] = self.sandbox_seconds() - sb0
            out.append(view)
        return out


# -------------------------------------------------------------------- a local collector
COLLECTOR_CONFIG = textwrap.dedent("""\
    receivers:
      otlp:
        protocols:
          grpc:
            endpoint: 127.0.0.1:{port}
    processors:
      batch: {{}}
    exporters:
      debug:
        verbosity: basic
    service:
      telemetry:
        logs:
          level: warn
        metrics:
          level: none
      pipelines:
        traces:
          receivers: [otlp]
          processors: [batch]
          exporters: [debug]
        logs:
          receivers: [otlp]
          processors: [batch]
          exporters: [debug]
""")


@contextlib.contextmanager
def otlp_endpoint(work_dir: Path) -> Iterator[tuple[str, str]]:
    """An OTLP/gRPC endpoint that accepts everything: the project's collector binary
    (``otelcol-coo``, otlp → batch → debug) when it is built, else an in-process gRPC sink.
    Yields (endpoint URL, what it is)."""
    from coo.stack.components import tool_path
    from tests.natsserver import free_port

    port = free_port()
    binary, _ = tool_path("otelcol")
    if binary:
        cfg = Path(tempfile.mkdtemp(prefix="otelcol-", dir=work_dir)) / "config.yaml"
        cfg.write_text(COLLECTOR_CONFIG.format(port=port))
        with open(cfg.parent / "otelcol.log", "ab") as log:
            proc = subprocess.Popen([binary, "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            _wait_port(port, proc)
            yield f"http://127.0.0.1:{port}", "a local collector (otelcol-coo: otlp → batch → debug)"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    with _grpc_sink(port):
        yield f"http://127.0.0.1:{port}", "an in-process OTLP/gRPC sink (no collector built)"


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError("collector did not open its OTLP port")


@contextlib.contextmanager
def _grpc_sink(port: int) -> Iterator[None]:
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            return trace_service_pb2.ExportTraceServiceResponse()

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request, context):
            return logs_service_pb2.ExportLogsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield
    finally:
        server.stop(1)

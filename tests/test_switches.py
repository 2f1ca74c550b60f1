"""The switches and the shutdown paths, proven on real processes against a real nats-server:

- ``COO_DISABLED_EVENTS``: switched-off event types never reach a mission's timeline, the others do,
  and the ones a mission's final state rests on cannot be switched off;
- SIGTERM: the service says it is stopping and why, takes no new message, hands back (nak) what it
  still holds after its grace period so JetStream redelivers it at once, and flushes its telemetry;
- a crash (a configuration error, an exception while starting) logs one critical line first;
- sandbox crash recovery: a run a killed sandbox left ``running`` is marked failed at start-up and
  never run again;
- ``COO_DEBUG``: a dump of the configuration (secrets redacted) and of the state at start, a DEBUG
  line per message, and a rotated JSON log file under the data dir;
- ``coo_task_duration_seconds`` counted once per agent task.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from coo.common import topology
from coo.common.bus import Bus
from coo.common.config import CommonSettings
from coo.v1 import common_pb2, sandbox_pb2
from tests.harness import TEST_TOKEN, ServiceStack
from tests.natsserver import NatsServer, free_port

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (make test installs it)")
FIZZBUZZ = "write a FizzBuzz function with tests"


@pytest.fixture
def nats_server(tmp_path):
    srv = NatsServer(data_dir=tmp_path / "nats").start()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def make_stack(tmp_path, nats_server):
    made: list[ServiceStack] = []

    def make(env: dict[str, str] | None = None, **kw) -> ServiceStack:
        s = ServiceStack(tmp_path / f"stack{len(made)}", nats_server, env=env or {}, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def consumer_state(url: str, stream: str, consumer: str) -> dict:
    async def go() -> dict:
        bus = await Bus.connect("test-probe", CommonSettings(nats_url=url))
        try:
            info = await bus.js.consumer_info(stream, consumer)
            return {"pending": info.num_pending, "ack_pending": info.num_ack_pending,
                    "redelivered": info.num_redelivered, "ack_wait": info.config.ack_wait}
        finally:
            await bus.close()
    return asyncio.run(go())


class Advisories:
    """JetStream advisories as they are published (a thread of its own with a NATS subscription)."""

    def __init__(self, url: str, subject: str) -> None:
        self.seen: list[dict] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(url, subject),),
                                        daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "no subscription to the advisories"

    async def _run(self, url: str, subject: str) -> None:
        import nats

        self._stop = asyncio.Event()
        nc = await nats.connect(url)

        async def on(msg) -> None:
            self.seen.append(json.loads(msg.data))

        await nc.subscribe(subject, cb=on)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


def wait_for(what: str, check, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout}s (last: {last!r})")


# ----------------------------------------------------------------------------- event switches
@needs_bwrap
def test_switched_off_event_types_never_reach_the_timeline(make_stack):
    stack = make_stack({"COO_DISABLED_EVENTS": "sandbox.executed, task.started,mission.completed,no.such.type"})
    stack.start()
    stack.wait_engine()
    m = stack.submit(FIZZBUZZ)
    done = stack.wait_status(m["mission_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    types = [e["type"] for e in stack.timeline(m["mission_id"])]
    # switched off: never recorded, by any service
    assert "sandbox.executed" not in types and "task.started" not in types, types
    # the others are there, and a final status cannot be switched off (timeline.ALWAYS_ON)
    final = {"mission.created", "status.changed", "mission.planned", "task.reviewed", "mission.completed"}
    assert final <= set(types), types


# -------------------------------------------------------------------------------- SIGTERM
class _OtlpLogs(ThreadingHTTPServer):
    """A minimal OTLP/HTTP receiver: the bodies of the log records it was sent, in order."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/logs":
                    req = logs_service_pb2.ExportLogsServiceRequest.FromString(data)
                    for rl in req.resource_logs:
                        for sl in rl.scope_logs:
                            server.bodies += [r.body.string_value for r in sl.log_records]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@needs_bwrap
def test_sigterm_says_why_hands_back_what_it_holds_at_once_and_flushes_telemetry(make_stack):
    receiver = _OtlpLogs()
    stack = None
    try:
        stack = make_stack({
            "COO_SHUTDOWN_GRACE_SECONDS": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            # log records leave only in batches of 512 or at the flush: what arrives after the stop is the flush
            "OTEL_BLRP_SCHEDULE_DELAY": "600000"})
        stack.start()
        stack.wait_engine()
        m = stack.submit(FIZZBUZZ + " [mock:slow=60]")   # the planner's LLM call takes a minute
        url = stack.nats.url
        held = wait_for("the agent holds the planning task",
                        lambda: ((s := consumer_state(url, topology.STREAM_TASKS, "agent-coo"))["ack_pending"] == 1
                                 and s))
        assert held["ack_wait"] >= 30
        naks = Advisories(url, f"$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.{topology.STREAM_TASKS}.agent-coo")
        log_before = len(stack.log("agent"))
        started = time.monotonic()
        codes = stack.stop("agent")
        took = time.monotonic() - started
        assert codes == {"agent": 0}, (codes, stack.log("agent")[-3000:])
        assert took < 10, f"SIGTERM took {took:.1f}s with a 1s grace period"   # not the minute the call takes
        lines = json_lines(stack.log("agent")[log_before:])
        events = [r.get("event", "") for r in lines]
        stop = next(r for r in lines if r.get("event") == "stop requested")
        assert stop["signal"] == "SIGTERM"
        stopping = next(r for r in lines if r.get("event", "").startswith("service stopping: no new work"))
        assert stopping["reason"] == "SIGTERM" and stopping["grace_seconds"] == 1.0
        handed = next(r for r in lines if r.get("event") == "service stopping: message handed back for redelivery")
        assert handed["subject"] == "coo.tasks.coo" and handed["level"] == "warning"
        assert "service stopped; flushing telemetry" in events
        assert events.index("stop requested") < events.index(handed["event"]) \
            < events.index("service stopped; flushing telemetry")
        # handed back: the server saw the nak of the task's message (its advisory)
        nak = wait_for("the nak's advisory", lambda: naks.seen, timeout=5)
        naks.close()
        assert len(nak) == 1 and nak[0]["consumer"] == "agent-coo" and nak[0]["deliveries"] == 1, nak
        # the flush: the lines of the stop reached the OTLP receiver (the batch delay is 10 minutes)
        wait_for("the stop's log records at the OTLP receiver",
                 lambda: "service stopping: message handed back for redelivery" in receiver.bodies, timeout=5)
        assert "stop requested" in receiver.bodies
        # redelivered at once: a new agent gets the task back in seconds, not after the 60 s ack wait
        restarted = time.monotonic()
        stack.start("agent")
        again = wait_for("the restarted agent holds the task again",
                         lambda: (s := consumer_state(url, topology.STREAM_TASKS, "agent-coo"))["ack_pending"] == 1
                         and s, timeout=held["ack_wait"])
        assert time.monotonic() - restarted < 15, again
        assert again["redelivered"] >= 1, again
        assert stack.mission(m["mission_id"])["status"] == "planning"
        stack.kill("mockllm")  # it would serve its minute-long answers before stopping
        assert stack.stop("agent") == {"agent": 0}
    finally:
        if stack is not None:
            stack.stop()   # while the receiver still answers their last flush
        receiver.shutdown()


# ---------------------------------------------------------------------------------- crashes
def _crash(module: str, env: dict[str, str], tmp_path: Path) -> tuple[int, list[dict], str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COO_", "OTEL_"))}
    res = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=60, check=False,
                         env={**base, "COO_DATA_DIR": str(tmp_path), "COO_NATS_URL": "nats://127.0.0.1:9",
                              "OTEL_SDK_DISABLED": "true", **env})
    return res.returncode, json_lines(res.stdout), res.stdout, res.stderr


def test_a_configuration_error_is_a_crash_that_logs_a_critical_line_first(tmp_path):
    code, lines, out, err = _crash("coo.sandbox", {"COO_SANDBOX_BACKEND": "nonsense"}, tmp_path)
    assert code == 1, out + err
    last = lines[-1]
    assert last["level"] == "critical" and last["event"] == "service crashed" and last["service"] == "sandbox"
    assert "sandbox_backend" in last["error"] and "Traceback" in last["exception"]
    # one JSON line: the traceback is in it, not printed beside it
    assert len(lines) == len(out.splitlines()) and "Traceback" not in err, out + err


def test_an_exception_while_starting_logs_a_critical_line_without_the_secret(tmp_path):
    same = "same-token-for-both-" + "z" * 24
    code, lines, out, err = _crash("coo.orchestrator", {"COO_API_TOKEN": same, "COO_API_READ_TOKEN": same}, tmp_path)
    text = out + err
    assert code == 1, text
    last = lines[-1]
    assert last["level"] == "critical" and last["service"] == "orchestrator", last
    assert "give reads a token of their own" in last["error"]
    assert same not in text


# ------------------------------------------------------------------- sandbox crash recovery
@needs_bwrap
def test_a_run_a_killed_sandbox_left_running_is_marked_failed_at_start_and_never_run_again(make_stack):
    stack = make_stack({"COO_SANDBOX_CRASH_GRACE_SECONDS": "1"}, services=("sandbox",))
    url = stack.nats.url
    run = sandbox_pb2.SandboxRun(
        run_id="crash-recovery-run-1", mission_id="m-crash-recovery", task_id="m-crash-recovery.t0",
        files=[common_pb2.File(name="slow.py", content="import time\nprint('started', flush=True)\ntime.sleep(60)\n")],
        command=["python3", "slow.py"], limits=sandbox_pb2.SandboxLimits(timeout_seconds=3))

    async def publish(msg_id: str) -> None:
        bus = await Bus.connect("test-probe", CommonSettings(nats_url=url))
        try:
            await bus.ensure_topology()
            await bus.publish(topology.SANDBOX_RUNS, run, msg_id=msg_id, mission_id=run.mission_id)
        finally:
            await bus.close()

    async def stored() -> sandbox_pb2.SandboxResult | None:
        bus = await Bus.connect("test-probe", CommonSettings(nats_url=url))
        try:
            kv = await bus.js.key_value(_runs_bucket())
            try:
                entry = await kv.get(run.run_id)
            except Exception:  # noqa: BLE001 - not there yet
                return None
            return sandbox_pb2.SandboxResult.FromString(entry.value or b"")
        finally:
            await bus.close()

    asyncio.run(publish("run-1"))
    stack.start()
    first = wait_for("the run is running", lambda: (r := asyncio.run(stored())) is not None
                     and r.outcome == sandbox_pb2.SANDBOX_OUTCOME_UNSPECIFIED and r)
    stack.kill("sandbox")                       # SIGKILL mid-run: what a crash looks like
    # past the run's deadline (its 3 s timeout + the 1 s crash grace) before the sandbox comes back
    time.sleep(max(0.0, first.started_at.ToNanoseconds() / 1e9 + 4.5 - time.time()))
    log_before = len(stack.log("sandbox"))
    stack.start("sandbox")
    result = wait_for("the run marked failed", lambda: (r := asyncio.run(stored())) is not None
                      and r.outcome != sandbox_pb2.SANDBOX_OUTCOME_UNSPECIFIED and r, timeout=20)
    assert result.outcome == sandbox_pb2.SANDBOX_OUTCOME_KILLED
    assert "was not run again" in result.error
    # the same request again (a redelivery, a retry): answered from the store, never run
    asyncio.run(publish("run-1-again"))
    lines = wait_for("the duplicate answered", lambda: (ls := json_lines(stack.log("sandbox")[log_before:])) and any(
        r.get("event") == "run already done; answering with the stored result" for r in ls) and ls)
    events = [r.get("event") for r in lines]
    assert "runs left running by a crash marked failed" in events
    assert "sandbox run executed" not in events and "sandbox run could not run" not in events


def _runs_bucket() -> str:
    return next(b.bucket for b in topology.buckets() if "sandbox" in b.bucket)


# ------------------------------------------------------------------------------ debug mode
CANARY_KEY = "sk-proj-" + "DebugCanaryLLMKey0123" * 2


@needs_bwrap
def test_debug_mode_dumps_configuration_and_state_logs_every_message_and_rotates_its_file(make_stack):
    stack = make_stack({"COO_DEBUG": "1", "COO_LLM_API_KEY": CANARY_KEY,
                        "COO_DEBUG_LOG_MAX_BYTES": "8000", "COO_DEBUG_LOG_BACKUPS": "5"})
    stack.start()
    stack.wait_engine()
    m = stack.submit(FIZZBUZZ)
    assert stack.wait_status(m["mission_id"], {"completed", "failed"})["status"] == "completed"
    stack.stop()
    for name in stack.services:
        if name == "mockllm":
            continue
        logs = stack.root / "data" / name / "logs"
        files = sorted(logs.glob(f"{name}-debug.log*"))
        assert logs / f"{name}-debug.log" in files, (name, files)
        text = "".join(f.read_text() for f in files)
        assert CANARY_KEY not in text and TEST_TOKEN not in text, f"a secret in {name}'s debug log"
        lines = json_lines(text)
        assert len(lines) >= text.count("\n") - 1, "every line of the debug file is JSON"
        config = next(r for r in lines if r.get("event") == "debug: configuration")["config"]
        assert config["debug"] is True and config["nats_url"] == stack.nats.url
        state = next(r for r in lines if r.get("event") == "debug: state at start")
        assert state["checks"]["nats"]["ok"] is True and state["bus"]["server"]
        assert state["debug_log"].endswith(f"{name}-debug.log")
        events = {r.get("event") for r in lines}
        assert {"message published"} & events or name == "budget", (name, sorted(events)[:20])
        if name == "agent":
            # rotated at 8000 bytes (a file may pass the size by the line that tipped it over)
            assert len(files) >= 3 and all(f.stat().st_size <= 8000 + 4000 for f in files), \
                [(f.name, f.stat().st_size) for f in files]
            assert config["llm_api_key"] in ("**********", "[REDACTED:secret]")  # pydantic, then the scrubber
            assert set(state["bus"]["consumers"]) == {"agent-coo", "agent-engineer", "agent-qa"}
            assert state["bus"]["consumers"]["agent-coo"]["ack_wait_seconds"] == 60
            received = [r for r in lines if r.get("event") == "message received"]
            settled = [r for r in lines if r.get("event") == "message settled"]
            assert {r["subject"] for r in received} == {"coo.tasks.coo", "coo.tasks.engineer", "coo.tasks.qa"}
            assert {r["outcome"] for r in settled} == {"ack"} and all(r["mission_id"] == m["mission_id"]
                                                                      for r in settled)
        if name == "budget":
            assert state["bus"]["services"], state
    # the console shows the same lines, readable; the file is the searchable copy
    assert "debug: configuration" in stack.log("agent")


# --------------------------------------------------------------------- task duration, once
@needs_bwrap
def test_task_duration_is_counted_once_per_agent_task(make_stack):
    import httpx

    stack = make_stack()
    stack.start()
    stack.wait_engine()
    m = stack.submit(FIZZBUZZ)
    done = stack.wait_status(m["mission_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    tasks = [e for e in stack.timeline(m["mission_id"]) if e["type"] in ("mission.planned", "task.reviewed")]
    counts = {}
    for name in stack.services:
        text = httpx.get(stack.url(name, "/metrics"), timeout=5).text
        counts[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("coo_task_duration_seconds_count{"))
    # one plan, one engineer answer and one QA verdict: three agent tasks, observed by the agent only
    assert counts["agent"] == 3 and sum(counts.values()) == 3, (counts, [e["type"] for e in tasks])

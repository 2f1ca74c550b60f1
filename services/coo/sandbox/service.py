"""The sandbox service: runs generated code under hard limits, exactly once per run id.

The run store (KV ``coo_sandbox_runs``) holds a ``SandboxResult`` per run id: outcome
``UNSPECIFIED`` while it runs, the final result after. A redelivered request for a finished
run republishes the stored result instead of running again; a run found ``running`` past its
deadline (the replica died mid-run) is marked failed, at start-up and whenever met.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Status, StatusCode

from coo.common import kvscan, spans, topology, validate
from coo.common.bus import Bus, Delivery, InvalidMessage, Retry
from coo.common.service import ServiceContext, run
from coo.common.telemetry import get_logger, trace_exemplar
from coo.sandbox import metrics
from coo.sandbox.backends import select_backend
from coo.sandbox.backends.base import (
    InvalidArtifact,
    RunOutcome,
    RunSpec,
    error_outcome,
    validate_spec,
)
from coo.sandbox.settings import SandboxSettings
from coo.v1 import sandbox_pb2

log = get_logger("coo.sandbox")
tracer = trace.get_tracer("coo.sandbox")

_OUTCOMES = {name: sandbox_pb2.SandboxOutcome.Value("SANDBOX_OUTCOME_" + name.upper())
             for name in ("ok", "failed", "timeout", "memory", "output_limit", "killed", "error")}


def _limit(asked: float, ceiling: float) -> float:
    return ceiling if asked <= 0 else min(asked, ceiling)


def spec_from(run: sandbox_pb2.SandboxRun, s: SandboxSettings) -> RunSpec:
    files: dict[str, str] = {}
    for f in run.files:
        if f.name in files:
            raise InvalidArtifact(f"duplicate file name {f.name!r}")
        files[f.name] = f.content
    lim = run.limits
    return RunSpec(
        run_id=run.run_id, files=files, command=list(run.command),
        timeout_seconds=_limit(lim.timeout_seconds, s.sandbox_max_timeout_seconds),
        cpu_seconds=int(_limit(lim.cpu_seconds, s.sandbox_max_cpu_seconds)),
        memory_mb=int(_limit(lim.memory_mb, s.sandbox_max_memory_mb)),
        max_output_bytes=int(_limit(lim.max_output_bytes, s.sandbox_max_output_bytes)),
        max_processes=int(_limit(lim.max_processes, s.sandbox_max_processes)),
        tmpfs_mb=int(_limit(lim.tmpfs_mb, s.sandbox_tmpfs_mb)),
        max_file_mb=int(_limit(lim.max_file_mb, s.sandbox_max_file_mb)),
    )


class SandboxService:
    def __init__(self, bus: Bus, settings: SandboxSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.backend, self.backend_reason = select_backend(settings.sandbox_backend)
        self.kv: KeyValue  # the run store, bound in start()
        self.executions = 0  # runs this replica actually executed (tests read it from the log)

    async def start(self) -> None:
        log.info("sandbox backend chosen", backend=self.backend.name, reason=self.backend_reason)
        ok, why = self.backend.available()
        if not ok:
            log.error("sandbox backend unavailable; runs will fail with outcome error", backend=self.backend.name,
                      reason=why)
        reap = getattr(self.backend, "reap_orphans", None)
        if reap is not None:
            reap()  # processes a crashed replica left running under the sandbox uids
        self.kv = await self.bus.kv(topology.BUCKET_SANDBOX_RUNS)
        await self.recover()
        self.bus.consume("sandbox-runs", self.handle, [sandbox_pb2.SandboxRun],
                         concurrency=self.settings.sandbox_concurrency)
        log.info("sandbox ready", backend=self.backend.name)

    def _deadline_passed(self, r: sandbox_pb2.SandboxResult) -> bool:
        started = r.started_at.ToNanoseconds() / 1e9
        allowed = (r.limits.timeout_seconds or self.settings.sandbox_max_timeout_seconds) \
            + self.settings.sandbox_crash_grace_seconds
        return time.time() - started > allowed

    async def recover(self) -> None:
        """Runs left ``running`` by a crash are marked failed (not run again)."""
        marked = 0
        for entry in await kvscan.latest(self.bus.js, self.kv):
            r = sandbox_pb2.SandboxResult.FromString(entry.value or b"")
            if (r.outcome == sandbox_pb2.SANDBOX_OUTCOME_UNSPECIFIED and self._deadline_passed(r)
                    and await self._mark_crashed(entry.key, r, entry.revision)):
                marked += 1
        if marked:
            log.warning("runs left running by a crash marked failed", runs=marked)

    async def _mark_crashed(self, key: str, r: sandbox_pb2.SandboxResult, revision: int | None) -> bool:
        r.outcome = sandbox_pb2.SANDBOX_OUTCOME_KILLED
        r.error = "the sandbox service stopped while this run was in progress; it was not run again"
        r.finished_at.GetCurrentTime()
        try:
            await self.kv.update(key, r.SerializeToString(), last=revision)
        except KeyWrongLastSequenceError:
            return False
        metrics.SANDBOX_RUNS.labels("killed", r.backend or self.backend.name).inc()
        await self._publish(r)
        return True

    async def _publish(self, r: sandbox_pb2.SandboxResult) -> None:
        await self.bus.publish(topology.SANDBOX_RESULTS, r, msg_id=f"sandbox-result:{r.run_id}",
                               mission_id=r.mission_id)

    async def handle(self, run_msg: sandbox_pb2.SandboxRun, delivery: Delivery) -> None:
        validate.require(run_msg, "run_id", "mission_id", what="sandbox run")
        key = run_msg.run_id
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            entry = None
        except InvalidKeyError:
            raise InvalidMessage(f"run_id {key[:80]!r} is not a valid run key") from None
        if entry is not None and entry.value:
            stored = sandbox_pb2.SandboxResult.FromString(entry.value)
            if stored.outcome != sandbox_pb2.SANDBOX_OUTCOME_UNSPECIFIED:
                metrics.SANDBOX_DUPLICATES.inc()
                log.info("run already done; answering with the stored result", run_id=key)
                await self._publish(stored)
                return
            if self._deadline_passed(stored):
                await self._mark_crashed(key, stored, entry.revision)
                return
            raise Retry("run in progress elsewhere", delay=5.0)

        try:
            spec = spec_from(run_msg, self.settings)
            validate_spec(spec)
        except InvalidArtifact as exc:
            result = self._result(run_msg, None)
            result.outcome = sandbox_pb2.SANDBOX_OUTCOME_ERROR
            result.error = f"invalid run request: {exc}"
            log.warning("sandbox run refused", run_id=key, outcome="error", error=result.error)
            await self._store_and_publish(key, result, None)
            return

        running = self._result(run_msg, spec)
        try:
            revision = await self.kv.create(key, running.SerializeToString())
        except Exception:  # noqa: BLE001 - another replica claimed it between our get and create
            raise Retry("run claimed by another replica", delay=2.0) from None
        with spans.execute_tool(tracer, spans.SANDBOX_TOOL, key, {   # execute_tool sandbox, GenAI v1.41
                "coo.sandbox.run_id": key, "coo.sandbox.backend": self.backend.name,
                "coo.sandbox.files": len(spec.files)}) as span:
            heartbeat = asyncio.create_task(_heartbeat(delivery))
            try:
                outcome = await self._run(spec)
            finally:
                heartbeat.cancel()
            self.executions += 1
            fields = {"run_id": key, "outcome": outcome.outcome, "exit_code": outcome.exit_code,
                      "duration_seconds": round(outcome.duration_seconds, 3), "backend": outcome.backend}
            span.set_attribute("coo.sandbox.outcome", outcome.outcome)
            if outcome.exit_code is not None:
                span.set_attribute("process.exit.code", outcome.exit_code)
            if outcome.outcome == "error":
                # The run could not happen at all (not the artifact's fault): the cause goes to the
                # result (and so to the mission), the log line and the span status alike.
                error = outcome.error or f"the {outcome.backend} backend gave no reason"
                outcome.error = error
                log.warning("sandbox run could not run", error=error, **fields)
                span.set_attribute(ERROR_TYPE, "sandbox_" + outcome.backend)
                span.set_status(Status(StatusCode.ERROR, error))
            else:
                log.info("sandbox run executed", **({"error": outcome.error} if outcome.error else {}), **fields)
            result = running
            result.outcome = _OUTCOMES.get(outcome.outcome, sandbox_pb2.SANDBOX_OUTCOME_ERROR)
            result.exit_code = outcome.exit_code if outcome.exit_code is not None else -1
            result.stdout, result.stderr = outcome.stdout, outcome.stderr
            result.stdout_truncated, result.stderr_truncated = outcome.stdout_truncated, outcome.stderr_truncated
            result.duration_seconds = outcome.duration_seconds
            result.backend = outcome.backend
            result.error = outcome.error
            metrics.SANDBOX_RUNS.labels(outcome.outcome, outcome.backend).inc()
            metrics.SANDBOX_SECONDS.labels(outcome.backend).observe(outcome.duration_seconds, trace_exemplar())
            await self._store_and_publish(key, result, revision)

    async def _run(self, spec: RunSpec) -> RunOutcome:
        """The backend's outcome; a backend that raises (it should not) still gives a result with the cause."""
        started = time.monotonic()
        try:
            return await self.backend.run(spec)
        except Exception as exc:
            log.exception("sandbox backend raised", backend=self.backend.name, run_id=spec.run_id)
            return error_outcome(self.backend.name, f"the {self.backend.name} backend failed: "
                                 f"{type(exc).__name__}: {exc}", time.monotonic() - started)

    def _result(self, run_msg: sandbox_pb2.SandboxRun, spec: RunSpec | None) -> sandbox_pb2.SandboxResult:
        r = sandbox_pb2.SandboxResult(run_id=run_msg.run_id, mission_id=run_msg.mission_id, task_id=run_msg.task_id,
                                      backend=self.backend.name)
        r.started_at.GetCurrentTime()
        if spec is not None:
            r.limits.CopyFrom(sandbox_pb2.SandboxLimits(
                timeout_seconds=spec.timeout_seconds, memory_mb=spec.memory_mb, cpu_seconds=spec.cpu_seconds,
                max_output_bytes=spec.max_output_bytes, max_processes=spec.max_processes, tmpfs_mb=spec.tmpfs_mb,
                max_file_mb=spec.max_file_mb))
        return r

    async def _store_and_publish(self, key: str, result: sandbox_pb2.SandboxResult, revision: int | None) -> None:
        result.finished_at.GetCurrentTime()
        data = result.SerializeToString()
        if revision is None:
            with contextlib.suppress(Exception):  # already stored by a redelivery: keep the first
                await self.kv.create(key, data)
        else:
            await self.kv.update(key, data, last=revision)
        await self._publish(result)


async def _heartbeat(delivery: Delivery) -> None:
    while True:
        await asyncio.sleep(10)
        try:
            await delivery.in_progress()
        except Exception:  # noqa: BLE001 - the message is settled or the connection gone: stop beating
            return


async def start(ctx: ServiceContext) -> None:
    if not isinstance(ctx.settings, SandboxSettings):
        raise TypeError(f"the sandbox service needs SandboxSettings, got {type(ctx.settings).__name__}")
    svc = SandboxService(ctx.bus, ctx.settings)
    await svc.start()

    async def backend_check() -> tuple[bool, str]:
        # what `coo health` shows for the sandbox: the backend in use, why it was chosen, and whether it works
        ok, why = await asyncio.to_thread(svc.backend.available)
        return ok, f"{svc.backend.name} ({svc.backend_reason}): {why}"

    ctx.checks["backend"] = backend_check


def main() -> None:
    run("sandbox", lambda s: s.sandbox_port, SandboxSettings, start)

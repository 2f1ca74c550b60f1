"""The orchestrator's engine: missions in JetStream KV, moved by results and control messages.

Every change is a compare-and-set on the mission's KV entry followed by its effects (timeline
events, dispatch of the next work item). Handlers are idempotent: a result whose id is not the
one the mission awaits is a duplicate and is acknowledged without effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from contextvars import Token
from datetime import UTC, datetime, timedelta
from typing import Literal

import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from coo.common import timeline, topology, validate
from coo.common.bus import Bus, Delivery, InvalidMessage
from coo.common.retry import Policy
from coo.common.telemetry import get_logger, trace_exemplar
from coo.common.workspace import WorkspaceLimits
from coo.orchestrator import flow, metrics
from coo.orchestrator.history import Key, MissionIndex
from coo.orchestrator.settings import OrchestratorSettings
from coo.v1 import agent_pb2, budget_pb2, common_pb2, control_pb2, mission_pb2, sandbox_pb2

log = get_logger("coo.orchestrator")
tracer = trace.get_tracer("coo.orchestrator")

S = mission_pb2


ADMISSION_KEY = "admission.blocks"
RETENTION_LEASE_KEY = "retention.lease"   # one replica at a time deletes expired missions
#: a purge marker left by retention is removed from the bucket this long after it was written
TOMBSTONE_SECONDS = 60.0
SYSTEM_TIMELINE = "system"   # coo.timeline.system: events that concern no single mission

# A mission update that lost a compare-and-set to another handler or replica is re-read and re-applied.
_APPLY_RETRY = Policy("mission update", retry_on=KeyWrongLastSequenceError, attempts=50, initial=0.001,
                      maximum=0.05, level="debug", logger=log)
# A stream without a leader for a moment (a NATS node lost, the cluster electing another): the read
# or the write is tried again for up to 20 s (under the result consumers' 30 s ack wait). A write
# whose answer was lost may have landed: the next try recognises its own bytes (see _apply).
_UNAVAILABLE = (nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
                nats.errors.NoRespondersError, nats.errors.TimeoutError)
_STREAM_RETRY = Policy("mission update (stream unavailable)", retry_on=_UNAVAILABLE, attempts=None, deadline=20.0,
                       initial=0.25, maximum=4.0, logger=log)
# The admission blocks: a lost race or a bus error is retried; the last one reaches the webhook's caller.
_BLOCK_RETRY = Policy("admission blocks update", retry_on=(nats.errors.Error, TimeoutError), attempts=20,
                      initial=0.01, maximum=0.5, logger=log)


def _period_end(scope: str) -> str:
    """When a daily or monthly budget resets (UTC)."""
    now = datetime.now(UTC)
    if scope == "daily":
        end = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        end = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return end.isoformat()


class MissionNotFound(KeyError):
    pass


class NotReady(RuntimeError):
    """The engine is not connected to NATS yet (HTTP 503)."""


class AdmissionRefused(RuntimeError):
    """A new mission is not admitted (too many live missions, or a budget scope is exhausted)."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def new_mission_id() -> str:
    # Sortable by creation time, unique enough across replicas.
    return f"m-{int(time.time() * 1000):011x}{uuid.uuid4().hex[:6]}"


class Engine:
    def __init__(self, bus: Bus | None, settings: OrchestratorSettings) -> None:
        self._bus = bus                 # None: attached when the service connects (see bus)
        self.settings = settings
        self.policy = flow.Policy(max_retries=settings.max_retries, max_pending_work=settings.max_pending_work,
                                  on_budget_exceeded=settings.budget_on_exceeded,
                                  limits=WorkspaceLimits(settings.workspace_max_files, settings.workspace_max_bytes,
                                                         settings.workspace_max_file_bytes))
        self.sandbox = flow.SandboxDefaults(settings.sandbox_timeout_seconds, settings.sandbox_memory_mb,
                                            settings.sandbox_cpu_seconds, settings.sandbox_max_output_bytes)
        self.kv: KeyValue | None = None
        self._tasks: list[asyncio.Task] = []
        # The history, kept from a watch of the missions bucket (coo.orchestrator.history): every
        # replica's index follows the same bucket, so they share the live count and the pages.
        self.index = MissionIndex()
        self._synced = asyncio.Event()
        self._watch_task: asyncio.Task | None = None
        self._seq_to_see = 0          # the bucket's last sequence at the previous housekeeping tick
        self._rebuilding = False      # a new watch is building a fresh index (the old one serves)
        self._watch_heard = 0.0       # when the watch last delivered something (monotonic)
        # Missions this replica admitted that its watch has not shown yet (id -> when): counted live.
        self._admitting: dict[str, float] = {}
        self._purging: dict[str, float] = {}   # purged by this replica, marker not seen yet (id -> when)
        self._me = f"{worker_name()}-{uuid.uuid4().hex[:6]}"

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the engine has no bus yet (it is attached when the service connects)")
        return self._bus

    @bus.setter
    def bus(self, bus: Bus) -> None:
        self._bus = bus

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # Every final status exists from the start at 0, so rate() and increase() see the first mission.
        for status in flow.FINAL:
            metrics.MISSIONS.labels(flow.status_name(status))
        for reason in ("capacity", "budget"):
            metrics.ADMISSION_REFUSED.labels(reason)
        self.kv = await self.bus.kv(topology.BUCKET_MISSIONS)
        self.bus.consume("orchestrator-agent-results", self._on_agent_result, [agent_pb2.AgentResult], concurrency=16)
        self.bus.consume("orchestrator-sandbox-results", self._on_sandbox_result, [sandbox_pb2.SandboxResult],
                         concurrency=16)
        self.bus.consume("orchestrator-control", self._on_control, [control_pb2.Control], concurrency=8)
        started = time.perf_counter()
        self._start_watch()
        await self._synced.wait()
        log.info("mission index built from the bucket", missions=len(self.index), live=self.index.live_count(),
                 seconds=round(time.perf_counter() - started, 3))
        await self.reconcile()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="orchestrator-housekeeping"))
        self._tasks.append(asyncio.create_task(self._retention(), name="orchestrator-retention"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._watch_task] if self._watch_task else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile(self) -> None:
        """After a restart: dispatch again what every live mission waits for (deduplicated by id)."""
        count = 0
        for s in self.index.live():
            try:
                m = await self.get(s.mission_id)
            except MissionNotFound:
                continue
            if m.status in flow.LIVE and m.status != S.MISSION_STATUS_PAUSED and m.awaiting:
                with self._mission_context(m):
                    await self._dispatch(m)
                count += 1
        if count:
            log.info("resumed live missions after start-up", missions=count)

    # ------------------------------------------------------------- the index's watch
    def _start_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._rebuilding = True
        self._watch_heard = time.monotonic()
        self._watch_task = asyncio.create_task(self._watch(), name="orchestrator-mission-index")

    async def _last_seq(self) -> int:
        return (await self._bucket_state())[0]

    async def _bucket_state(self) -> tuple[int, int]:
        """The bucket stream's last sequence and how many messages it holds."""
        state = (await self.store.status()).stream_info.state
        return int(state.last_seq or 0), int(state.messages or 0)

    async def _watch(self) -> None:
        """Feed the index from a watch of the whole bucket. A new watch builds a fresh index, which
        replaces the one in use once it holds every key (the old one serves until then).

        The watcher's end-of-initial-values marker (``None``) can come *before* the values: nats-py
        sends it when the consumer reports nothing pending and its subscription has counted no
        delivery yet, which is also true while the whole initial burst sits in the client's buffer.
        So a marker that arrives before any value, from a bucket that holds messages, is not trusted:
        the index is in sync at the value the server sent with nothing pending after it."""
        while True:
            watcher = None
            try:
                floor, held = await self._bucket_state()
                watcher = await self.store.watchall()
                fresh = MissionIndex()
                synced = marker_seen = False
                applied = 0
                async for entry in watcher:
                    self._watch_heard = time.monotonic()
                    if entry is None:
                        marker_seen = True
                        if not synced and (applied or not held):
                            synced = self._use_fresh_index(fresh, floor)
                        continue
                    fresh.apply(entry.key, entry.value, entry.operation, entry.revision, entry.created)
                    applied += 1
                    if synced:
                        self._admitting.pop(entry.key, None)
                        if entry.key in self._purging and entry.key not in fresh:
                            self._purging.pop(entry.key, None)
                    elif marker_seen and entry.delta == 0:
                        synced = self._use_fresh_index(fresh, floor)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost connection, a deleted consumer: watch again
                log.warning("mission index watch failed; watching again", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    def _use_fresh_index(self, fresh: MissionIndex, floor: int) -> bool:
        """The watch has delivered every key the bucket held when it began: serve from ``fresh``."""
        # Everything up to `floor` was in the bucket when the watch began and has been delivered
        # (a sequence above the last key's is a removed marker).
        fresh.revision = max(fresh.revision, floor)
        self.index, self._rebuilding = fresh, False
        for mission_id in [k for k in self._admitting if k in fresh]:
            self._admitting.pop(mission_id, None)
        self._synced.set()
        return True

    async def _check_watch(self) -> None:
        """A watch that has not delivered what the bucket held a housekeeping tick ago has stalled
        (a reconnect that lost its consumer): watch again, and rebuild the index from the bucket."""
        last = await self._last_seq()
        if self._rebuilding:          # a fresh index is on its way: judge the watch once it is in use
            self._seq_to_see = 0
            if time.monotonic() - self._watch_heard > 30:
                log.warning("mission index rebuild has delivered nothing for 30 s; watching again")
                self._start_watch()
            return
        if self._seq_to_see and self.index.revision < self._seq_to_see:
            log.warning("mission index watch is behind the bucket; watching again",
                        indexed=self.index.revision, bucket=self._seq_to_see)
            self._seq_to_see = 0
            self._start_watch()
            return
        self._seq_to_see = last

    # ------------------------------------------------------------------- queries
    def _require_ready(self) -> None:
        if self.kv is None:
            raise NotReady("the orchestrator is still connecting to NATS; try again in a moment")

    @property
    def store(self) -> KeyValue:
        """The missions bucket (NotReady before the engine has started)."""
        if self.kv is None:
            raise NotReady("the orchestrator is still connecting to NATS; try again in a moment")
        return self.kv

    async def get(self, mission_id: str) -> mission_pb2.Mission:
        self._require_ready()
        try:
            entry = await self.store.get(mission_id)
        except (KeyNotFoundError, InvalidKeyError):
            raise MissionNotFound(mission_id) from None
        if entry.value is None:
            raise MissionNotFound(mission_id)
        return mission_pb2.Mission.FromString(entry.value)

    async def list_missions(self, statuses: list[int] | None = None, *, since_ns: int | None = None,
                            before: Key | None = None, limit: int = 50
                            ) -> tuple[list[mission_pb2.Mission], Key | None, int]:
        """A page of missions, newest first, from the index: the missions (read by id, at once),
        the position to continue from (None on the last page), and how many match in all.
        Its cost depends on ``limit``, not on how many missions the history holds."""
        self._require_ready()
        if not self._synced.is_set():
            raise NotReady("the orchestrator is still reading the mission history; try again in a moment")
        wanted = None if statuses is None else set(statuses)
        out: list[mission_pb2.Mission] = []
        position, more, total = before, True, 0
        while more and len(out) < limit:
            keys, more, total = self.index.page(statuses, since_ns=since_ns, before=position,
                                                limit=limit - len(out))
            if not keys:
                break
            found = await asyncio.gather(*(self._get_or_none(k[1]) for k in keys))
            for key, m in zip(keys, found):
                position = key
                # gone (retention) or moved on since the index saw it: not on this page
                if m is not None and (wanted is None or m.status in wanted):
                    out.append(m)
        return out, (position if more and out else None), total

    async def _get_or_none(self, mission_id: str) -> mission_pb2.Mission | None:
        try:
            return await self.get(mission_id)
        except MissionNotFound:
            return None

    def live_count(self) -> int:
        """Live missions in the bucket (every replica's index sees the same), plus the ones this
        replica admitted that its watch has not shown yet."""
        now = time.monotonic()
        for mission_id, at in list(self._admitting.items()):
            if mission_id in self.index or now - at > 60:
                self._admitting.pop(mission_id, None)
        return self.index.live_count() + len(self._admitting)

    # ------------------------------------------------------------------ commands
    async def create_mission(self, goal: str, *, budget_usd: float | None = None, require_approval: bool | None = None,
                             submitted_by: str = "", model: str = "", labels: dict[str, str] | None = None,
                             max_retries: int | None = None) -> mission_pb2.Mission:
        await self.check_admission()
        m = mission_pb2.Mission(
            mission_id=new_mission_id(), goal=goal, budget_usd=budget_usd or self.settings.default_budget_usd,
            require_approval=self.settings.require_approval if require_approval is None else require_approval,
            max_retries=self.settings.max_retries if max_retries is None else max_retries,
            submitted_by=submitted_by, model=model, labels=labels or {},
        )
        # Counted live from here (no await in between since the check), so concurrent requests to
        # this replica cannot all pass the same check.
        self._admitting[m.mission_id] = time.monotonic()
        try:
            return await self._admit(m)
        except BaseException:
            self._admitting.pop(m.mission_id, None)
            raise

    async def check_admission(self) -> None:
        """Refuse a new mission (AdmissionRefused) when too many are live, or a budget scope is closed.
        The live count comes from the index: no read of the history."""
        self._require_ready()
        if not self._synced.is_set():
            raise NotReady("the orchestrator is still reading the mission history; try again in a moment")
        blocks = await self.active_admission_blocks()
        if blocks:
            scope, info = next(iter(blocks.items()))
            metrics.ADMISSION_REFUSED.labels("budget").inc()
            raise AdmissionRefused(f"the {scope} budget is exhausted ({info.get('summary') or 'alert firing'}); "
                                   f"new missions are refused until {info['until']} or until it is raised",
                                   retry_after=60)
        # counted after the last await: the caller marks its mission admitted before anything else runs
        live = self.live_count()
        if live >= self.settings.max_live_missions:
            metrics.ADMISSION_REFUSED.labels("capacity").inc()
            raise AdmissionRefused(f"{live} live missions (bound {self.settings.max_live_missions}); try again later")

    async def _admit(self, m: mission_pb2.Mission) -> mission_pb2.Mission:
        m.created_at.CopyFrom(flow.now())
        m.updated_at.CopyFrom(m.created_at)
        with tracer.start_as_current_span(
            "invoke_workflow coo.mission", kind=SpanKind.INTERNAL,
            attributes={"gen_ai.operation.name": "invoke_workflow", "mission.id": m.mission_id,
                        "coo.mission.budget_usd": m.budget_usd},
        ) as span:
            propagate.inject(m.trace_context)
            m.trace_id = format(span.get_span_context().trace_id, "032x")
            await self._set_mission_budget(m)
            step = flow.create(m)
            await self.store.create(m.mission_id, m.SerializeToString())
            metrics.MISSIONS_STARTED.inc()
            await self._effects(m, step)
        log.info("mission created", mission_id=m.mission_id, trace_id=m.trace_id)
        return m

    async def _set_mission_budget(self, m: mission_pb2.Mission) -> None:
        from coo.budget.client import BudgetClient

        reply = await BudgetClient(self.bus).set_limit(
            budget_pb2.BUDGET_SCOPE_MISSION, mission_id=m.mission_id, limit_usd=m.budget_usd,
            requested_by=m.submitted_by or "orchestrator")
        if not reply.ok:
            raise RuntimeError(f"budget service refused the mission limit: {reply.reason}")

    async def request_control(self, mission_id: str, action: int, *, by: str = "", reason: str = "") -> str:
        """Validate against the current state (ControlRejected → 409) and publish a control message."""
        m = await self.get(mission_id)
        flow.check_control(m, action)
        control = control_pb2.Control(control_id=uuid.uuid4().hex, mission_id=mission_id,
                                      action=control_pb2.ControlAction.ValueType(action),
                                      reason=reason, requested_by=by, requested_at=flow.now())
        with self._mission_context(m):
            await self.bus.publish(topology.control_subject(mission_id), control, msg_id=control.control_id,
                                   mission_id=mission_id)
        return control.control_id

    # ------------------------------------------------------------------ handlers
    async def _on_agent_result(self, r: agent_pb2.AgentResult, delivery: Delivery) -> None:
        validate.require(r, "mission_id", "task_id", what="agent result")
        if r.role not in (common_pb2.ROLE_COO, common_pb2.ROLE_ENGINEER, common_pb2.ROLE_QA):
            raise InvalidMessage(f"agent result with unknown role {r.role}")
        # coo_task_duration_seconds is the agent's (role, outcome): observed there once per task
        await self._apply(r.mission_id, lambda m: flow.on_agent_result(m, r, self.policy),
                          redelivered=delivery.num_delivered > 1)

    async def _on_sandbox_result(self, r: sandbox_pb2.SandboxResult, delivery: Delivery) -> None:
        validate.require(r, "mission_id", "run_id", what="sandbox result")
        await self._apply(r.mission_id, lambda m: flow.on_sandbox_result(m, r, self.policy),
                          redelivered=delivery.num_delivered > 1)

    async def _on_control(self, c: control_pb2.Control, delivery: Delivery) -> None:
        validate.require(c, "mission_id", what="control message")
        if c.action not in control_pb2.ControlAction.values() or c.action == control_pb2.CONTROL_ACTION_UNSPECIFIED:
            raise InvalidMessage(f"unknown control action {c.action}")
        parked: list[tuple[bytes, str]] = []

        def step_fn(m: mission_pb2.Mission):
            step, data, type_ = flow.on_control(m, c.action, c.requested_by, c.reason, self.policy)
            parked[:] = [(data, type_)] if data else []
            return step

        m = await self._apply(c.mission_id, step_fn)
        if m is None:
            log.info("control ignored: it no longer applies", mission_id=c.mission_id,
                     action=control_pb2.ControlAction.Name(c.action))
            return
        if parked:
            data, type_ = parked[0]
            if type_ == agent_pb2.AgentResult.DESCRIPTOR.full_name:
                r = agent_pb2.AgentResult.FromString(data)
                await self._apply(c.mission_id, lambda mm: flow.on_agent_result(mm, r, self.policy))
            elif type_ == sandbox_pb2.SandboxResult.DESCRIPTOR.full_name:
                s = sandbox_pb2.SandboxResult.FromString(data)
                await self._apply(c.mission_id, lambda mm: flow.on_sandbox_result(mm, s, self.policy))

    # -------------------------------------------------------------- the CAS loop
    async def _apply(self, mission_id: str, fn: Callable[[mission_pb2.Mission], flow.Step | None],
                     *, redelivered: bool = False) -> mission_pb2.Mission | None:
        """Compare-and-set ``fn``'s change of the mission, then its effects (timeline, dispatch).

        ``redelivered``: this message was handled before and not acknowledged. If that earlier try
        stored the change but failed at dispatching the next work item (a stream without a leader
        for a moment: a NATS node lost), the change is not applied twice (``fn`` finds it done) but
        the work item is published again; its message id (the awaited id) makes that a no-op in
        the stream's duplicate window when the first publish did land."""
        seen: list[mission_pb2.Mission] = []
        unanswered: list[tuple[bytes, mission_pb2.Mission, flow.Step]] = []   # a write whose answer was lost

        async def attempt() -> tuple[mission_pb2.Mission, flow.Step] | None:
            try:
                entry = await self.store.get(mission_id)
            except (KeyNotFoundError, InvalidKeyError):
                raise InvalidMessage(f"unknown mission {mission_id[:80]!r}") from None
            if unanswered and entry.value == unanswered[0][0]:
                return unanswered[0][1], unanswered[0][2]       # it had landed: its effects are still due
            unanswered.clear()
            m = mission_pb2.Mission.FromString(entry.value or b"")
            if redelivered:
                seen[:] = [mission_pb2.Mission.FromString(entry.value or b"")]
            step = fn(m)
            if step is None:
                return None
            m.pending_work = flow.pending_work(m)
            m.updated_at.CopyFrom(flow.now())
            data = m.SerializeToString()
            try:
                await self.store.update(mission_id, data, last=entry.revision)   # lost race: retried
            except _UNAVAILABLE:
                unanswered[:] = [(data, m, step)]
                raise
            return m, step

        try:
            done = await _STREAM_RETRY.call(_APPLY_RETRY.call, attempt)
        except KeyWrongLastSequenceError as exc:
            raise RuntimeError(f"mission {mission_id}: too many concurrent updates") from exc
        if done is None:
            if redelivered and seen:
                await self._dispatch_again(seen[0])
            return None
        m, step = done
        with self._mission_context(m):
            await self._effects(m, step)
        return m

    def _mission_context(self, m: mission_pb2.Mission):
        """Keep the current context when it is already in the mission's trace, else reattach the
        mission's root context: one mission, one trace, whatever restarts in between."""
        current = trace.get_current_span().get_span_context()
        if current.is_valid and format(current.trace_id, "032x") == m.trace_id:
            return contextlib.nullcontext()
        return _Attached(propagate.extract(dict(m.trace_context)))

    async def _effects(self, m: mission_pb2.Mission, step: flow.Step) -> None:
        for ev in step.events:
            await timeline.record(self.bus, m.mission_id, ev.type, ev.message, status=m.status, level=ev.level,
                                  attributes=ev.attributes)
        if step.dispatch:
            await self._dispatch(m)
        if step.finished:
            status = flow.status_name(m.status)
            metrics.MISSIONS.labels(status).inc()
            duration = (m.finished_at.ToNanoseconds() - m.created_at.ToNanoseconds()) / 1e9
            metrics.MISSION_SECONDS.labels(status).observe(max(duration, 0.0), trace_exemplar())
            log.info("mission finished", mission_id=m.mission_id, status=status, duration_seconds=round(duration, 3),
                     cost_usd=round(m.usage.cost_usd, 6), retries=m.retries)
        if any(ev.type == "task.retry" for ev in step.events):
            metrics.MISSION_RETRIES.inc()
        for ev in step.events:
            if ev.type == "backpressure":
                metrics.BACKPRESSURE.inc()
            elif ev.type == "qa.overruled":
                metrics.QA_OVERRULED.labels(ev.attributes.get("model", "unknown")).inc()
                log.warning("QA approved a run without evidence of success; overruled", mission_id=m.mission_id,
                            task_id=ev.attributes.get("task_id"), reason=ev.attributes.get("reason"))

    async def _dispatch_again(self, m: mission_pb2.Mission) -> None:
        """The work a live mission awaits, published again (deduplicated by its id)."""
        if m.status in flow.LIVE and m.status != S.MISSION_STATUS_PAUSED and m.awaiting:
            with self._mission_context(m):
                await self._dispatch(m)
            log.info("dispatched again after a redelivered result", mission_id=m.mission_id, awaiting=m.awaiting)

    async def _dispatch(self, m: mission_pb2.Mission) -> None:
        work = flow.next_work(m, self.sandbox)
        if work is None:
            return
        subject, message = work
        if not isinstance(message, Message):
            raise TypeError(f"next work of {m.mission_id} is not a protobuf message: {type(message).__name__}")
        await self.bus.publish(subject, message, msg_id=m.awaiting, mission_id=m.mission_id)

    # ------------------------------------------------------------ admission blocks
    async def active_admission_blocks(self) -> dict[str, dict]:
        """Budget scopes closed to new missions by the budget-exceeded alert (until their period ends)."""
        try:
            entry = await self.store.get(ADMISSION_KEY)
            blocks = json.loads(entry.value or b"{}")
        except KeyNotFoundError:
            return {}
        now_iso = datetime.now(UTC).isoformat()
        return {scope: b for scope, b in blocks.items() if b.get("until", "") > now_iso}

    async def on_alerts(self, payload: dict) -> dict:
        """Alertmanager webhook: BudgetExceeded for a daily/monthly scope closes admission in that
        scope until the period resets (or the alert resolves); everything else is recorded."""
        changes = []
        for alert in payload.get("alerts", [])[:100]:
            labels = alert.get("labels") or {}
            name = str(labels.get("alertname", ""))[:100]
            scope = str(labels.get("scope", ""))[:20]
            firing = alert.get("status") == "firing"
            summary = str((alert.get("annotations") or {}).get("summary", ""))[:300]
            log.warning("alert received", alert=name, status=alert.get("status"), scope=scope or None)
            if name == "BudgetExceeded" and scope in ("daily", "monthly"):
                await self._set_block(scope, firing, summary)
                changes.append({"scope": scope, "admission": "closed" if firing else "open"})
                await timeline.record(self.bus, SYSTEM_TIMELINE, "admission.closed" if firing else "admission.opened",
                                      f"{scope} budget exceeded: new missions refused until it resets"
                                      if firing else f"{scope} budget alert resolved: admission open",
                                      level="warning" if firing else "info", attributes={"scope": scope})
        return {"received": len(payload.get("alerts", [])), "changes": changes}

    async def _set_block(self, scope: str, closed: bool, summary: str) -> None:
        async def attempt() -> None:
            try:
                entry = await self.store.get(ADMISSION_KEY)
                blocks, revision = json.loads(entry.value or b"{}"), entry.revision
            except KeyNotFoundError:
                blocks, revision = {}, None
            if closed:
                blocks[scope] = {"since": datetime.now(UTC).isoformat(), "until": _period_end(scope),
                                 "summary": summary}
            else:
                blocks.pop(scope, None)
            data = json.dumps(blocks).encode()
            if revision is None:
                await self.store.create(ADMISSION_KEY, data)
            else:
                await self.store.update(ADMISSION_KEY, data, last=revision)

        await _BLOCK_RETRY.call(attempt)     # the last error is raised (and logged with its cause)

    # -------------------------------------------------------------- housekeeping
    async def _housekeeping(self) -> None:
        """Every 5 s: :meth:`housekeeping_once`."""
        while True:
            try:
                await asyncio.sleep(5)
                await self.housekeeping_once()
            except asyncio.CancelledError:
                return
            except Exception as exc:  # noqa: BLE001 - a background loop never dies of one error
                log.warning("housekeeping failed", error=str(exc) or type(exc).__name__)

    async def housekeeping_once(self) -> None:
        """Gauges from the index, the watch's health, and the deadline that fails missions whose work
        was lost (read from the index of live missions: no read of the history)."""
        counts = self.index.counts()
        for status in flow.LIVE:
            metrics.MISSIONS_ACTIVE.labels(flow.status_name(status)).set(counts.get(status, 0))
        metrics.MISSIONS_KEPT.set(len(self.index.finished))
        metrics.DLQ_MESSAGES.set(await self.bus.dlq_size())
        await self._check_watch()
        deadline_ns = (time.time() - self.settings.mission_deadline_seconds) * 1e9
        for s in self.index.live():
            if s.status != S.MISSION_STATUS_PAUSED and s.created_ns < deadline_ns:
                with contextlib.suppress(InvalidMessage):     # deleted meanwhile
                    await self._apply(s.mission_id, self._deadline_step)

    # ----------------------------------------------------------------- retention
    async def _retention(self) -> None:
        """Every ``mission_retention_interval_seconds``: :meth:`retention_once`."""
        interval = self.settings.mission_retention_interval_seconds
        while True:
            try:
                await asyncio.sleep(interval)
                await self.retention_once()
            except asyncio.CancelledError:
                return
            except Exception as exc:  # noqa: BLE001 - a background loop never dies of one error
                log.warning("mission retention failed", error=str(exc) or type(exc).__name__)

    async def retention_once(self, batch: int = 500) -> int:
        """Delete finished missions past their retention (by age, by count; never a live one): the
        mission's KV entry (a purge: every revision) and its timeline subject. One replica at a time
        (a lease in the bucket). Returns how many were deleted."""
        age, keep = self.settings.mission_retention_seconds, self.settings.mission_retention_count
        if (age <= 0 and keep <= 0) or not self._synced.is_set() or not await self._hold_lease():
            self._forget_tombstones()   # the lease holder removes the markers; the others only forget them
            return 0
        deleted = 0
        started = time.monotonic()
        while True:
            now = time.time()
            for mission_id, at in list(self._purging.items()):
                if now - at > 300:
                    self._purging.pop(mission_id, None)
            ids = self.index.expired(older_than_ns=int((now - age) * 1e9) if age > 0 else None,
                                     keep=keep if keep > 0 else None, exclude=set(self._purging), limit=batch)
            if not ids:
                break
            for mission_id in ids:
                await self.store.purge(mission_id)
                self._purging[mission_id] = now
                with contextlib.suppress(Exception):   # no timeline left (its own retention): nothing to purge
                    await self.bus.js.purge_stream(topology.STREAM_TIMELINE,
                                                   subject=topology.timeline_subject(mission_id))
                deleted += 1
                metrics.MISSIONS_DELETED.inc()
            if not await self._hold_lease():
                break
        if deleted:
            log.info("retention deleted finished missions", deleted=deleted, finished_left=len(self.index.finished),
                     seconds=round(time.monotonic() - started, 3), max_age_seconds=age, max_count=keep)
        await self._purge_tombstones()
        return deleted

    def _forget_tombstones(self) -> None:
        cutoff = time.time() - TOMBSTONE_SECONDS * 5
        for key, at in list(self.index.tombstones.items()):
            if at < cutoff:
                self.index.tombstones.pop(key, None)

    async def _purge_tombstones(self) -> None:
        """Remove the purge markers retention left (their key is gone from every index by now)."""
        cutoff = time.time() - TOMBSTONE_SECONDS
        stream = f"KV_{topology.BUCKET_MISSIONS}"
        for key, at in list(self.index.tombstones.items()):
            if at < cutoff:
                await self.bus.js.purge_stream(stream, subject=f"$KV.{topology.BUCKET_MISSIONS}.{key}")
                self.index.tombstones.pop(key, None)

    async def _hold_lease(self) -> bool:
        """Take or renew the retention lease (compare-and-set): True when this replica holds it."""
        now = time.time()
        data = json.dumps({"holder": self._me, "until": now + 3 * self.settings.mission_retention_interval_seconds
                           + 60}).encode()
        try:
            entry = await self.store.get(RETENTION_LEASE_KEY)
        except KeyNotFoundError:
            entry = None
        try:
            if entry is None or entry.value is None:
                await self.store.create(RETENTION_LEASE_KEY, data)
                return True
            held = json.loads(entry.value or b"{}")
            if held.get("holder") != self._me and float(held.get("until", 0)) > now:
                return False
            await self.store.update(RETENTION_LEASE_KEY, data, last=entry.revision)
            return True
        except (KeyWrongLastSequenceError, ValueError):
            return False
        except Exception:  # noqa: BLE001 - another replica created it first
            return False

    def _deadline_step(self, m: mission_pb2.Mission) -> flow.Step | None:
        if m.status not in flow.LIVE or m.status == S.MISSION_STATUS_PAUSED:
            return None
        step = flow.Step()
        flow.finish(m, S.MISSION_STATUS_FAILED, step,
                     f"deadline of {self.settings.mission_deadline_seconds:.0f}s passed")
        return step


class _Attached:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        self._token = context.attach(self._ctx)

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._token is not None:
            context.detach(self._token)
        return False


def worker_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"

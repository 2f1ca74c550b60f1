"""The budget service: request/reply endpoints over the ledger, a sweeper, and gauges.

Endpoints (nats.micro service ``budget``; replicas share one queue group):
``coo.budget.reserve``, ``.settle``, ``.release``, ``.set_limit``, ``.status``. Invalid
requests are answered 400 (``InvalidMessage``). Background tasks on every replica: the
sweeper (expired and half-done reservations; compare-and-set makes replicas safe together)
and a gauge refresher reading the current day and month from KV, so each replica's
``/metrics`` tells the truth whichever replica served the last request.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace

from coo.budget import client, metrics
from coo.budget.ledger import Ledger
from coo.budget.model import DAILY, MONTHLY, Effects, Limit, ScopeState, day_key, month_key
from coo.budget.pricing import Pricing, nusd_to_usd
from coo.budget.settings import BudgetSettings
from coo.common import timeline, validate
from coo.common.bus import Bus, InvalidMessage
from coo.common.service import ServiceContext, run
from coo.common.telemetry import get_logger
from coo.v1 import budget_pb2

log = get_logger("coo.budget")

MAX_TOKENS = 100_000_000


def validate_reserve(req: budget_pb2.ReserveRequest) -> None:
    validate.check_id(req.reservation_id, "reservation_id")
    validate.check_id(req.mission_id, "mission_id")
    validate.check_count(req.input_tokens, "input_tokens", maximum=MAX_TOKENS)
    validate.check_count(req.max_output_tokens, "max_output_tokens", maximum=MAX_TOKENS)
    validate.check_count(req.ttl_seconds, "ttl_seconds")


def validate_settle(req: budget_pb2.SettleRequest) -> None:
    validate.check_id(req.reservation_id, "reservation_id")
    validate.check_id(req.mission_id, "mission_id")
    validate.check_count(req.input_tokens, "input_tokens", maximum=MAX_TOKENS)
    validate.check_count(req.output_tokens, "output_tokens", maximum=MAX_TOKENS)


def validate_release(req: budget_pb2.ReleaseRequest) -> None:
    validate.check_id(req.reservation_id, "reservation_id")


def validate_set_limit(req: budget_pb2.SetLimitRequest) -> None:
    if req.scope not in (budget_pb2.BUDGET_SCOPE_MISSION, budget_pb2.BUDGET_SCOPE_DAILY,
                         budget_pb2.BUDGET_SCOPE_MONTHLY):
        raise InvalidMessage(f"scope must be MISSION, DAILY or MONTHLY (got {req.scope})")
    if req.scope == budget_pb2.BUDGET_SCOPE_MISSION:
        validate.check_id(req.mission_id, "mission_id")
    if req.HasField("limit_usd") and (not math.isfinite(req.limit_usd) or req.limit_usd < 0):
        raise InvalidMessage(f"limit_usd must be a finite number >= 0 (got {req.limit_usd})")
    if req.HasField("limit_tokens"):
        validate.check_count(req.limit_tokens, "limit_tokens")


def validate_status(req: budget_pb2.BudgetStatusRequest) -> None:
    if req.mission_id:
        validate.check_id(req.mission_id, "mission_id")


class BudgetService:
    def __init__(self, bus: Bus, settings: BudgetSettings, ledger: Ledger) -> None:
        self.bus = bus
        self.settings = settings
        self.ledger = ledger
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    @classmethod
    async def start(cls, bus: Bus, settings: BudgetSettings, *, background: bool = True) -> BudgetService:
        ledger = await Ledger.open(bus.js, settings, Pricing.from_settings(settings))
        svc = cls(bus, settings, ledger)
        for scope in ("mission", "daily", "monthly"):
            # exported at 0 from the start, so the alert's increase() sees the first refusal
            metrics.BUDGET_EXCEEDED.labels(scope)
        await bus.serve("budget", svc.endpoints(), description="budget: reserve, settle, release, limits")
        if background:
            svc._tasks.append(asyncio.create_task(svc._every(settings.budget_sweep_interval_seconds, svc.sweep_once),
                                                  name="budget:sweeper"))
            svc._tasks.append(asyncio.create_task(svc._every(settings.budget_gauge_interval_seconds,
                                                             svc.refresh_gauges), name="budget:gauges"))
        await svc.refresh_gauges()
        return svc

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def endpoints(self) -> dict[str, tuple[type, Callable[[Any], Awaitable[Any]]]]:
        return {
            client.SUBJECT_RESERVE: (budget_pb2.ReserveRequest, self.reserve),
            client.SUBJECT_SETTLE: (budget_pb2.SettleRequest, self.settle),
            client.SUBJECT_RELEASE: (budget_pb2.ReleaseRequest, self.release),
            client.SUBJECT_SET_LIMIT: (budget_pb2.SetLimitRequest, self.set_limit),
            client.SUBJECT_STATUS: (budget_pb2.BudgetStatusRequest, self.status),
        }

    # ------------------------------------------------------------------- plumbing
    async def _guard(self, operation: str, validate, request, call):
        span = trace.get_current_span()
        span.set_attribute("coo.budget.operation", operation)
        if getattr(request, "reservation_id", ""):
            span.set_attribute("coo.budget.reservation_id", request.reservation_id)
        try:
            validate(request)
        except InvalidMessage:
            metrics.BUDGET_OPERATIONS.labels(operation, "invalid").inc()
            raise
        try:
            return await call(request)
        except Exception:
            metrics.BUDGET_OPERATIONS.labels(operation, "error").inc()
            raise

    async def _apply(self, eff: Effects) -> None:
        span = trace.get_current_span()
        for k, v in eff.span.items():
            span.set_attribute(k, v)
        for scope in eff.exceeded:
            metrics.BUDGET_EXCEEDED.labels(scope).inc()
        self._gauges(eff.touched)
        for ev in eff.events:
            await timeline.record(self.bus, ev.mission_id, ev.type, ev.message, level=ev.level,
                                  attributes=ev.attributes, event_id=ev.event_id)

    def _gauges(self, touched: list[tuple[ScopeState, Limit]]) -> None:
        now = self.ledger.clock()
        current = {DAILY: day_key(now).split(".", 1)[1], MONTHLY: month_key(now).split(".", 1)[1]}
        for state, limit in touched:
            if state.scope not in current or state.key != current[state.scope]:
                continue
            usd, _ = state.committed()
            metrics.BUDGET_SPENT.labels(state.scope).set(nusd_to_usd(state.spent_nusd))
            metrics.BUDGET_RESERVED.labels(state.scope).set(nusd_to_usd(state.reserved_nusd))
            metrics.BUDGET_LIMIT.labels(state.scope).set(nusd_to_usd(limit.nusd))
            metrics.BUDGET_REMAINING.labels(state.scope).set(
                nusd_to_usd(max(0, limit.nusd - usd)) if limit.nusd else math.inf)

    async def refresh_gauges(self) -> None:
        self._gauges(await self.ledger.scopes())

    async def sweep_once(self) -> int:
        expired, eff = await self.ledger.sweep()
        if expired:
            metrics.BUDGET_OPERATIONS.labels("expire", "ok").inc(expired)
        await self._apply(eff)
        return expired

    async def _every(self, interval: float, fn: Callable[[], Awaitable[Any]]) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a background loop never dies of one error
                log.warning("budget background task failed", task=getattr(fn, "__name__", "?"),
                            error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ endpoints
    async def reserve(self, req: budget_pb2.ReserveRequest) -> budget_pb2.ReserveReply:
        async def call(r):
            reply, eff = await self.ledger.reserve(r)
            metrics.BUDGET_OPERATIONS.labels("reserve", "ok" if reply.ok else "refused").inc()
            await self._apply(eff)
            return reply
        return await self._guard("reserve", validate_reserve, req, call)

    async def settle(self, req: budget_pb2.SettleRequest) -> budget_pb2.SettleReply:
        async def call(r):
            reply, eff = await self.ledger.settle(r)
            metrics.BUDGET_OPERATIONS.labels("settle", "over_limit" if reply.over_limit else "ok").inc()
            await self._apply(eff)
            return reply
        return await self._guard("settle", validate_settle, req, call)

    async def release(self, req: budget_pb2.ReleaseRequest) -> budget_pb2.ReleaseReply:
        async def call(r):
            reply, eff = await self.ledger.release(r)
            metrics.BUDGET_OPERATIONS.labels("release", "ok").inc()
            await self._apply(eff)
            return reply
        return await self._guard("release", validate_release, req, call)

    async def set_limit(self, req: budget_pb2.SetLimitRequest) -> budget_pb2.SetLimitReply:
        async def call(r):
            reply, eff = await self.ledger.set_limit(r)
            metrics.BUDGET_OPERATIONS.labels("set_limit", "ok").inc()
            await self._apply(eff)
            return reply
        return await self._guard("set_limit", validate_set_limit, req, call)

    async def status(self, req: budget_pb2.BudgetStatusRequest) -> budget_pb2.BudgetStatusReply:
        async def call(r):
            reply = await self.ledger.status(r)
            metrics.BUDGET_OPERATIONS.labels("status", "ok").inc()
            return reply
        return await self._guard("status", validate_status, req, call)


async def start(ctx: ServiceContext) -> None:
    settings = ctx.settings if isinstance(ctx.settings, BudgetSettings) else BudgetSettings()
    svc = await BudgetService.start(ctx.bus, settings)
    ctx.on_stop.append(svc.stop)

    async def ledger_check() -> tuple[bool, str]:
        await svc.ledger.js.stream_info(svc.ledger.stream)
        return True, f"bucket {svc.ledger.bucket} reachable"

    ctx.checks["budget_ledger"] = ledger_check
    log.info("budget service ready", on_exceeded=settings.budget_on_exceeded,
             mission_usd=settings.budget_mission_usd, daily_usd=settings.budget_daily_usd,
             monthly_usd=settings.budget_monthly_usd, models=sorted(settings.price_table()))


def main() -> None:
    run("budget", lambda s: s.budget_port, BudgetSettings, start)

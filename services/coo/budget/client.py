"""Client of the budget service, for the agent and the orchestrator.

Every call is request/reply over NATS (``coo.budget.<verb>``, the ``budget`` nats.micro
service) and returns the reply message. ``mission_id`` goes into the request *and* into the
bus call, so the trace's baggage carries it to the budget service's span.

Every verb is idempotent on the service side (by ``reservation_id``), so timeouts, "no
responders" and 500s are retried with the same request (``retries`` times, jittered exponential
backoff from ``retry_delay``; :mod:`coo.common.retry`); a 400 (invalid request) raises
:class:`coo.common.bus.ServiceError` at once.

Reply conventions: ``remaining_usd`` / ``remaining_tokens`` are the smallest remainder over the
scopes that have a limit in that unit, and -1 when no scope limits that unit.
"""

from __future__ import annotations

import asyncio

import nats.errors

from coo.common import topology
from coo.common.bus import Bus, ServiceError
from coo.common.retry import Policy
from coo.common.telemetry import get_logger
from coo.v1 import budget_pb2

log = get_logger("coo.budget.client")

SUBJECT_RESERVE = f"{topology.BUDGET}.reserve"
SUBJECT_SETTLE = f"{topology.BUDGET}.settle"
SUBJECT_RELEASE = f"{topology.BUDGET}.release"
SUBJECT_SET_LIMIT = f"{topology.BUDGET}.set_limit"
SUBJECT_STATUS = f"{topology.BUDGET}.status"

SCOPES = {
    "mission": budget_pb2.BUDGET_SCOPE_MISSION,
    "daily": budget_pb2.BUDGET_SCOPE_DAILY,
    "monthly": budget_pb2.BUDGET_SCOPE_MONTHLY,
}


_TRANSIENT = (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError, ServiceError)


def _transient(exc: BaseException) -> bool:
    """A timeout, no responders, or a 500; not a 400."""
    return not isinstance(exc, ServiceError) or exc.code == "500"


class BudgetClient:
    """``settle_deadline``: how long a reserve, a settle or a release keeps trying through transient
    errors (timeouts, no responders, a 500): a call's cost must reach the ledger and a reservation
    must not stay held, even while the budget's bucket moves to a new leader (a NATS node lost:
    seconds), and an LLM call waits for its reservation rather than failing its task. All three are
    idempotent by reservation id, so a try whose answer was lost does no harm when repeated. Other
    requests (limits, status) give up after ``retries``."""

    def __init__(self, bus: Bus, *, timeout: float = 5.0, retries: int = 2, retry_delay: float = 0.2,
                 settle_deadline: float = 30.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._retry = Policy("budget request", retry_on=_TRANSIENT, retry_if=_transient, attempts=retries + 1,
                             initial=retry_delay, maximum=max(2.0, retry_delay), jitter=0.5, logger=log)
        self._settle_retry = Policy("budget settle", retry_on=_TRANSIENT, retry_if=_transient, attempts=None,
                                    deadline=settle_deadline, initial=retry_delay, maximum=max(4.0, retry_delay),
                                    jitter=0.5, logger=log)

    async def _call(self, subject, request, reply_cls, mission_id: str | None, *, policy: Policy | None = None):
        return await (policy or self._retry).bind(subject=subject).call(
            self.bus.request, subject, request, reply_cls, mission_id=mission_id or None, timeout=self.timeout)

    async def reserve(self, reservation_id: str, mission_id: str, model: str, input_tokens: int,
                      max_output_tokens: int, *, ttl_seconds: int = 0, task_id: str = "",
                      role: str = "") -> budget_pb2.ReserveReply:
        """Reserve the worst case of one LLM call. ``ok`` false: refused (``scope``, ``reason``)."""
        req = budget_pb2.ReserveRequest(reservation_id=reservation_id, mission_id=mission_id, model=model,
                                        input_tokens=input_tokens, max_output_tokens=max_output_tokens,
                                        ttl_seconds=ttl_seconds, task_id=task_id, role=role)
        return await self._call(SUBJECT_RESERVE, req, budget_pb2.ReserveReply, mission_id, policy=self._settle_retry)

    async def settle(self, reservation_id: str, mission_id: str, model: str, input_tokens: int,
                     output_tokens: int) -> budget_pb2.SettleReply:
        """Charge the usage the provider reported. ``over_limit`` true: ``scope`` went past its limit."""
        req = budget_pb2.SettleRequest(reservation_id=reservation_id, mission_id=mission_id, model=model,
                                       input_tokens=input_tokens, output_tokens=output_tokens)
        return await self._call(SUBJECT_SETTLE, req, budget_pb2.SettleReply, mission_id, policy=self._settle_retry)

    async def release(self, reservation_id: str, mission_id: str = "", reason: str = "") -> budget_pb2.ReleaseReply:
        """Give a reservation back (the call failed or was not made)."""
        req = budget_pb2.ReleaseRequest(reservation_id=reservation_id, mission_id=mission_id, reason=reason)
        return await self._call(SUBJECT_RELEASE, req, budget_pb2.ReleaseReply, mission_id, policy=self._settle_retry)

    async def set_limit(self, scope: budget_pb2.BudgetScope.ValueType | str, *, mission_id: str = "",
                        limit_usd: float | None = None, limit_tokens: int | None = None,
                        requested_by: str = "") -> budget_pb2.SetLimitReply:
        """Set a limit (``scope``: "mission" | "daily" | "monthly" or the enum); None leaves a unit
        unchanged, 0 removes its limit."""
        if isinstance(scope, str):
            scope = SCOPES[scope.lower()]
        req = budget_pb2.SetLimitRequest(scope=scope, mission_id=mission_id, requested_by=requested_by)
        if limit_usd is not None:
            req.limit_usd = limit_usd
        if limit_tokens is not None:
            req.limit_tokens = limit_tokens
        return await self._call(SUBJECT_SET_LIMIT, req, budget_pb2.SetLimitReply, mission_id)

    async def status(self, mission_id: str = "") -> budget_pb2.BudgetStatusReply:
        """The current day and month, plus the mission's scope when ``mission_id`` is given."""
        req = budget_pb2.BudgetStatusRequest(mission_id=mission_id)
        return await self._call(SUBJECT_STATUS, req, budget_pb2.BudgetStatusReply, mission_id)

"""The budget service's protobuf replies, made from the reservation model's values.

Conventions (see :mod:`coo.budget.client`): amounts in USD floats; ``remaining_*`` of a reply is
the smallest remainder over the scopes that limit that unit, -1 where none does.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from coo.budget.model import DAILY, MISSION, MONTHLY, SETTLED, Limit, Record, ScopeState, StepResult, remaining
from coo.budget.pricing import nusd_to_usd
from coo.v1 import budget_pb2

SCOPE_ENUM = {MISSION: budget_pb2.BUDGET_SCOPE_MISSION, DAILY: budget_pb2.BUDGET_SCOPE_DAILY,
              MONTHLY: budget_pb2.BUDGET_SCOPE_MONTHLY}
SCOPE_NAME = {v: k for k, v in SCOPE_ENUM.items()}


def timestamp(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(at * 1e9))
    return ts


def _usd_or_none(nusd: int | None) -> float:
    return nusd_to_usd(nusd) if nusd is not None else -1.0


def reserved(rec: Record) -> budget_pb2.ReserveReply:
    """A granted reservation (also the answer to a retried request)."""
    return budget_pb2.ReserveReply(
        ok=True, reservation_id=rec.id, reserved_usd=nusd_to_usd(rec.reserved_nusd),
        reserved_tokens=rec.reserved_tokens, remaining_usd=_usd_or_none(rec.remaining_nusd),
        remaining_tokens=rec.remaining_tokens if rec.remaining_tokens is not None else -1,
        expires_at=timestamp(rec.expires_at), warning=rec.warning)


def refused(rid: str, reason: str) -> budget_pb2.ReserveReply:
    """Not granted for a reason no scope's limit gave (a race, an earlier refusal)."""
    return budget_pb2.ReserveReply(ok=False, reservation_id=rid, reason=reason)


def refused_by_limit(rid: str, r: StepResult, reason: str) -> budget_pb2.ReserveReply:
    """Refused by the limit of scope ``r``: with what is left there."""
    rem_usd, rem_tok = remaining(r.state, r.limit)
    return budget_pb2.ReserveReply(
        ok=False, reservation_id=rid, reason=reason, scope=SCOPE_ENUM[r.state.scope],
        remaining_usd=nusd_to_usd(max(0, rem_usd)) if rem_usd is not None else -1.0,
        remaining_tokens=max(0, rem_tok) if rem_tok is not None else -1)


def settled(rec: Record, reason: str) -> budget_pb2.SettleReply:
    return budget_pb2.SettleReply(
        ok=True, cost_usd=nusd_to_usd(rec.cost_nusd), reason=reason, over_limit=rec.over_limit,
        scope=SCOPE_ENUM.get(rec.over_scope, budget_pb2.BUDGET_SCOPE_UNSPECIFIED),
        remaining_usd=_usd_or_none(rec.remaining_nusd),
        remaining_tokens=rec.remaining_tokens if rec.remaining_tokens is not None else -1,
        warning=rec.warning)


def released(rec: Record | None, fresh: bool) -> budget_pb2.ReleaseReply:
    """``fresh``: this request released it; else it found ``rec`` (or nothing) as it was."""
    if rec is None:
        return budget_pb2.ReleaseReply(ok=True, reason="unknown reservation; nothing to release")
    if fresh:
        return budget_pb2.ReleaseReply(ok=True, released_usd=nusd_to_usd(rec.released_nusd))
    if rec.state == SETTLED:
        return budget_pb2.ReleaseReply(ok=True, reason="already settled")
    return budget_pb2.ReleaseReply(ok=True, reason="already released", released_usd=nusd_to_usd(rec.released_nusd))


def scope_status(state: ScopeState, limit: Limit, now: float) -> budget_pb2.ScopeStatus:
    """One scope ledger as the status reply shows it (``now`` when it was never written)."""
    rem_usd, rem_tok = remaining(state, limit)
    return budget_pb2.ScopeStatus(
        scope=SCOPE_ENUM[state.scope], key=state.key, limit_usd=nusd_to_usd(limit.nusd),
        limit_tokens=limit.tokens, spent_usd=nusd_to_usd(state.spent_nusd), spent_tokens=state.spent_tokens,
        reserved_usd=nusd_to_usd(state.reserved_nusd), reserved_tokens=state.reserved_tokens,
        remaining_usd=nusd_to_usd(max(0, rem_usd)) if rem_usd is not None else 0.0,
        remaining_tokens=max(0, rem_tok) if rem_tok is not None else 0,
        reservations=len(state.open), updated_at=timestamp(state.updated_at or now))

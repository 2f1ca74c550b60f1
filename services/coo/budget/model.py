"""The reservation model: keys, ledger values, limits and the transitions, with no I/O.

Everything here is a pure function of its arguments (the clock is passed in), so the arithmetic
and the state machine are unit-testable without a bus; :mod:`coo.budget.store` writes the values
and :mod:`coo.budget.ledger` drives the protocol.

Keys and values (JSON, amounts in integer nano-dollars "nusd" so sums are exact)
------------------------------------------------------------------------------------
``mission.<mission_id>``  a scope ledger (ids outside ``[A-Za-z0-9_-]`` are written
``=<base64url>``); per-message TTL ``budget_mission_retention_seconds``, renewed by each write
``day.<YYYY-MM-DD>``, ``month.<YYYY-MM>`` (UTC) scope ledgers::

    {"v": 1, "scope": "mission|daily|monthly", "key": "<id|date|month>",
     "spent_nusd": 0, "spent_tokens": 0,
     "open":   {"<reservation_id>": [nusd, tokens]},   # outstanding reservations
     "closed": {"<reservation_id>": ["s"|"r", epoch]}, # settled/released here lately
     "limit_nusd": null, "limit_tokens": null,         # mission: explicit limit (null: default)
     "warned": false, "updated_at": epoch}

    reserved = sum(open); remaining = limit - spent - reserved. ``closed`` entries are pruned
    after ``budget_marker_seconds``: they make each per-scope step idempotent (a retried or
    racing step finds its own mark and does nothing), which is what makes recovery exact.
    A reservation closed from ``reserved`` (``complete`` in its record) needs none: it is in
    ``open`` of every scope and nothing but its own closing steps touch it there, so "if it is
    in ``open``: drop it (and charge)" is idempotent by itself. Markers are written for the
    rest: rollbacks, closing a ``pending`` one (its reserve may still be running), late and
    unreserved settlements.

``limits.daily``, ``limits.monthly``  overrides set by SetLimit (apply to the current and
future periods)::  {"limit_nusd": int|null, "limit_tokens": int|null, "requested_by": str}

``res.<reservation_id>``  an unfinished reservation (a :class:`Record`; ``state`` pending,
reserved, settling or releasing, with amounts, the three scope keys, ``expires_at``).
``done.<reservation_id>``  the finished record (``state`` settled or released), kept
``budget_record_retention_seconds`` by a per-message TTL: it answers retried requests.

States of a record: ``pending -> reserved -> settling -> settled`` and ``pending | reserved ->
releasing -> released``; a late or unreserved settlement starts at ``settling``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from coo.budget.pricing import nusd_to_usd

PENDING, RESERVED, SETTLING, SETTLED, RELEASING, RELEASED = (
    "pending", "reserved", "settling", "settled", "releasing", "released")
FINAL = frozenset({SETTLED, RELEASED})

MISSION, DAILY, MONTHLY = "mission", "daily", "monthly"
_PREFIX_SCOPE = {"mission": MISSION, "day": DAILY, "month": MONTHLY}

LIMITS_KEY = {DAILY: "limits.daily", MONTHLY: "limits.monthly"}

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


# ------------------------------------------------------------------------------- keys
def safe_id(value: str) -> str:
    """A key token for an id: the id itself when it is plain, else ``=`` + base64url."""
    if _SAFE_ID.fullmatch(value):
        return value
    return "=" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def unsafe_id(token: str) -> str:
    """The id a key token stands for (inverse of :func:`safe_id`)."""
    if not token.startswith("="):
        return token
    data = token[1:]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode()


def mission_key(mission_id: str) -> str:
    return f"mission.{safe_id(mission_id)}"


def day_key(at: float) -> str:
    return "day." + datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def month_key(at: float) -> str:
    return "month." + datetime.fromtimestamp(at, UTC).strftime("%Y-%m")


def res_key(reservation_id: str) -> str:
    return f"res.{safe_id(reservation_id)}"


def done_key(reservation_id: str) -> str:
    return f"done.{safe_id(reservation_id)}"


def scope_of(key: str) -> str:
    return _PREFIX_SCOPE[key.split(".", 1)[0]]


# ----------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Limit:
    nusd: int = 0     # 0: no limit
    tokens: int = 0   # 0: no limit


@dataclass
class ScopeState:
    scope: str
    key: str
    spent_nusd: int = 0
    spent_tokens: int = 0
    open: dict[str, list[int]] = field(default_factory=dict)
    closed: dict[str, list] = field(default_factory=dict)
    limit_nusd: int | None = None
    limit_tokens: int | None = None
    warned: bool = False
    updated_at: float = 0.0

    @classmethod
    def new(cls, kv_key: str) -> ScopeState:
        return cls(scope=scope_of(kv_key), key=unsafe_id(kv_key.split(".", 1)[1]))

    @classmethod
    def decode(cls, kv_key: str, data: bytes | None) -> ScopeState:
        if not data:
            return cls.new(kv_key)
        raw = json.loads(data)
        return cls(scope=raw["scope"], key=raw["key"], spent_nusd=raw.get("spent_nusd", 0),
                   spent_tokens=raw.get("spent_tokens", 0), open=raw.get("open", {}),
                   closed=raw.get("closed", {}), limit_nusd=raw.get("limit_nusd"),
                   limit_tokens=raw.get("limit_tokens"), warned=raw.get("warned", False),
                   updated_at=raw.get("updated_at", 0.0))

    def encode(self) -> bytes:
        # not dataclasses.asdict: it deep-copies ``open`` and ``closed`` first
        return json.dumps({"v": 1, "scope": self.scope, "key": self.key, "spent_nusd": self.spent_nusd,
                           "spent_tokens": self.spent_tokens, "open": self.open, "closed": self.closed,
                           "limit_nusd": self.limit_nusd, "limit_tokens": self.limit_tokens,
                           "warned": self.warned, "updated_at": self.updated_at},
                          separators=(",", ":")).encode()

    def snapshot(self) -> ScopeState:
        """A copy for a step's result (``closed`` left out): later steps of the same group
        commit go on changing the live state."""
        return ScopeState(scope=self.scope, key=self.key, spent_nusd=self.spent_nusd,
                          spent_tokens=self.spent_tokens, open=dict(self.open), closed={},
                          limit_nusd=self.limit_nusd, limit_tokens=self.limit_tokens, warned=self.warned,
                          updated_at=self.updated_at)

    @property
    def reservations(self) -> int:
        return len(self.open)

    @property
    def reserved_nusd(self) -> int:
        return sum(v[0] for v in self.open.values())

    @property
    def reserved_tokens(self) -> int:
        return sum(v[1] for v in self.open.values())

    def committed(self) -> tuple[int, int]:
        return self.spent_nusd + self.reserved_nusd, self.spent_tokens + self.reserved_tokens

    def prune(self, now: float, horizon: float) -> None:
        self.closed = {k: v for k, v in self.closed.items() if v[1] >= now - horizon}


def remaining(state: ScopeState, limit: Limit) -> tuple[int | None, int | None]:
    """limit - spent - reserved per unit (may be negative), None where there is no limit."""
    usd, tokens = state.committed()
    return (limit.nusd - usd if limit.nusd else None, limit.tokens - tokens if limit.tokens else None)


def over_limit(state: ScopeState, limit: Limit) -> bool:
    usd, tokens = state.committed()
    return bool((limit.nusd and usd > limit.nusd) or (limit.tokens and tokens > limit.tokens))


def past_warning(state: ScopeState, limit: Limit, ratio: float) -> bool:
    usd, tokens = state.committed()
    return bool((limit.nusd and usd >= ratio * limit.nusd) or (limit.tokens and tokens >= ratio * limit.tokens))


@dataclass
class Record:
    """One reservation (``res.<id>`` while unfinished, ``done.<id>`` after)."""

    id: str
    mission_id: str
    state: str
    model: str = ""
    task_id: str = ""
    role: str = ""
    reserved_nusd: int = 0
    reserved_tokens: int = 0
    scopes: list[str] = field(default_factory=list)
    created_at: float = 0.0
    expires_at: float = 0.0
    updated_at: float = 0.0
    # filled by settle
    cost_nusd: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    settle_model: str = ""
    late: bool = False          # settled after the reservation was released/expired
    unreserved: bool = False    # settled without any reservation on record
    over_limit: bool = False
    over_scope: str = ""
    # filled by reserve (and refreshed by settle) for idempotent replies
    warning: bool = False
    remaining_nusd: int | None = None
    remaining_tokens: int | None = None
    # filled by release
    reason: str = ""
    released_nusd: int = 0
    # closed from RESERVED (every scope holds it, its reserve is over): scope steps need no
    # ``closed`` marker (see release_step). Absent in older records: markers.
    complete: bool = False

    @classmethod
    def decode(cls, data: bytes) -> Record:
        raw = json.loads(data)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def encode(self) -> bytes:
        return json.dumps({"v": 1, **{name: getattr(self, name) for name in _RECORD_FIELDS}},
                          separators=(",", ":")).encode()

    @property
    def settle_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_RECORD_FIELDS = tuple(f.name for f in fields(Record))


# ---------------------------------------------------------------------------- limits
def mission_limit(state: ScopeState, default: Limit) -> Limit:
    """A mission's own limit per unit where SetLimit gave one, else the default."""
    return Limit(state.limit_nusd if state.limit_nusd is not None else default.nusd,
                 state.limit_tokens if state.limit_tokens is not None else default.tokens)


def limit_fn(globals_: dict[str, Limit], mission_default: Limit) -> Callable[[ScopeState], Limit]:
    """The limit of any scope ledger, given the daily and monthly limits in force."""
    def limit_of(state: ScopeState) -> Limit:
        return mission_limit(state, mission_default) if state.scope == MISSION else globals_[state.scope]
    return limit_of


def override(data: bytes | None, default: Limit) -> Limit:
    """A ``limits.*`` value over the configured limit (a null unit keeps the default)."""
    if not data:
        return default
    raw = json.loads(data)
    usd, tokens = raw.get("limit_nusd"), raw.get("limit_tokens")
    return Limit(default.nusd if usd is None else int(usd), default.tokens if tokens is None else int(tokens))


def set_override(data: bytes | None, usd: int | None, tokens: int | None, requested_by: str, now: float) -> bytes:
    """The new ``limits.*`` value: ``None`` leaves a unit as it was."""
    cur = json.loads(data) if data else {"limit_nusd": None, "limit_tokens": None}
    if usd is not None:
        cur["limit_nusd"] = usd
    if tokens is not None:
        cur["limit_tokens"] = tokens
    cur.update(requested_by=requested_by, updated_at=now)
    return json.dumps(cur).encode()


def reserve_stages(scopes: list[str], globals_: dict[str, Limit]) -> list[list[str]]:
    """The order a reservation takes its scopes in: those with a limit one after the other
    (mission, day, month), each only after the one before granted, since a reservation that a
    later scope refuses must not hold an earlier one in the meantime (it could refuse others
    there that fit); a scope without any limit can't refuse, so it goes along with the first."""
    unlimited = {k for k in scopes[1:] if globals_.get(scope_of(k), Limit(1, 1)) == Limit(0, 0)}
    return [[scopes[0], *[k for k in scopes[1:] if k in unlimited]]] + \
           [[k] for k in scopes[1:] if k not in unlimited]


# -------------------------------------------------------------------- scope steps
@dataclass
class StepResult:
    state: ScopeState
    limit: Limit
    applied: bool = False
    refused: str = ""            # "usd" | "tokens" when the limit refused it
    need: int = 0
    available: int = 0
    warn_first: bool = False     # this write crossed the mission warning ratio first
    over: bool = False
    closed: bool = False         # reserve: this scope closed the reservation lately (a marker)


Step = Callable[[ScopeState], StepResult]
"""A change of one scope ledger: applied in place (``applied``) or not at all. Steps are pure
functions of the state, so a group commit that lost its compare-and-set re-applies them."""


def reserve_step(rid: str, nusd: int, tokens: int, limit_of: Callable[[ScopeState], Limit], now: float,
                 warning_ratio: float) -> Step:
    """Add ``open[rid]`` if spent + reserved + amount stays within the limit (USD and tokens)."""
    def step(state: ScopeState) -> StepResult:
        limit = limit_of(state)
        if rid in state.open:        # already done: nothing to do
            return StepResult(state, limit)
        if rid in state.closed:      # closed while being made, or an earlier one that was refused
            return StepResult(state, limit, closed=True)
        usd, tok = state.committed()
        if limit.nusd and usd + nusd > limit.nusd:
            return StepResult(state, limit, refused="usd", need=nusd, available=max(0, limit.nusd - usd))
        if limit.tokens and tok + tokens > limit.tokens:
            return StepResult(state, limit, refused="tokens", need=tokens, available=max(0, limit.tokens - tok))
        state.open[rid] = [nusd, tokens]
        state.updated_at = now
        warn_first = False
        if state.scope == MISSION and not state.warned and past_warning(state, limit, warning_ratio):
            state.warned = warn_first = True
        return StepResult(state, limit, applied=True, warn_first=warn_first)
    return step


# A reservation that was complete (RESERVED: in ``open`` of every scope, its reserve done)
# when it was closed needs no ``closed`` marker: only steps closing that same reservation
# can touch it, and "pop it from ``open`` if it is there" is idempotent on its own (so a
# re-driven step finds nothing and writes nothing). Markers are needed, and written, when a
# reserve may still be running (PENDING: a rollback, an expiry, a settle racing it) and for
# late or unreserved settlements (nothing in ``open`` to tell "done" from "to do"). Without
# this the day and month ledgers carried one marker per operation of the last
# ``budget_marker_seconds``: at 200 operations/s about 1 MB of JSON to encode on every write,
# and past nats' max payload.
def release_step(rid: str, limit_of: Callable[[ScopeState], Limit], now: float, *, marked: bool = True) -> Step:
    """Drop ``open[rid]`` (unless this scope closed it already); ``marked``: remember closing it."""
    def step(state: ScopeState) -> StepResult:
        limit = limit_of(state)
        if rid in state.closed or (not marked and rid not in state.open):
            return StepResult(state, limit)
        state.open.pop(rid, None)
        if marked:
            state.closed[rid] = ["r", now]
        state.updated_at = now
        return StepResult(state, limit, applied=True)
    return step


def settle_step(rid: str, nusd: int, tokens: int, limit_of: Callable[[ScopeState], Limit], now: float,
                warning_ratio: float, *, marked: bool = True) -> Step:
    """Unless this scope settled ``rid`` already: drop ``open[rid]`` and charge the actual cost
    (spent may pass the limit: ``over``)."""
    def step(state: ScopeState) -> StepResult:
        limit = limit_of(state)
        if state.closed.get(rid, [""])[0] == "s" or (not marked and rid not in state.open):
            return StepResult(state, limit, over=over_limit(state, limit))
        state.open.pop(rid, None)
        state.spent_nusd += nusd
        state.spent_tokens += tokens
        if marked:
            state.closed[rid] = ["s", now]
        state.updated_at = now
        warn_first = False
        if state.scope == MISSION and not state.warned and past_warning(state, limit, warning_ratio):
            state.warned = warn_first = True
        return StepResult(state, limit, applied=True, warn_first=warn_first, over=over_limit(state, limit))
    return step


def mission_limit_step(usd: int | None, tokens: int | None, limit_of: Callable[[ScopeState], Limit],
                       now: float) -> Step:
    """SetLimit of a mission: ``None`` leaves a unit as it was."""
    def step(state: ScopeState) -> StepResult:
        if usd is not None:
            state.limit_nusd = usd
        if tokens is not None:
            state.limit_tokens = tokens
        state.updated_at = now
        return StepResult(state, limit_of(state), applied=True)
    return step


# ------------------------------------------------------------------- record changes
def new_reservation(rid: str, mission_id: str, *, model: str, task_id: str, role: str, nusd: int, tokens: int,
                    ttl: float, now: float) -> Record:
    """A pending reservation of the mission, the day and the month it is made in."""
    return Record(id=rid, mission_id=mission_id, state=PENDING, model=model, task_id=task_id, role=role,
                  reserved_nusd=nusd, reserved_tokens=tokens,
                  scopes=[mission_key(mission_id), day_key(now), month_key(now)],
                  created_at=now, expires_at=now + ttl, updated_at=now)


def unreserved_settlement(rid: str, mission_id: str, model: str, now: float) -> Record:
    """The record of a settlement that found no reservation: it is charged to today."""
    return Record(id=rid, mission_id=mission_id, state=SETTLING, model=model, unreserved=True,
                  scopes=[mission_key(mission_id), day_key(now), month_key(now)], created_at=now, expires_at=now)


def begin_settle(rec: Record, cost_nusd: int, model: str, input_tokens: int, output_tokens: int,
                 now: float) -> None:
    """pending | reserved -> settling, with the actual usage; a released (late) or unreserved
    one too: usage that happened is never dropped."""
    if rec.state == RELEASED or rec.unreserved:
        rec.late, rec.complete = True, False
    else:
        rec.complete = rec.state == RESERVED
    rec.state, rec.cost_nusd, rec.settle_model = SETTLING, cost_nusd, model
    rec.input_tokens, rec.output_tokens, rec.updated_at = input_tokens, output_tokens, now


def begin_release(rec: Record, reason: str, now: float) -> None:
    """pending | reserved -> releasing."""
    rec.complete = rec.state == RESERVED
    rec.state, rec.reason, rec.updated_at = RELEASING, reason, now


def expiry_deadline(rec: Record, stuck_seconds: float, cas_deadline_seconds: float) -> float:
    """When the sweeper releases a pending or reserved record. A pending one has nothing granted
    yet: a reserve still running gets time to finish (it takes at most three contended
    compare-and-sets, each given up ``cas_deadline_seconds`` after it was queued); older means
    its replica died."""
    if rec.state == PENDING:
        return rec.created_at + stuck_seconds + 3 * cas_deadline_seconds
    return rec.expires_at


def summary(results: list[StepResult], warning_ratio: float) -> tuple[int | None, int | None, bool]:
    """The smallest remainder per unit over the scopes (None: no scope limits it), and whether
    any scope is past the warning ratio."""
    rem_usd: int | None = None
    rem_tok: int | None = None
    warning = False
    for r in results:
        u, t = remaining(r.state, r.limit)
        if u is not None:
            rem_usd = u if rem_usd is None else min(rem_usd, u)
        if t is not None:
            rem_tok = t if rem_tok is None else min(rem_tok, t)
        warning = warning or past_warning(r.state, r.limit, warning_ratio)
    return (max(0, rem_usd) if rem_usd is not None else None,
            max(0, rem_tok) if rem_tok is not None else None, warning)


def mark_settled(rec: Record, results: list[StepResult], warning_ratio: float) -> None:
    """settling -> settled, with what the scope steps reported."""
    for r in results:
        if r.over and not rec.over_limit:
            rec.over_limit, rec.over_scope = True, r.state.scope
    rec.remaining_nusd, rec.remaining_tokens, rec.warning = summary(results, warning_ratio)
    rec.state = SETTLED


# ---------------------------------------------------------------------------- effects
@dataclass
class Event:
    mission_id: str
    type: str
    message: str
    level: str
    event_id: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Effects:
    """What an operation did besides its reply: timeline events, refused/over scopes, and the
    scope ledgers it touched (for the gauges)."""

    events: list[Event] = field(default_factory=list)
    exceeded: list[str] = field(default_factory=list)
    touched: list[tuple[ScopeState, Limit]] = field(default_factory=list)
    span: dict[str, Any] = field(default_factory=dict)


def warning_event(mission_id: str, r: StepResult, warning_ratio: float) -> Event:
    usd, tokens = r.state.committed()
    return Event(
        mission_id=mission_id, type="budget.warning", level="warning",
        message=(f"mission budget {warning_ratio:.0%} used: "
                 f"${nusd_to_usd(usd):.4f} of ${nusd_to_usd(r.limit.nusd):.2f} spent or reserved"
                 if r.limit.nusd else f"mission token budget {warning_ratio:.0%} used: "
                 f"{tokens} of {r.limit.tokens} tokens"),
        event_id=f"budget-warning-{mission_id}",
        attributes={"scope": MISSION, "spent_usd": f"{nusd_to_usd(r.state.spent_nusd):.6f}",
                    "reserved_usd": f"{nusd_to_usd(r.state.reserved_nusd):.6f}",
                    "limit_usd": f"{nusd_to_usd(r.limit.nusd):.6f}", "limit_tokens": str(r.limit.tokens)})


def refusal_reason(r: StepResult) -> str:
    scope = r.state.scope
    if r.refused == "usd":
        limit = nusd_to_usd(r.limit.nusd)
        return (f"{scope} budget exceeded ({r.state.key}): this call needs ${nusd_to_usd(r.need):.6f}, "
                f"${nusd_to_usd(r.available):.6f} of ${limit:.2f} left")
    return (f"{scope} token budget exceeded ({r.state.key}): this call needs {r.need} tokens, "
            f"{r.available} of {r.limit.tokens} left")


def refusal_event(rec: Record, r: StepResult, reason: str) -> Event:
    return Event(
        mission_id=rec.mission_id, type="budget.exceeded", level="warning", message=reason,
        event_id=f"budget-exceeded-{rec.id}",
        attributes={"scope": r.state.scope, "reservation_id": rec.id, "model": rec.model, "task_id": rec.task_id,
                    "role": rec.role, "unit": r.refused, "requested_usd": f"{nusd_to_usd(rec.reserved_nusd):.6f}",
                    "requested_tokens": str(rec.reserved_tokens)})


def over_limit_event(rec: Record, committed_nusd: int) -> Event:
    message = (f"usage took the {rec.over_scope} budget past its limit: this call cost "
               f"${nusd_to_usd(rec.cost_nusd):.6f}"
               + ("" if rec.unreserved else f" (reserved ${nusd_to_usd(rec.reserved_nusd):.6f})"))
    return Event(
        mission_id=rec.mission_id, type="budget.exceeded", level="warning", message=message,
        event_id=f"budget-over-{rec.id}",
        attributes={"scope": rec.over_scope, "reservation_id": rec.id, "over_limit": "true",
                    "cost_usd": f"{nusd_to_usd(rec.cost_nusd):.6f}",
                    "committed_usd": f"{nusd_to_usd(committed_nusd):.6f}"})


def settle_reason(rec: Record) -> str:
    if rec.unreserved:
        return "settled without a reservation; usage charged"
    if rec.late:
        return "the reservation had expired or been released; usage charged"
    return ""

"""The budget ledger: JetStream KV (bucket ``coo_budget``) with compare-and-set only.

Several replicas share the bucket and never hold a lock: every write names the revision it
read (``Nats-Expected-Last-Subject-Sequence``; revision 0 = "must not exist") and a write
that lost a race is re-read, recomputed and retried with jitter
(``coo_budget_cas_conflicts_total``). A limit is checked inside the same compare-and-set that
adds the amount, so no interleaving of replicas can pass it.

Inside one replica the scope ledgers are written by group commit (:meth:`Ledger._cas`): the
steps waiting for one key are applied in order to one state and written in one
compare-and-set, so requests of one replica never race each other (conflicts only happen
between replicas), and the committer writes on the state it wrote last without reading it back
(a stale one loses its compare-and-set; a decision to write nothing is re-checked on a fresh read).

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

Algorithm
---------
reserve   create ``res.<id>`` (pending; fails if a concurrent retry got there first), then
          for mission, day, month in that order CAS "if ``spent + reserved + amount <= limit``
          (USD and tokens; 0 = no limit) add ``open[id]``" (a scope without any limit goes
          along with the mission: it cannot refuse); a refusal rolls the earlier scopes back
          (release step) and purges the record, and so does a scope that remembers closing
          this id (an earlier request with it was refused); finally CAS the record
          pending->reserved.
settle    CAS the record ->settling with the actual cost, then in every scope at once CAS
          "unless closed as settled: drop ``open[id]``, spent += cost, mark closed" (spent may
          pass the limit: reported as over_limit), then finalize.
release   CAS the record ->releasing, in every scope at once "unless closed: drop
          ``open[id]``, mark closed", then finalize.
finalize  write ``done.<id>`` (CAS on "absent" first; a settled record is never overwritten)
          and purge ``res.<id>`` up to the revision this driver saw (a newer incarnation survives).
expiry    a sweeper on every replica scans ``res.*``: reserved records past ``expires_at``
          (and pending ones whose reserve died half-way) are CASed to releasing (only one replica wins: counted in
          ``coo_budget_reservations_expired_total``) and released; settling/releasing records
          older than ``budget_stuck_seconds`` (a replica died mid-way) are driven to the end.
periods   a reservation records its day and month keys when it is made; its settlement is
          charged to those, even if it arrives after midnight UTC.
late use  a settle after the reservation was released or expired (or never existed) still
          charges the actual cost: usage that happened is never dropped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext, api

from coo.budget.pricing import Pricing, nusd_to_usd, usd_to_nusd
from coo.budget.settings import BudgetSettings
from coo.common import kvscan, metrics, topology
from coo.common.telemetry import get_logger
from coo.v1 import budget_pb2

log = get_logger("coo.budget.ledger")

PENDING, RESERVED, SETTLING, SETTLED, RELEASING, RELEASED = (
    "pending", "reserved", "settling", "settled", "releasing", "released")
FINAL = frozenset({SETTLED, RELEASED})

MISSION, DAILY, MONTHLY = "mission", "daily", "monthly"
SCOPE_ENUM = {MISSION: budget_pb2.BUDGET_SCOPE_MISSION, DAILY: budget_pb2.BUDGET_SCOPE_DAILY,
              MONTHLY: budget_pb2.BUDGET_SCOPE_MONTHLY}
SCOPE_NAME = {v: k for k, v in SCOPE_ENUM.items()}
_PREFIX_SCOPE = {"mission": MISSION, "day": DAILY, "month": MONTHLY}

LIMITS_KEY = {DAILY: "limits.daily", MONTHLY: "limits.monthly"}

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
_ERR_WRONG_LAST = (10071, 10164)
_ERR_TTL_DISABLED = 10166


class Conflict(Exception):
    """A compare-and-set lost a race."""


class LedgerBusy(Exception):
    """A key stayed contended past ``budget_cas_deadline_seconds``."""


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
    return "day." + datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d")


def month_key(at: float) -> str:
    return "month." + datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m")


def res_key(reservation_id: str) -> str:
    return f"res.{safe_id(reservation_id)}"


def done_key(reservation_id: str) -> str:
    return f"done.{safe_id(reservation_id)}"


def scope_of(key: str) -> str:
    return _PREFIX_SCOPE[key.split(".", 1)[0]]


def timestamp(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(at * 1e9))
    return ts


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
    def new(cls, kv_key: str) -> "ScopeState":
        return cls(scope=scope_of(kv_key), key=unsafe_id(kv_key.split(".", 1)[1]))

    @classmethod
    def decode(cls, kv_key: str, data: bytes | None) -> "ScopeState":
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

    def snapshot(self) -> "ScopeState":
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
    # ``closed`` marker (see Ledger._release_step). Absent in older records: markers.
    complete: bool = False

    @classmethod
    def decode(cls, data: bytes) -> "Record":
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


_GROUP_MAX = 256        # steps written in one compare-and-set at most
_KEYS_MAX = 4096        # scope keys whose last written state a replica remembers
_DISTRUST = 8           # groups that read first after a remembered state was found stale...
_DISTRUST_MAX = 256     # ...doubling up to this while that keeps happening


@dataclass
class _Step:
    step: Callable[[ScopeState], StepResult]
    fut: asyncio.Future
    deadline: float


@dataclass
class _KeyQueue:
    """One scope key's group commit: steps waiting, the committer task, the last state written."""

    waiting: list[_Step] = field(default_factory=list)
    task: asyncio.Task | None = None
    cached: tuple[ScopeState, int] | None = None
    distrust: int = 0       # groups to go that read first (another replica wrote this key lately)
    distrust_next: int = 0  # how many next time a remembered state is found stale (doubles)


# ----------------------------------------------------------------------------- ledger
class Ledger:
    def __init__(self, js: JetStreamContext, settings: BudgetSettings, pricing: Pricing | None = None,
                 *, bucket: str = topology.BUCKET_BUDGET, clock: Callable[[], float] = time.time) -> None:
        self.js = js
        self.settings = settings
        self.pricing = pricing or Pricing.from_settings(settings)
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.clock = clock
        self._ttl_ok = True
        self._direct = False
        self._kv = None
        self._keys: OrderedDict[str, _KeyQueue] = OrderedDict()   # scope key -> its group commit
        self._limits_next: asyncio.Future | None = None           # the next shared read of the limits
        self._limits_task: asyncio.Task | None = None
        self.stats = {"gets": 0, "writes": 0, "purges": 0, "write_conflicts": 0,
                      "cas_conflicts": 0, "groups": 0, "steps": 0}

    @classmethod
    async def open(cls, js: JetStreamContext, settings: BudgetSettings, pricing: Pricing | None = None,
                   **kwargs: Any) -> "Ledger":
        """A ledger on an existing bucket (``Bus.ensure_topology`` creates it)."""
        ledger = cls(js, settings, pricing, **kwargs)
        ledger._kv = await js.key_value(ledger.bucket)
        info = await js.stream_info(ledger.stream)
        ledger._direct = bool(info.config.allow_direct)
        return ledger

    # ---------------------------------------------------------------- KV primitives
    async def _get(self, key: str) -> tuple[bytes | None, int]:
        """(value, revision); (None, revision of a delete marker or 0) when absent."""
        self.stats["gets"] += 1
        try:
            msg = await self.js.get_msg(self.stream, subject=self.prefix + key, direct=self._direct)
        except nats.js.errors.NotFoundError:
            return None, 0
        if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
            return None, msg.seq
        return msg.data, msg.seq

    async def _write(self, key: str, data: bytes, last: int, ttl: float | None = None) -> int:
        """Compare-and-set: succeeds only if the key's latest revision is ``last`` (0: absent)."""
        self.stats["writes"] += 1
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
        use_ttl = ttl if (ttl and self._ttl_ok) else None
        try:
            ack = await self.js.publish(self.prefix + key, data, headers=headers, msg_ttl=use_ttl)
        except nats.js.errors.APIError as err:
            if err.err_code in _ERR_WRONG_LAST:
                self.stats["write_conflicts"] += 1
                raise Conflict(key) from None
            if err.err_code == _ERR_TTL_DISABLED and use_ttl:
                self._ttl_ok = False
                log.warning("per-message TTL disabled on the budget bucket; finished records are kept",
                            bucket=self.bucket)
                return await self._write(key, data, last)
            raise
        return ack.seq

    async def _purge(self, key: str, upto_revision: int | None = None) -> None:
        """Remove a key without leaving a marker; with ``upto_revision`` only if it is not newer."""
        self.stats["purges"] += 1
        seq = upto_revision + 1 if upto_revision else None
        await self.js.purge_stream(self.stream, subject=self.prefix + key, seq=seq)

    async def _cas(self, key: str, step: Callable[[ScopeState], StepResult],
                   ttl: float | None = None) -> StepResult:
        """Apply ``step`` to a scope ledger with compare-and-set, and return its result.

        Group commit: steps for one key queue up in this replica and one committer task per key
        applies all that are waiting, in order, to one state and writes it once. CAS conflicts
        therefore only happen between replicas; a lost race re-reads and re-applies the whole
        group (steps are pure functions of the state), with jittered exponential backoff. A step
        that returns ``applied=False`` changes nothing. The committer keeps the state it last
        wrote (and its revision): the next group writes on it without reading it back, the CAS
        failing if another replica wrote in between. A group in which no step applied, computed
        on such a remembered state, is recomputed on a fresh read (a refusal must be exact).
        A step gives up with :class:`LedgerBusy` ``budget_cas_deadline_seconds`` after it was queued.
        """
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = _KeyQueue()
        self._keys.move_to_end(key)
        fut: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        ks.waiting.append(_Step(step, fut, time.monotonic() + self.settings.budget_cas_deadline_seconds))
        if ks.task is None:
            ks.task = asyncio.create_task(self._committer(key, ks, ttl), name=f"budget:commit:{key}")
        return await fut

    async def _committer(self, key: str, ks: "_KeyQueue", ttl: float | None) -> None:
        attempt = 0
        group: list[_Step] = []
        try:
            while ks.waiting:
                group = ks.waiting[:_GROUP_MAX]
                del ks.waiting[:_GROUP_MAX]
                group = [g for g in group if not g.fut.done()]       # a caller gave up (cancelled)
                if not group:
                    continue
                try:
                    results = await self._commit(key, ks, group, ttl)
                except Conflict:
                    metrics.BUDGET_CAS_CONFLICTS.inc()
                    self.stats["cas_conflicts"] += 1
                    attempt += 1
                    now = time.monotonic()
                    alive = []
                    for g in group:
                        if now > g.deadline:
                            g.fut.set_exception(LedgerBusy(
                                f"{key} contended for {self.settings.budget_cas_deadline_seconds}s"))
                        else:
                            alive.append(g)
                    ks.waiting[:0] = alive          # retried first, with whatever queued meanwhile
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * (2 ** min(attempt, 7)))))
                    continue
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
                    for g in group:
                        if not g.fut.done():
                            g.fut.set_exception(exc)
                    continue
                attempt = 0
                for g, r in zip(group, results):
                    if not g.fut.done():
                        g.fut.set_result(r)
        except BaseException as exc:            # cancelled: nobody may wait forever
            for g in group + ks.waiting:
                if not g.fut.done():
                    g.fut.set_exception(exc if isinstance(exc, Exception) else LedgerBusy("ledger stopped"))
            ks.waiting.clear()
            ks.cached = None
            raise
        finally:
            ks.task = None
            self._evict()

    async def _commit(self, key: str, ks: "_KeyQueue", group: list["_Step"],
                      ttl: float | None) -> list[StepResult]:
        """One attempt of a group: (remembered or fresh) state, every step, one CAS write.

        A remembered state that turned out stale is retried at once on a fresh read (that was
        no contention, only another replica's write), and the next groups of this key read first
        (``_DISTRUST``, doubling up to ``_DISTRUST_MAX`` while it keeps happening, back to
        ``_DISTRUST`` once a remembered state was right), so replicas taking turns on a key do
        not waste a write each time."""
        cached, ks.cached = ks.cached, None
        if ks.distrust > 0:
            ks.distrust -= 1
            cached = None
        while True:
            if cached is not None:
                state, rev = cached
            else:
                data, rev = await self._get(key)
                state = ScopeState.decode(key, data)
            results = []
            applied = False
            for g in group:
                r = g.step(state)
                applied = applied or r.applied
                r.state = state.snapshot()
                results.append(r)
            self.stats["groups"] += 1
            self.stats["steps"] += len(group)
            if applied:
                break
            if cached is None:
                ks.cached = (state, rev)
                return results
            cached = None            # nothing to write: decide on what is really there
        state.prune(self.clock(), self.settings.budget_marker_seconds)
        try:
            rev = await self._write(key, state.encode(), rev, ttl)     # Conflict: the caller retries
        except Conflict:
            if cached is None:
                raise
            metrics.BUDGET_CAS_CONFLICTS.inc()
            self.stats["cas_conflicts"] += 1
            ks.distrust = max(ks.distrust_next, _DISTRUST)
            ks.distrust_next = min(2 * ks.distrust, _DISTRUST_MAX)
            return await self._commit(key, ks, group, ttl)
        if cached is not None:
            ks.distrust_next = _DISTRUST
        ks.cached = (state, rev)
        return results

    def _evict(self) -> None:
        """Past ``_KEYS_MAX`` keys, forget idle ones (least recently used first) down to 3/4 of it."""
        if len(self._keys) <= _KEYS_MAX:
            return
        for k in list(self._keys):
            if len(self._keys) <= _KEYS_MAX * 3 // 4:
                break
            ks = self._keys[k]
            if ks.task is None and not ks.waiting:
                del self._keys[k]

    async def close(self) -> None:
        """Stop the committers (their callers get an error)."""
        tasks = [ks.task for ks in self._keys.values() if ks.task is not None]
        if self._limits_task is not None:
            tasks.append(self._limits_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ttl_for(self, key: str) -> float | None:
        if key.startswith("mission.") and self.settings.budget_mission_retention_seconds > 0:
            return self.settings.budget_mission_retention_seconds
        return None

    async def _load(self, rid: str, *, res_first: bool = False) -> tuple[Record | None, int, str]:
        """The reservation: (record, revision, "res" | "done" | ""). Both keys are read at once;
        with ``res_first`` (settle, release: the record is usually unfinished) ``done.<id>`` only
        when ``res.<id>`` is absent (finalize writes ``done`` before it purges ``res``)."""
        if res_first:
            res, rrev = await self._get(res_key(rid))
            if res is not None:
                return Record.decode(res), rrev, "res"
            done, drev = await self._get(done_key(rid))
        else:
            (res, rrev), (done, drev) = await asyncio.gather(self._get(res_key(rid)), self._get(done_key(rid)))
        if res is not None:
            return Record.decode(res), rrev, "res"
        if done is not None:
            return Record.decode(done), drev, "done"
        return None, rrev, ""

    # ---------------------------------------------------------------------- limits
    async def global_limits(self) -> dict[str, Limit]:
        """The daily and monthly limits, from a read that started after this call did (so a
        SetLimit answered before is seen). Concurrent callers share one: while a read is under
        way, the callers that arrive meanwhile wait for it and then share the next one."""
        fut = self._limits_next
        if fut is None:
            fut = self._limits_next = asyncio.get_running_loop().create_future()
            if self._limits_task is None:
                self._limits_task = asyncio.create_task(self._limits_reader(), name="budget:limits")
        return await asyncio.shield(fut)

    async def _limits_reader(self) -> None:
        fut = None
        try:
            while self._limits_next is not None:
                fut, self._limits_next = self._limits_next, None
                try:
                    limits = await self._read_limits()
                except Exception as exc:  # noqa: BLE001 - handed to the callers
                    fut.set_exception(exc)
                    fut.exception()         # retrieved here too: no "never retrieved" when nobody waits
                else:
                    fut.set_result(limits)
        except BaseException:               # cancelled: nobody may wait forever
            for f in (fut, self._limits_next):
                if f is not None and not f.done():
                    f.set_exception(LedgerBusy("ledger stopped"))
                    f.exception()
            self._limits_next = None
            raise
        finally:
            self._limits_task = None

    async def _read_limits(self) -> dict[str, Limit]:
        (d, _), (m, _) = await asyncio.gather(self._get(LIMITS_KEY[DAILY]), self._get(LIMITS_KEY[MONTHLY]))
        s = self.settings
        return {
            DAILY: _override(d, Limit(usd_to_nusd(s.budget_daily_usd), s.budget_daily_tokens)),
            MONTHLY: _override(m, Limit(usd_to_nusd(s.budget_monthly_usd), s.budget_monthly_tokens)),
        }

    def mission_limit(self, state: ScopeState) -> Limit:
        s = self.settings
        return Limit(state.limit_nusd if state.limit_nusd is not None else usd_to_nusd(s.budget_mission_usd),
                     state.limit_tokens if state.limit_tokens is not None else s.budget_mission_tokens)

    def _limit_fn(self, globals_: dict[str, Limit]) -> Callable[[ScopeState], Limit]:
        def limit_of(state: ScopeState) -> Limit:
            return self.mission_limit(state) if state.scope == MISSION else globals_[state.scope]
        return limit_of

    # ----------------------------------------------------------------- scope steps
    def _reserve_step(self, rid: str, nusd: int, tokens: int, limit_of, now: float):
        ratio = self.settings.budget_warning_ratio

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
            if state.scope == MISSION and not state.warned and past_warning(state, limit, ratio):
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
    def _release_step(self, rid: str, limit_of, now: float, *, marked: bool = True):
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

    def _settle_step(self, rid: str, nusd: int, tokens: int, limit_of, now: float, *, marked: bool = True):
        ratio = self.settings.budget_warning_ratio

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
            if state.scope == MISSION and not state.warned and past_warning(state, limit, ratio):
                state.warned = warn_first = True
            return StepResult(state, limit, applied=True, warn_first=warn_first, over=over_limit(state, limit))
        return step

    # --------------------------------------------------------------------- reserve
    async def reserve(self, req: budget_pb2.ReserveRequest) -> tuple[budget_pb2.ReserveReply, Effects]:
        eff = Effects()
        rid = req.reservation_id
        s = self.settings
        price = self.pricing.price(req.model)
        nusd = price.cost_nusd(req.input_tokens, req.max_output_tokens)
        tokens = req.input_tokens + req.max_output_tokens
        eff.span["coo.cost.usd"] = nusd_to_usd(nusd)
        ttl = min(float(req.ttl_seconds) if req.ttl_seconds > 0 else s.budget_reservation_ttl_seconds,
                  s.budget_max_reservation_ttl_seconds)
        for _ in range(5):
            (existing, rev, _where), globals_ = await asyncio.gather(self._load(rid), self.global_limits())
            if existing is not None:
                return await self._reserve_existing(existing), eff
            now = self.clock()
            rec = Record(id=rid, mission_id=req.mission_id, state=PENDING, model=req.model, task_id=req.task_id,
                         role=req.role, reserved_nusd=nusd, reserved_tokens=tokens,
                         scopes=[mission_key(req.mission_id), day_key(now), month_key(now)],
                         created_at=now, expires_at=now + ttl, updated_at=now)
            try:
                rev = await self._write(res_key(rid), rec.encode(), rev)
                break
            except Conflict:
                continue        # a concurrent retry of the same request created it: answer from it
        else:
            raise LedgerBusy(f"reservation {rid} contended")

        limit_of = self._limit_fn(globals_)
        # Scopes with a limit in order (mission, day, month), each only after the one before
        # granted: a reservation that a later scope refuses must not hold an earlier one in the
        # meantime, or it could refuse others there that fit. A scope without any limit can't
        # refuse, so it goes along with the first.
        step = self._reserve_step(rid, nusd, tokens, limit_of, now)
        unlimited = {k for k in rec.scopes[1:] if globals_.get(scope_of(k), Limit(1, 1)) == Limit(0, 0)}
        stages = [[rec.scopes[0], *[k for k in rec.scopes[1:] if k in unlimited]]] + \
                 [[k] for k in rec.scopes[1:] if k not in unlimited]
        by_key: dict[str, StepResult] = {}
        for stage in stages:
            for k, r in zip(stage, await _all(self._cas(k, step, self._ttl_for(k)) for k in stage)):
                by_key[k] = r
            if any(by_key[k].refused or by_key[k].closed for k in stage):
                break
        results = [by_key[k] for k in rec.scopes if k in by_key]
        keys_done = [k for k in rec.scopes if k in by_key]
        refused = next((r for r in results if r.refused), None)
        if refused is not None or any(r.closed for r in results):
            applied = [(k, r) for k, r in zip(keys_done, results) if r.applied]
            backs = await _all(self._cas(k, self._release_step(rid, limit_of, self.clock()), self._ttl_for(k))
                               for k, _ in applied)
            for back in backs:
                eff.touched.append((back.state, back.limit))
            if refused is None:
                # A scope remembers closing this id: either it was released or settled while we
                # were making it (the record moved on), or an earlier request with this id was
                # refused and rolled back moments ago: never grant it half-counted.
                cur, crev, where = await self._load(rid)
                if cur is not None and where == "res" and crev == rev and cur.state == PENDING:
                    await self._purge(res_key(rid), rev)
                    return budget_pb2.ReserveReply(
                        ok=False, reservation_id=rid,
                        reason="refused (an earlier request with this reservation id was refused)"), eff
                if cur is not None and where == "res" and cur.state in (SETTLING, RELEASING):
                    cur = await self._drive(cur, crev, Effects(), globals_)
                return await self._reserve_existing(cur) if cur else budget_pb2.ReserveReply(
                    ok=False, reservation_id=rid, reason="reservation released while it was being made"), eff
            await self._purge(res_key(rid), rev)
            eff.touched.append((refused.state, refused.limit))
            eff.events.extend(self._warning_event(rec.mission_id, x) for x in results if x.warn_first)
            return self._refusal(rec, refused, eff), eff

        rec.state = RESERVED
        rec.updated_at = self.clock()
        rec.remaining_nusd, rec.remaining_tokens, rec.warning = self._summary(results)
        try:
            await self._write(res_key(rid), rec.encode(), rev)
        except Conflict:
            # released or settled (e.g. expired by a sweeper) while we were reserving
            cur, crev, where = await self._load(rid)
            if cur is not None and where == "res" and cur.state in (SETTLING, RELEASING):
                cur = await self._drive(cur, crev, Effects())
            return await self._reserve_existing(cur) if cur else budget_pb2.ReserveReply(
                ok=False, reservation_id=rid, reason="reservation released while it was being made"), eff
        for r in results:
            eff.touched.append((r.state, r.limit))
            if r.warn_first:
                eff.events.append(self._warning_event(rec.mission_id, r))
        return self._reserve_reply(rec), eff

    async def _reserve_existing(self, rec: Record) -> budget_pb2.ReserveReply:
        """A retried reserve: answer from the record, never reserve twice."""
        waited = 0.0
        while rec.state == PENDING and waited < 2.0:
            await asyncio.sleep(0.05)
            waited += 0.05
            cur, _, _ = await self._load(rec.id)
            if cur is None:   # the first attempt was refused and rolled back
                return budget_pb2.ReserveReply(ok=False, reservation_id=rec.id,
                                               reason="refused (a concurrent identical request was refused)")
            rec = cur
        if rec.state == PENDING:
            return budget_pb2.ReserveReply(ok=False, reservation_id=rec.id,
                                           reason="the same reservation is being made by another request; retry")
        if rec.state in (RELEASING, RELEASED):
            return budget_pb2.ReserveReply(ok=False, reservation_id=rec.id,
                                           reason=f"reservation already released ({rec.reason or 'released'})")
        return self._reserve_reply(rec)

    def _reserve_reply(self, rec: Record) -> budget_pb2.ReserveReply:
        return budget_pb2.ReserveReply(
            ok=True, reservation_id=rec.id, reserved_usd=nusd_to_usd(rec.reserved_nusd),
            reserved_tokens=rec.reserved_tokens,
            remaining_usd=nusd_to_usd(rec.remaining_nusd) if rec.remaining_nusd is not None else -1.0,
            remaining_tokens=rec.remaining_tokens if rec.remaining_tokens is not None else -1,
            expires_at=timestamp(rec.expires_at), warning=rec.warning)

    def _refusal(self, rec: Record, r: StepResult, eff: Effects) -> budget_pb2.ReserveReply:
        scope = r.state.scope
        if r.refused == "usd":
            limit = nusd_to_usd(r.limit.nusd)
            reason = (f"{scope} budget exceeded ({r.state.key}): this call needs ${nusd_to_usd(r.need):.6f}, "
                      f"${nusd_to_usd(r.available):.6f} of ${limit:.2f} left")
        else:
            reason = (f"{scope} token budget exceeded ({r.state.key}): this call needs {r.need} tokens, "
                      f"{r.available} of {r.limit.tokens} left")
        eff.exceeded.append(scope)
        eff.span["coo.budget.scope"] = scope
        rem_usd, rem_tok = remaining(r.state, r.limit)
        eff.events.append(Event(
            mission_id=rec.mission_id, type="budget.exceeded", level="warning", message=reason,
            event_id=f"budget-exceeded-{rec.id}",
            attributes={"scope": scope, "reservation_id": rec.id, "model": rec.model, "task_id": rec.task_id,
                        "role": rec.role, "unit": r.refused, "requested_usd": f"{nusd_to_usd(rec.reserved_nusd):.6f}",
                        "requested_tokens": str(rec.reserved_tokens)}))
        log.warning("reservation refused", reservation_id=rec.id, mission_id=rec.mission_id, scope=scope,
                    reason=reason)
        return budget_pb2.ReserveReply(
            ok=False, reservation_id=rec.id, reason=reason, scope=SCOPE_ENUM[scope],
            remaining_usd=nusd_to_usd(max(0, rem_usd)) if rem_usd is not None else -1.0,
            remaining_tokens=max(0, rem_tok) if rem_tok is not None else -1)

    def _summary(self, results: list[StepResult]) -> tuple[int | None, int | None, bool]:
        rem_usd: int | None = None
        rem_tok: int | None = None
        warning = False
        for r in results:
            u, t = remaining(r.state, r.limit)
            if u is not None:
                rem_usd = u if rem_usd is None else min(rem_usd, u)
            if t is not None:
                rem_tok = t if rem_tok is None else min(rem_tok, t)
            warning = warning or past_warning(r.state, r.limit, self.settings.budget_warning_ratio)
        return (max(0, rem_usd) if rem_usd is not None else None,
                max(0, rem_tok) if rem_tok is not None else None, warning)

    def _warning_event(self, mission_id: str, r: StepResult) -> Event:
        usd, tokens = r.state.committed()
        return Event(
            mission_id=mission_id, type="budget.warning", level="warning",
            message=(f"mission budget {self.settings.budget_warning_ratio:.0%} used: "
                     f"${nusd_to_usd(usd):.4f} of ${nusd_to_usd(r.limit.nusd):.2f} spent or reserved"
                     if r.limit.nusd else f"mission token budget {self.settings.budget_warning_ratio:.0%} used: "
                     f"{tokens} of {r.limit.tokens} tokens"),
            event_id=f"budget-warning-{mission_id}",
            attributes={"scope": MISSION, "spent_usd": f"{nusd_to_usd(r.state.spent_nusd):.6f}",
                        "reserved_usd": f"{nusd_to_usd(r.state.reserved_nusd):.6f}",
                        "limit_usd": f"{nusd_to_usd(r.limit.nusd):.6f}", "limit_tokens": str(r.limit.tokens)})

    # ---------------------------------------------------------------------- driving
    async def _drive(self, rec: Record, rev: int, eff: Effects,
                     globals_: dict[str, Limit] | None = None) -> Record:
        """Finish a settling/releasing record: idempotent per-scope steps (the scopes at once),
        then finalize."""
        if globals_ is None:
            globals_ = await self.global_limits()
        limit_of = self._limit_fn(globals_)
        now = self.clock()
        if rec.state == RELEASING:
            for r in await _all(self._cas(key, self._release_step(rec.id, limit_of, now, marked=not rec.complete),
                                          self._ttl_for(key)) for key in rec.scopes):
                eff.touched.append((r.state, r.limit))
            rec.state = RELEASED
            rec.released_nusd = 0 if rec.late else rec.reserved_nusd
        elif rec.state == SETTLING:
            results = await _all(
                self._cas(key, self._settle_step(rec.id, rec.cost_nusd, rec.settle_tokens, limit_of, now,
                                                 marked=not rec.complete),
                          self._ttl_for(key)) for key in rec.scopes)
            for r in results:
                eff.touched.append((r.state, r.limit))
                if r.over and not rec.over_limit:
                    rec.over_limit, rec.over_scope = True, r.state.scope
                if r.over and r.applied:
                    eff.exceeded.append(r.state.scope)
                if r.warn_first:
                    eff.events.append(self._warning_event(rec.mission_id, r))
            rec.remaining_nusd, rec.remaining_tokens, rec.warning = self._summary(results)
            rec.state = SETTLED
            if rec.over_limit and any(r.applied and r.over for r in results):
                usd, _ = results[[r.state.scope for r in results].index(rec.over_scope)].state.committed()
                message = (f"usage took the {rec.over_scope} budget past its limit: this call cost "
                           f"${nusd_to_usd(rec.cost_nusd):.6f}"
                           + ("" if rec.unreserved else f" (reserved ${nusd_to_usd(rec.reserved_nusd):.6f})"))
                eff.events.append(Event(
                    mission_id=rec.mission_id, type="budget.exceeded", level="warning", message=message,
                    event_id=f"budget-over-{rec.id}",
                    attributes={"scope": rec.over_scope, "reservation_id": rec.id, "over_limit": "true",
                                "cost_usd": f"{nusd_to_usd(rec.cost_nusd):.6f}",
                                "committed_usd": f"{nusd_to_usd(usd):.6f}"}))
                log.warning("settlement over the limit", reservation_id=rec.id, mission_id=rec.mission_id,
                            scope=rec.over_scope, cost_usd=nusd_to_usd(rec.cost_nusd))
        else:
            raise ValueError(f"cannot drive a {rec.state} reservation")
        rec.updated_at = self.clock()
        return await self._finalize(rec, rev)

    async def _finalize(self, rec: Record, rev: int) -> Record:
        key = done_key(rec.id)
        final = rec
        for attempt in range(20):
            if attempt == 0:
                data, drev = None, 0    # usually absent: write without reading first (CAS says if not)
            else:
                data, drev = await self._get(key)
            if data is not None:
                cur = Record.decode(data)
                if cur.state == SETTLED or cur.state == rec.state:
                    final = cur
                    break
            try:
                await self._write(key, rec.encode(), drev, self.settings.budget_record_retention_seconds)
                break
            except Conflict:
                continue
        else:   # leave res.<id> in place: the sweeper finishes it later
            raise LedgerBusy(f"{key} contended")
        await self._purge(res_key(rec.id), rev)
        return final

    # ----------------------------------------------------------------------- settle
    async def settle(self, req: budget_pb2.SettleRequest) -> tuple[budget_pb2.SettleReply, Effects]:
        eff = Effects()
        rid = req.reservation_id
        for _ in range(10):
            (rec, rev, where), globals_ = await asyncio.gather(self._load(rid, res_first=True), self.global_limits())
            now = self.clock()
            if rec is not None and rec.state == SETTLED:
                break
            if rec is not None and where == "res" and rec.state in (SETTLING, RELEASING):
                await self._drive(rec, rev, eff, globals_)   # finish what another request left half-done
                continue
            model = req.model or (rec.model if rec else "")
            cost = self.pricing.cost_nusd(model, req.input_tokens, req.output_tokens)
            if rec is None or rec.state == RELEASED:
                # late (after release/expiry) or without a reservation: the usage still counts
                if rec is None:
                    rec = Record(id=rid, mission_id=req.mission_id, state=SETTLING, model=model, unreserved=True,
                                 scopes=[mission_key(req.mission_id), day_key(now), month_key(now)],
                                 created_at=now, expires_at=now)
                    log.warning("settlement without a reservation on record", reservation_id=rid,
                                mission_id=req.mission_id)
                rec.late, rec.complete = True, False
                last = rev if where != "done" else 0
            else:   # pending or reserved
                last = rev
                rec.complete = rec.state == RESERVED
            rec.state, rec.cost_nusd, rec.settle_model = SETTLING, cost, model
            rec.input_tokens, rec.output_tokens, rec.updated_at = req.input_tokens, req.output_tokens, now
            try:
                rev = await self._write(res_key(rid), rec.encode(), last)
            except Conflict:
                continue
            rec = await self._drive(rec, rev, eff, globals_)
            break
        else:
            raise LedgerBusy(f"reservation {rid} contended")
        if rec.over_limit:
            eff.span["coo.budget.scope"] = rec.over_scope
        eff.span["coo.cost.usd"] = nusd_to_usd(rec.cost_nusd)
        reason = ""
        if rec.unreserved:
            reason = "settled without a reservation; usage charged"
        elif rec.late:
            reason = "the reservation had expired or been released; usage charged"
        return budget_pb2.SettleReply(
            ok=True, cost_usd=nusd_to_usd(rec.cost_nusd), reason=reason, over_limit=rec.over_limit,
            scope=SCOPE_ENUM.get(rec.over_scope, budget_pb2.BUDGET_SCOPE_UNSPECIFIED),
            remaining_usd=nusd_to_usd(rec.remaining_nusd) if rec.remaining_nusd is not None else -1.0,
            remaining_tokens=rec.remaining_tokens if rec.remaining_tokens is not None else -1,
            warning=rec.warning), eff

    # ---------------------------------------------------------------------- release
    async def release(self, req: budget_pb2.ReleaseRequest) -> tuple[budget_pb2.ReleaseReply, Effects]:
        eff = Effects()
        rid = req.reservation_id
        for _ in range(10):
            (rec, rev, where), globals_ = await asyncio.gather(self._load(rid, res_first=True), self.global_limits())
            if rec is None:
                return budget_pb2.ReleaseReply(ok=True, reason="unknown reservation; nothing to release"), eff
            if rec.state == SETTLED:
                return budget_pb2.ReleaseReply(ok=True, reason="already settled"), eff
            if rec.state == RELEASED:
                return budget_pb2.ReleaseReply(ok=True, reason="already released",
                                               released_usd=nusd_to_usd(rec.released_nusd)), eff
            if rec.state in (SETTLING, RELEASING):
                await self._drive(rec, rev, eff, globals_)
                continue
            rec.complete = rec.state == RESERVED
            rec.state, rec.reason, rec.updated_at = RELEASING, req.reason or "released", self.clock()
            try:
                rev = await self._write(res_key(rid), rec.encode(), rev)
            except Conflict:
                continue
            final = await self._drive(rec, rev, eff, globals_)
            eff.span["coo.cost.usd"] = nusd_to_usd(final.released_nusd)
            return budget_pb2.ReleaseReply(ok=True, released_usd=nusd_to_usd(final.released_nusd)), eff
        raise LedgerBusy(f"reservation {rid} contended")

    # -------------------------------------------------------------------- set limit
    async def set_limit(self, req: budget_pb2.SetLimitRequest) -> tuple[budget_pb2.SetLimitReply, Effects]:
        eff = Effects()
        now = self.clock()
        usd = usd_to_nusd(req.limit_usd) if req.HasField("limit_usd") else None
        tokens = req.limit_tokens if req.HasField("limit_tokens") else None
        scope = SCOPE_NAME[req.scope]
        if scope == MISSION:
            def step(state: ScopeState) -> StepResult:
                if usd is not None:
                    state.limit_nusd = usd
                if tokens is not None:
                    state.limit_tokens = tokens
                state.updated_at = now
                return StepResult(state, self.mission_limit(state), applied=True)
            key = mission_key(req.mission_id)
            r = await self._cas(key, step, self._ttl_for(key))
            status = self.scope_status(r.state, r.limit)
        else:
            key = LIMITS_KEY[scope]
            for _ in range(50):
                data, rev = await self._get(key)
                cur = json.loads(data) if data else {"limit_nusd": None, "limit_tokens": None}
                if usd is not None:
                    cur["limit_nusd"] = usd
                if tokens is not None:
                    cur["limit_tokens"] = tokens
                cur.update(requested_by=req.requested_by, updated_at=now)
                try:
                    await self._write(key, json.dumps(cur).encode(), rev)
                    break
                except Conflict:
                    metrics.BUDGET_CAS_CONFLICTS.inc()
                    await asyncio.sleep(random.uniform(0, 0.01))
            else:
                raise LedgerBusy(f"{key} contended")
            period = day_key(now) if scope == DAILY else month_key(now)
            data, _ = await self._get(period)
            state = ScopeState.decode(period, data)
            limit = (await self.global_limits())[scope]
            status = self.scope_status(state, limit)
            eff.touched.append((state, limit))
        eff.span["coo.budget.scope"] = scope
        log.info("budget limit set", scope=scope, mission_id=req.mission_id or None,
                 limit_usd=req.limit_usd if usd is not None else None,
                 limit_tokens=tokens, requested_by=req.requested_by or None)
        return budget_pb2.SetLimitReply(ok=True, status=status), eff

    # ----------------------------------------------------------------------- status
    def scope_status(self, state: ScopeState, limit: Limit) -> budget_pb2.ScopeStatus:
        rem_usd, rem_tok = remaining(state, limit)
        return budget_pb2.ScopeStatus(
            scope=SCOPE_ENUM[state.scope], key=state.key, limit_usd=nusd_to_usd(limit.nusd),
            limit_tokens=limit.tokens, spent_usd=nusd_to_usd(state.spent_nusd), spent_tokens=state.spent_tokens,
            reserved_usd=nusd_to_usd(state.reserved_nusd), reserved_tokens=state.reserved_tokens,
            remaining_usd=nusd_to_usd(max(0, rem_usd)) if rem_usd is not None else 0.0,
            remaining_tokens=max(0, rem_tok) if rem_tok is not None else 0,
            reservations=len(state.open), updated_at=timestamp(state.updated_at or self.clock()))

    async def scopes(self, mission_id: str = "") -> list[tuple[ScopeState, Limit]]:
        now = self.clock()
        keys = ([mission_key(mission_id)] if mission_id else []) + [day_key(now), month_key(now)]
        values, globals_ = await asyncio.gather(asyncio.gather(*(self._get(k) for k in keys)), self.global_limits())
        limit_of = self._limit_fn(globals_)
        out = []
        for key, (data, _) in zip(keys, values):
            state = ScopeState.decode(key, data)
            out.append((state, limit_of(state)))
        return out

    async def status(self, req: budget_pb2.BudgetStatusRequest) -> budget_pb2.BudgetStatusReply:
        return budget_pb2.BudgetStatusReply(
            ok=True, scopes=[self.scope_status(s, lim) for s, lim in await self.scopes(req.mission_id)])

    # ----------------------------------------------------------------------- sweeper
    async def scan(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """A snapshot of the latest values under ``prefix`` (e.g. ``res.>``)."""
        if self._kv is None:
            self._kv = await self.js.key_value(self.bucket)
        return [(e.key, e.value, e.revision) for e in await kvscan.latest(self.js, self._kv, prefix) if e.value]

    async def sweep(self) -> tuple[int, Effects]:
        """Release expired reservations and finish half-done ones. Returns how many expired."""
        eff = Effects()
        expired = 0
        now = self.clock()
        globals_ = None
        for key, data, rev in await self.scan("res.>"):
            try:
                rec = Record.decode(data)
            except (ValueError, TypeError) as exc:
                log.error("unreadable reservation record", key=key, error=str(exc))
                continue
            try:
                if rec.state in (PENDING, RESERVED):
                    deadline = rec.expires_at
                    if rec.state == PENDING:
                        # nothing granted yet: a reserve still running gets time to finish (it
                        # takes at most three contended compare-and-sets, each given up
                        # budget_cas_deadline_seconds after it was queued); older means its replica died
                        deadline = rec.created_at + self.settings.budget_stuck_seconds + \
                            3 * self.settings.budget_cas_deadline_seconds
                    if now < deadline:
                        continue
                    rec.complete = rec.state == RESERVED
                    rec.state, rec.reason, rec.updated_at = RELEASING, "expired", now
                    try:
                        rev = await self._write(key, rec.encode(), rev)
                    except Conflict:
                        continue       # settled, released or expired by someone else meanwhile
                    expired += 1
                    metrics.BUDGET_EXPIRED.inc()
                    log.warning("orphaned reservation expired; amount returned", reservation_id=rec.id,
                                mission_id=rec.mission_id, reserved_usd=nusd_to_usd(rec.reserved_nusd),
                                age_seconds=round(now - rec.created_at, 3), task_id=rec.task_id or None)
                    globals_ = globals_ or await self.global_limits()
                    await self._drive(rec, rev, eff, globals_)
                elif rec.state in (SETTLING, RELEASING) and now - rec.updated_at >= self.settings.budget_stuck_seconds:
                    log.warning("finishing a half-done budget operation", reservation_id=rec.id, state=rec.state,
                                mission_id=rec.mission_id)
                    globals_ = globals_ or await self.global_limits()
                    await self._drive(rec, rev, eff, globals_)
            except LedgerBusy as exc:
                log.warning("sweeper skipped a contended reservation", reservation_id=rec.id, error=str(exc))
        return expired, eff


async def _all(coros) -> list:
    """Await all (concurrently); the first error is raised once every one has finished, so no
    step is left running behind the caller's back."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _override(data: bytes | None, default: Limit) -> Limit:
    if not data:
        return default
    raw = json.loads(data)
    usd, tokens = raw.get("limit_nusd"), raw.get("limit_tokens")
    return Limit(default.nusd if usd is None else int(usd), default.tokens if tokens is None else int(tokens))

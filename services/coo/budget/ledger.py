"""The budget ledger: the reservation protocol over the KV store, one method per request.

The parts: :mod:`coo.budget.model` (keys, values, limits and transitions; no I/O),
:mod:`coo.budget.store` (compare-and-set writes, per-message TTL, reads, the group committer),
:mod:`coo.budget.replies` (protobuf replies). :class:`Ledger` takes a request, drives the model's
steps through the store, and answers with a reply and the :class:`Effects` (timeline events,
gauges, span attributes) the service applies.

No replica holds a lock: a limit is checked inside the same compare-and-set that adds the
amount, so no interleaving of replicas can pass it; a write that lost a race is re-read,
recomputed and retried (:mod:`coo.common.retry`; ``coo_budget_cas_conflicts_total``).

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
import time
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext

from coo.budget import metrics, replies
from coo.budget.model import (
    DAILY,
    FINAL,
    LIMITS_KEY,
    MISSION,
    MONTHLY,
    PENDING,
    RELEASED,
    RELEASING,
    RESERVED,
    SETTLED,
    SETTLING,
    Effects,
    Event,
    Limit,
    Record,
    ScopeState,
    Step,
    StepResult,
    begin_release,
    begin_settle,
    day_key,
    done_key,
    expiry_deadline,
    limit_fn,
    mark_settled,
    mission_key,
    mission_limit_step,
    month_key,
    new_reservation,
    over_limit_event,
    override,
    refusal_event,
    refusal_reason,
    release_step,
    res_key,
    reserve_stages,
    reserve_step,
    safe_id,
    scope_of,
    set_override,
    settle_reason,
    settle_step,
    summary,
    unreserved_settlement,
    unsafe_id,
    warning_event,
)
from coo.budget.pricing import Pricing, nusd_to_usd, usd_to_nusd
from coo.budget.settings import BudgetSettings
from coo.budget.store import KEYS_MAX, Conflict, LedgerBusy, LedgerStore, SharedRead
from coo.common import topology
from coo.common.retry import Policy
from coo.common.telemetry import get_logger
from coo.v1 import budget_pb2

__all__ = [
    "DAILY", "FINAL", "MISSION", "MONTHLY", "PENDING", "RELEASED", "RELEASING", "RESERVED", "SETTLED", "SETTLING",
    "Conflict", "Effects", "Event", "Ledger", "LedgerBusy", "Limit", "Record", "ScopeState", "StepResult",
    "day_key", "done_key", "mission_key", "month_key", "res_key", "safe_id", "scope_of", "unsafe_id",
]

log = get_logger("coo.budget.ledger")

#: scope keys whose last written state a replica remembers (read when a ledger is made)
_KEYS_MAX = KEYS_MAX

# A reservation record that changed under us is read again at once: the new state decides
# (answer from it, finish it, or write on it), so waiting would only add latency.
_CREATE_RETRY = Policy("budget reservation create", retry_on=Conflict, attempts=5, initial=0.0, level="debug",
                       logger=log)
_RECORD_RETRY = Policy("budget reservation update", retry_on=Conflict, attempts=10, initial=0.0, level="debug",
                       logger=log)
_FINALIZE_RETRY = Policy("budget reservation finalize", retry_on=Conflict, attempts=20, initial=0.0,
                         level="debug", logger=log)
# SetLimit of the day or month: concurrent SetLimits take turns (jittered, 10 ms growing to 50 ms).
_LIMITS_RETRY = Policy("budget limit update", retry_on=Conflict, attempts=50, initial=0.01, maximum=0.05,
                       level="debug", logger=log)


class Ledger:
    def __init__(self, js: JetStreamContext, settings: BudgetSettings, pricing: Pricing | None = None,
                 *, bucket: str = topology.BUCKET_BUDGET, clock: Callable[[], float] = time.time) -> None:
        self.js = js
        self.settings = settings
        self.pricing = pricing or Pricing.from_settings(settings)
        self.bucket = bucket
        self.clock = clock
        self.store = LedgerStore(js, bucket, cas_deadline=settings.budget_cas_deadline_seconds,
                                 marker_seconds=settings.budget_marker_seconds, clock=clock, keys_max=_KEYS_MAX)
        self.stream = self.store.stream
        self.stats = self.store.stats
        self._keys = self.store.keys
        self._get, self._write, self._purge, self._cas = (
            self.store.get, self.store.write, self.store.purge, self.store.cas)
        self._limits: SharedRead[dict[str, Limit]] = SharedRead(self._read_limits, "budget:limits")
        s = settings
        self._mission_default = Limit(usd_to_nusd(s.budget_mission_usd), s.budget_mission_tokens)
        self._ratio = s.budget_warning_ratio

    @classmethod
    async def open(cls, js: JetStreamContext, settings: BudgetSettings, pricing: Pricing | None = None,
                   **kwargs: Any) -> Ledger:
        """A ledger on an existing bucket (``Bus.ensure_topology`` creates it)."""
        ledger = cls(js, settings, pricing, **kwargs)
        await ledger.store.open()
        return ledger

    @property
    def _ttl_ok(self) -> bool:
        """Whether the bucket takes per-message TTLs (False once a write found it would not)."""
        return self.store.ttl_ok

    async def close(self) -> None:
        """Stop the committers (their callers get an error) and the shared limit reads."""
        await asyncio.gather(self.store.close(), self._limits.close())

    async def scan(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """A snapshot of the latest values under ``prefix`` (e.g. ``res.>``)."""
        return await self.store.scan(prefix)

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
        SetLimit answered before is seen); concurrent callers share one read."""
        return await self._limits.get()

    async def _read_limits(self) -> dict[str, Limit]:
        (d, _), (m, _) = await asyncio.gather(self._get(LIMITS_KEY[DAILY]), self._get(LIMITS_KEY[MONTHLY]))
        s = self.settings
        return {
            DAILY: override(d, Limit(usd_to_nusd(s.budget_daily_usd), s.budget_daily_tokens)),
            MONTHLY: override(m, Limit(usd_to_nusd(s.budget_monthly_usd), s.budget_monthly_tokens)),
        }

    def _limit_fn(self, globals_: dict[str, Limit]) -> Callable[[ScopeState], Limit]:
        return limit_fn(globals_, self._mission_default)

    def _reserve_step(self, rid: str, nusd: int, tokens: int, limit_of: Callable[[ScopeState], Limit],
                      now: float) -> Step:
        return reserve_step(rid, nusd, tokens, limit_of, now, self._ratio)

    def _settle_step(self, rid: str, nusd: int, tokens: int, limit_of: Callable[[ScopeState], Limit], now: float,
                     *, marked: bool = True) -> Step:
        return settle_step(rid, nusd, tokens, limit_of, now, self._ratio, marked=marked)

    def _warning_event(self, mission_id: str, r: StepResult) -> Event:
        return warning_event(mission_id, r, self._ratio)

    # --------------------------------------------------------------------- reserve
    async def reserve(self, req: budget_pb2.ReserveRequest) -> tuple[budget_pb2.ReserveReply, Effects]:
        eff = Effects()
        rid = req.reservation_id
        s = self.settings
        nusd = self.pricing.price(req.model).cost_nusd(req.input_tokens, req.max_output_tokens)
        tokens = req.input_tokens + req.max_output_tokens
        eff.span["coo.cost.usd"] = nusd_to_usd(nusd)
        ttl = min(float(req.ttl_seconds) if req.ttl_seconds > 0 else s.budget_reservation_ttl_seconds,
                  s.budget_max_reservation_ttl_seconds)

        async def create() -> tuple[Record, int, dict[str, Limit], bool]:
            (existing, rev, _where), globals_ = await asyncio.gather(self._load(rid), self.global_limits())
            if existing is not None:
                return existing, rev, globals_, False
            rec = new_reservation(rid, req.mission_id, model=req.model, task_id=req.task_id, role=req.role,
                                  nusd=nusd, tokens=tokens, ttl=ttl, now=self.clock())
            # Conflict: a concurrent retry of the same request created it: read again, answer from it
            return rec, await self._write(res_key(rid), rec.encode(), rev), globals_, True

        try:
            rec, rev, globals_, created = await _CREATE_RETRY.call(create)
        except Conflict as exc:
            raise LedgerBusy(f"reservation {rid} contended") from exc
        if not created:
            return await self._reserve_existing(rec), eff
        now = rec.created_at

        limit_of = self._limit_fn(globals_)
        step = self._reserve_step(rid, nusd, tokens, limit_of, now)
        by_key: dict[str, StepResult] = {}
        for stage in reserve_stages(rec.scopes, globals_):
            for k, r in zip(stage, await _all(self._cas(k, step, self._ttl_for(k)) for k in stage)):
                by_key[k] = r
            if any(by_key[k].refused or by_key[k].closed for k in stage):
                break
        results = [by_key[k] for k in rec.scopes if k in by_key]
        keys_done = [k for k in rec.scopes if k in by_key]
        refused = next((r for r in results if r.refused), None)
        if refused is not None or any(r.closed for r in results):
            applied = [(k, r) for k, r in zip(keys_done, results) if r.applied]
            backs = await _all(self._cas(k, release_step(rid, limit_of, self.clock()), self._ttl_for(k))
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
                    why = "refused (an earlier request with this reservation id was refused)"
                    return replies.refused(rid, why), eff
                if cur is not None and where == "res" and cur.state in (SETTLING, RELEASING):
                    cur = await self._drive(cur, crev, Effects(), globals_)
                return await self._reserve_existing(cur) if cur else replies.refused(
                    rid, "reservation released while it was being made"), eff
            await self._purge(res_key(rid), rev)
            eff.touched.append((refused.state, refused.limit))
            eff.events.extend(self._warning_event(rec.mission_id, x) for x in results if x.warn_first)
            return self._refusal(rec, refused, eff), eff

        rec.state = RESERVED
        rec.updated_at = self.clock()
        rec.remaining_nusd, rec.remaining_tokens, rec.warning = summary(results, self._ratio)
        try:
            await self._write(res_key(rid), rec.encode(), rev)
        except Conflict:
            # released or settled (e.g. expired by a sweeper) while we were reserving
            cur, crev, where = await self._load(rid)
            if cur is not None and where == "res" and cur.state in (SETTLING, RELEASING):
                cur = await self._drive(cur, crev, Effects())
            return await self._reserve_existing(cur) if cur else replies.refused(
                rid, "reservation released while it was being made"), eff
        for r in results:
            eff.touched.append((r.state, r.limit))
            if r.warn_first:
                eff.events.append(self._warning_event(rec.mission_id, r))
        return replies.reserved(rec), eff

    async def _reserve_existing(self, rec: Record) -> budget_pb2.ReserveReply:
        """A retried reserve: answer from the record, never reserve twice."""
        waited = 0.0
        while rec.state == PENDING and waited < 2.0:    # a wait for the first request, not a retry
            await asyncio.sleep(0.05)
            waited += 0.05
            cur, _, _ = await self._load(rec.id)
            if cur is None:   # the first attempt was refused and rolled back
                return replies.refused(rec.id, "refused (a concurrent identical request was refused)")
            rec = cur
        if rec.state == PENDING:
            return replies.refused(rec.id, "the same reservation is being made by another request; retry")
        if rec.state in (RELEASING, RELEASED):
            return replies.refused(rec.id, f"reservation already released ({rec.reason or 'released'})")
        return replies.reserved(rec)

    def _refusal(self, rec: Record, r: StepResult, eff: Effects) -> budget_pb2.ReserveReply:
        scope = r.state.scope
        reason = refusal_reason(r)
        eff.exceeded.append(scope)
        eff.span["coo.budget.scope"] = scope
        eff.events.append(refusal_event(rec, r, reason))
        log.warning("reservation refused", reservation_id=rec.id, mission_id=rec.mission_id, scope=scope,
                    reason=reason)
        return replies.refused_by_limit(rec.id, r, reason)

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
            for r in await _all(self._cas(key, release_step(rec.id, limit_of, now, marked=not rec.complete),
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
                if r.over and r.applied:
                    eff.exceeded.append(r.state.scope)
                if r.warn_first:
                    eff.events.append(self._warning_event(rec.mission_id, r))
            mark_settled(rec, results, self._ratio)
            if rec.over_limit and any(r.applied and r.over for r in results):
                usd, _ = results[[r.state.scope for r in results].index(rec.over_scope)].state.committed()
                eff.events.append(over_limit_event(rec, usd))
                log.warning("settlement over the limit", reservation_id=rec.id, mission_id=rec.mission_id,
                            scope=rec.over_scope, cost_usd=nusd_to_usd(rec.cost_nusd))
        else:
            raise ValueError(f"cannot drive a {rec.state} reservation")
        rec.updated_at = self.clock()
        return await self._finalize(rec, rev)

    async def _finalize(self, rec: Record, rev: int) -> Record:
        key = done_key(rec.id)
        tries = 0

        async def write_done() -> Record:
            nonlocal tries
            tries += 1
            if tries == 1:
                data, drev = None, 0    # usually absent: write without reading first (CAS says if not)
            else:
                data, drev = await self._get(key)
            if data is not None:
                cur = Record.decode(data)
                if cur.state == SETTLED or cur.state == rec.state:
                    return cur
            await self._write(key, rec.encode(), drev, self.settings.budget_record_retention_seconds)
            return rec

        try:
            final = await _FINALIZE_RETRY.call(write_done)
        except Conflict as exc:   # leave res.<id> in place: the sweeper finishes it later
            raise LedgerBusy(f"{key} contended") from exc
        await self._purge(res_key(rec.id), rev)
        return final

    # ----------------------------------------------------------------------- settle
    async def settle(self, req: budget_pb2.SettleRequest) -> tuple[budget_pb2.SettleReply, Effects]:
        eff = Effects()
        rid = req.reservation_id

        async def begin() -> tuple[Record, tuple[int, dict[str, Limit]] | None]:
            """The record settled, or begun settling: (record, (revision, limits) to drive it)."""
            (rec, rev, where), globals_ = await asyncio.gather(self._load(rid, res_first=True), self.global_limits())
            now = self.clock()
            if rec is not None and rec.state == SETTLED:
                return rec, None
            if rec is not None and where == "res" and rec.state in (SETTLING, RELEASING):
                await self._drive(rec, rev, eff, globals_)   # finish what another request left half-done...
                raise Conflict(res_key(rid))                 # ...and read again
            model = req.model or (rec.model if rec else "")
            cost = self.pricing.cost_nusd(model, req.input_tokens, req.output_tokens)
            if rec is None:
                rec = unreserved_settlement(rid, req.mission_id, model, now)
                log.warning("settlement without a reservation on record", reservation_id=rid,
                            mission_id=req.mission_id)
            begin_settle(rec, cost, model, req.input_tokens, req.output_tokens, now)
            rev = await self._write(res_key(rid), rec.encode(), 0 if where == "done" else rev)
            return rec, (rev, globals_)

        try:
            rec, todo = await _RECORD_RETRY.call(begin)
        except Conflict as exc:
            raise LedgerBusy(f"reservation {rid} contended") from exc
        if todo is not None:
            rec = await self._drive(rec, todo[0], eff, todo[1])
        if rec.over_limit:
            eff.span["coo.budget.scope"] = rec.over_scope
        eff.span["coo.cost.usd"] = nusd_to_usd(rec.cost_nusd)
        return replies.settled(rec, settle_reason(rec)), eff

    # ---------------------------------------------------------------------- release
    async def release(self, req: budget_pb2.ReleaseRequest) -> tuple[budget_pb2.ReleaseReply, Effects]:
        eff = Effects()
        rid = req.reservation_id

        async def begin() -> tuple[Record | None, tuple[int, dict[str, Limit]] | None]:
            """The record as found (None: unknown; settled or released), or begun releasing."""
            (rec, rev, _where), globals_ = await asyncio.gather(self._load(rid, res_first=True),
                                                                self.global_limits())
            if rec is None or rec.state in FINAL:
                return rec, None
            if rec.state in (SETTLING, RELEASING):
                await self._drive(rec, rev, eff, globals_)   # finish what another request left half-done...
                raise Conflict(res_key(rid))                 # ...and read again
            begin_release(rec, req.reason or "released", self.clock())
            return rec, (await self._write(res_key(rid), rec.encode(), rev), globals_)

        try:
            rec, todo = await _RECORD_RETRY.call(begin)
        except Conflict as exc:
            raise LedgerBusy(f"reservation {rid} contended") from exc
        if rec is None or todo is None:
            return replies.released(rec, fresh=False), eff
        final = await self._drive(rec, todo[0], eff, todo[1])
        eff.span["coo.cost.usd"] = nusd_to_usd(final.released_nusd)
        return replies.released(final, fresh=True), eff

    # -------------------------------------------------------------------- set limit
    async def set_limit(self, req: budget_pb2.SetLimitRequest) -> tuple[budget_pb2.SetLimitReply, Effects]:
        eff = Effects()
        now = self.clock()
        usd = usd_to_nusd(req.limit_usd) if req.HasField("limit_usd") else None
        tokens = req.limit_tokens if req.HasField("limit_tokens") else None
        scope = replies.SCOPE_NAME[req.scope]
        if scope == MISSION:
            key = mission_key(req.mission_id)
            r = await self._cas(key, mission_limit_step(usd, tokens, self._limit_fn({}), now), self._ttl_for(key))
            status = self.scope_status(r.state, r.limit)
        else:
            key = LIMITS_KEY[scope]

            async def write_override() -> None:
                data, rev = await self._get(key)
                try:
                    await self._write(key, set_override(data, usd, tokens, req.requested_by, now), rev)
                except Conflict:
                    metrics.BUDGET_CAS_CONFLICTS.inc()
                    raise

            try:
                await _LIMITS_RETRY.call(write_override)
            except Conflict as exc:
                raise LedgerBusy(f"{key} contended") from exc
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
        return replies.scope_status(state, limit, self.clock())

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
    async def sweep(self) -> tuple[int, Effects]:
        """Release expired reservations and finish half-done ones. Returns how many expired."""
        eff = Effects()
        expired = 0
        now = self.clock()
        globals_ = None
        s = self.settings
        for key, data, scanned_rev in await self.scan("res.>"):
            rev = scanned_rev      # moves on with each write below
            try:
                rec = Record.decode(data)
            except (ValueError, TypeError) as exc:
                log.error("unreadable reservation record", key=key, error=str(exc))
                continue
            try:
                if rec.state in (PENDING, RESERVED):
                    if now < expiry_deadline(rec, s.budget_stuck_seconds, s.budget_cas_deadline_seconds):
                        continue
                    begin_release(rec, "expired", now)
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
                elif rec.state in (SETTLING, RELEASING) and now - rec.updated_at >= s.budget_stuck_seconds:
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

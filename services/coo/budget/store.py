"""The budget ledger's KV store: JetStream KV (bucket ``coo_budget``) with compare-and-set only.

Several replicas share the bucket and never hold a lock: every write names the revision it
read (``Nats-Expected-Last-Subject-Sequence``; revision 0 = "must not exist") and a write that
lost a race raises :class:`Conflict`. Writes may carry a per-message TTL (a bucket without it
is noticed once and written without). Reads go straight to the stream (direct get when the
stream allows it); :meth:`LedgerStore.scan` snapshots a prefix through :mod:`coo.common.kvscan`.

Inside one replica the scope ledgers are written by group commit (:meth:`LedgerStore.cas`): the
steps waiting for one key are applied in order to one state and written in one
compare-and-set, so requests of one replica never race each other (conflicts only happen
between replicas), and the committer writes on the state it wrote last without reading it back
(a stale one loses its compare-and-set; a decision to write nothing is re-checked on a fresh read).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from coo.budget import metrics
from coo.budget.model import ScopeState, Step, StepResult
from coo.common import kvscan
from coo.common.retry import Policy
from coo.common.telemetry import get_logger

log = get_logger("coo.budget.ledger")

T = TypeVar("T")

_ERR_WRONG_LAST = (10071, 10164)
_ERR_TTL_DISABLED = 10166

GROUP_MAX = 256         # steps written in one compare-and-set at most
KEYS_MAX = 4096         # scope keys whose last written state a replica remembers
_DISTRUST = 8           # groups that read first after a remembered state was found stale...
_DISTRUST_MAX = 256     # ...doubling up to this while that keeps happening

# The wait of a group commit after a lost compare-and-set (full jitter, 1 ms doubling to 50 ms
# at most): replicas contending for one key take turns instead of losing to each other again.
# Only waits are taken from it: each step gives up at its own deadline (see LedgerStore.cas).
COMMIT_BACKOFF = Policy("budget group commit", attempts=None, initial=0.001, maximum=0.05, level="debug",
                        logger=log)


class Conflict(Exception):
    """A compare-and-set lost a race."""


class LedgerBusy(Exception):
    """A key stayed contended past ``budget_cas_deadline_seconds``."""


@dataclass
class _Step:
    step: Step
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


class LedgerStore:
    """Reads, compare-and-set writes, purges and scans of one KV bucket, and the group committer.

    ``cas_deadline``: a step waiting for its key gives up after this (:class:`LedgerBusy`);
    ``marker_seconds``: ``closed`` markers older than this are dropped by the next write;
    ``keys_max``: scope keys whose last written state is remembered (least recently used go)."""

    def __init__(self, js: JetStreamContext, bucket: str, *, cas_deadline: float, marker_seconds: float,
                 clock: Callable[[], float] = time.time, keys_max: int = KEYS_MAX) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.cas_deadline = cas_deadline
        self.marker_seconds = marker_seconds
        self.clock = clock
        self.keys_max = keys_max
        self.ttl_ok = True
        self.direct = False
        self.kv: KeyValue | None = None
        self.keys: OrderedDict[str, _KeyQueue] = OrderedDict()   # scope key -> its group commit
        self.stats = {"gets": 0, "writes": 0, "purges": 0, "write_conflicts": 0,
                      "cas_conflicts": 0, "groups": 0, "steps": 0}

    async def open(self) -> None:
        """Bind to the existing bucket (``Bus.ensure_topology`` creates it)."""
        self.kv = await self.js.key_value(self.bucket)
        info = await self.js.stream_info(self.stream)
        self.direct = bool(info.config.allow_direct)

    # ---------------------------------------------------------------- KV primitives
    async def get(self, key: str) -> tuple[bytes | None, int]:
        """(value, revision); (None, revision of a delete marker or 0) when absent."""
        self.stats["gets"] += 1
        try:
            msg = await self.js.get_msg(self.stream, subject=self.prefix + key, direct=self.direct)
        except nats.js.errors.NotFoundError:
            return None, 0
        if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
            return None, msg.seq or 0
        return msg.data, msg.seq or 0

    async def write(self, key: str, data: bytes, last: int, ttl: float | None = None) -> int:
        """Compare-and-set: succeeds only if the key's latest revision is ``last`` (0: absent)."""
        self.stats["writes"] += 1
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
        use_ttl = ttl if (ttl and self.ttl_ok) else None
        try:
            ack = await self.js.publish(self.prefix + key, data, headers=headers, msg_ttl=use_ttl)
        except nats.js.errors.APIError as err:
            if err.err_code in _ERR_WRONG_LAST:
                self.stats["write_conflicts"] += 1
                raise Conflict(key) from None
            if err.err_code == _ERR_TTL_DISABLED and use_ttl:
                self.ttl_ok = False
                log.warning("per-message TTL disabled on the budget bucket; finished records are kept",
                            bucket=self.bucket)
                return await self.write(key, data, last)
            raise
        return ack.seq

    async def purge(self, key: str, upto_revision: int | None = None) -> None:
        """Remove a key without leaving a marker; with ``upto_revision`` only if it is not newer."""
        self.stats["purges"] += 1
        seq = upto_revision + 1 if upto_revision else None
        await self.js.purge_stream(self.stream, subject=self.prefix + key, seq=seq)

    async def scan(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """A snapshot of the latest values under ``prefix`` (e.g. ``res.>``)."""
        if self.kv is None:
            self.kv = await self.js.key_value(self.bucket)
        return [(e.key, e.value, e.revision or 0) for e in await kvscan.latest(self.js, self.kv, prefix) if e.value]

    # ------------------------------------------------------------------ group commit
    async def cas(self, key: str, step: Step, ttl: float | None = None) -> StepResult:
        """Apply ``step`` to a scope ledger with compare-and-set, and return its result.

        Group commit: steps for one key queue up in this replica and one committer task per key
        applies all that are waiting, in order, to one state and writes it once. CAS conflicts
        therefore only happen between replicas; a lost race re-reads and re-applies the whole
        group (steps are pure functions of the state), after a jittered exponential backoff. A step
        that returns ``applied=False`` changes nothing. The committer keeps the state it last
        wrote (and its revision): the next group writes on it without reading it back, the CAS
        failing if another replica wrote in between. A group in which no step applied, computed
        on such a remembered state, is recomputed on a fresh read (a refusal must be exact).
        A step gives up with :class:`LedgerBusy` ``cas_deadline`` seconds after it was queued.
        """
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = _KeyQueue()
        self.keys.move_to_end(key)
        fut: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        ks.waiting.append(_Step(step, fut, time.monotonic() + self.cas_deadline))
        if ks.task is None:
            ks.task = asyncio.create_task(self._committer(key, ks, ttl), name=f"budget:commit:{key}")
        return await fut

    async def _committer(self, key: str, ks: _KeyQueue, ttl: float | None) -> None:
        backoff = COMMIT_BACKOFF.backoff()
        group: list[_Step] = []
        try:
            while ks.waiting:
                group = ks.waiting[:GROUP_MAX]
                del ks.waiting[:GROUP_MAX]
                group = [g for g in group if not g.fut.done()]       # a caller gave up (cancelled)
                if not group:
                    continue
                try:
                    results = await self._commit(key, ks, group, ttl)
                except Conflict as exc:
                    metrics.BUDGET_CAS_CONFLICTS.inc()
                    self.stats["cas_conflicts"] += 1
                    now = time.monotonic()
                    alive = []
                    for g in group:
                        if now > g.deadline:
                            busy = LedgerBusy(f"{key} contended for {self.cas_deadline}s")
                            busy.__cause__ = exc
                            g.fut.set_exception(busy)
                        else:
                            alive.append(g)
                    ks.waiting[:0] = alive          # retried first, with whatever queued meanwhile
                    await backoff.wait(exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
                    for g in group:
                        if not g.fut.done():
                            g.fut.set_exception(exc)
                    continue
                backoff.reset()
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

    async def _commit(self, key: str, ks: _KeyQueue, group: list[_Step], ttl: float | None) -> list[StepResult]:
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
                data, rev = await self.get(key)
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
        state.prune(self.clock(), self.marker_seconds)
        try:
            rev = await self.write(key, state.encode(), rev, ttl)     # Conflict: the caller retries
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
        """Past ``keys_max`` keys, forget idle ones (least recently used first) down to 3/4 of it."""
        if len(self.keys) <= self.keys_max:
            return
        for k in list(self.keys):
            if len(self.keys) <= self.keys_max * 3 // 4:
                break
            ks = self.keys[k]
            if ks.task is None and not ks.waiting:
                del self.keys[k]

    async def close(self) -> None:
        """Stop the committers (their callers get an error)."""
        tasks = [ks.task for ks in self.keys.values() if ks.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SharedRead(Generic[T]):
    """A read that concurrent callers share: :meth:`get` returns the result of a read that
    started after the call did (so a write answered before is seen); while one is under way,
    the callers that arrive meanwhile wait for it and then share the next one."""

    def __init__(self, read: Callable[[], Awaitable[T]], name: str) -> None:
        self._read = read
        self._name = name
        self._next: asyncio.Future[T] | None = None
        self._task: asyncio.Task | None = None

    async def get(self) -> T:
        fut = self._next
        if fut is None:
            fut = self._next = asyncio.get_running_loop().create_future()
            if self._task is None:
                self._task = asyncio.create_task(self._reader(), name=self._name)
        return await asyncio.shield(fut)

    async def _reader(self) -> None:
        fut = None
        try:
            while self._next is not None:
                fut, self._next = self._next, None
                try:
                    value = await self._read()
                except Exception as exc:  # noqa: BLE001 - handed to the callers
                    fut.set_exception(exc)
                    fut.exception()         # retrieved here too: no "never retrieved" when nobody waits
                else:
                    fut.set_result(value)
        except BaseException:               # cancelled: nobody may wait forever
            for f in (fut, self._next):
                if f is not None and not f.done():
                    f.set_exception(LedgerBusy("ledger stopped"))
                    f.exception()
            self._next = None
            raise
        finally:
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

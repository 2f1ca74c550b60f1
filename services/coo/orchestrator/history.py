"""Mission history read through an index, never by scanning every key (DESIGN §4).

Every orchestrator replica keeps a :class:`MissionIndex` of the ``coo_missions`` bucket, fed by one
KV watch (``KeyValue.watchall``): the watch first delivers the latest revision of every key, then
every change as it is written, by any replica. The index holds a few numbers per mission (status,
creation and finish times, revision), never the mission itself, and answers without a round trip:

* a page of missions, newest first, filtered by status(es) and creation time, after a cursor;
* the live missions (admission's count, the housekeeping deadline, the reconcile after a start);
* the finished missions oldest first (retention: by age and by count).

All replicas watch the same bucket, so they share one view of the history: admission's live count is
the same on every replica (give or take the watch's propagation, a few milliseconds), not a count
each replica keeps of its own admissions.

A cursor is opaque to clients: the position (creation time, mission id) of the last mission of a
page, base64url-encoded. Pages are stable under inserts: a mission created after the first page
never shifts a later one.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from coo.orchestrator import flow
from coo.v1 import mission_pb2

Key = tuple[int, str]   # (created_at in ns, mission id): the order of history, oldest first

KV_DEL, KV_PURGE = "DEL", "PURGE"   # the KV-Operation header of a delete or purge marker


class BadCursor(ValueError):
    """A cursor this API never gave out."""


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}:{key[1]}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, mission_id = raw.split(":", 1)
        if not mission_id or len(mission_id) > 64:
            raise ValueError(mission_id)
        return int(created), mission_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise BadCursor(f"invalid cursor {cursor[:40]!r}: pass back the next_cursor of a page") from None


@dataclass(slots=True)
class Summary:
    """What the index knows of one mission."""

    key: Key
    status: int
    finished_ns: int
    revision: int

    @property
    def mission_id(self) -> str:
        return self.key[1]

    @property
    def created_ns(self) -> int:
        return self.key[0]


def _insert(lst: list, item) -> None:
    if not lst or lst[-1] < item:      # the common case: the newest mission
        lst.append(item)
    else:
        bisect.insort(lst, item)


def _remove(lst: list, item) -> None:
    i = bisect.bisect_left(lst, item)
    if i < len(lst) and lst[i] == item:
        del lst[i]


class MissionIndex:
    """Missions by creation time, by status, and finished ones by finish time (see the module doc)."""

    def __init__(self) -> None:
        self.missions: dict[str, Summary] = {}
        self.by_status: dict[int, list[Key]] = {}
        self.finished: list[tuple[int, str]] = []      # (finished_at ns, mission id), oldest first
        #: keys whose delete/purge marker was seen: mission id -> when it was written (epoch seconds)
        self.tombstones: dict[str, float] = {}
        #: the highest stream sequence (KV revision) applied
        self.revision = 0

    # ------------------------------------------------------------------ feeding
    def apply(self, key: str, value: bytes | None, operation: str | None, revision: int | None,
              created: object = None) -> None:
        """One entry of the watch: a mission written, deleted or purged."""
        if revision:
            self.revision = max(self.revision, revision)
        if not key.startswith("m-"):
            return                           # admission.blocks, the retention lease
        if operation in (KV_DEL, KV_PURGE) or not value:
            self.remove(key)
            self.tombstones[key] = _seconds(created)
            return
        try:
            m = mission_pb2.Mission.FromString(value)
        except Exception:  # noqa: BLE001 - a foreign value in the bucket: not a mission
            return
        self.tombstones.pop(key, None)
        self.put(key, m.status, m.created_at.ToNanoseconds(), m.finished_at.ToNanoseconds(), revision or 0)

    def put(self, mission_id: str, status: int, created_ns: int, finished_ns: int, revision: int = 0) -> None:
        old = self.missions.get(mission_id)
        if old is not None:
            if old.revision and revision and revision < old.revision:
                return                       # an older revision than the one indexed
            if old.status == status and old.created_ns == created_ns and old.finished_ns == finished_ns:
                old.revision = revision
                return
            self.remove(mission_id)
        s = Summary((created_ns, mission_id), status, finished_ns, revision)
        self.missions[mission_id] = s
        _insert(self.by_status.setdefault(status, []), s.key)
        if status in flow.FINAL:
            _insert(self.finished, (finished_ns, mission_id))

    def remove(self, mission_id: str) -> None:
        s = self.missions.pop(mission_id, None)
        if s is None:
            return
        _remove(self.by_status.get(s.status, []), s.key)
        if s.status in flow.FINAL:
            _remove(self.finished, (s.finished_ns, mission_id))

    # ------------------------------------------------------------------ questions
    def __len__(self) -> int:
        return len(self.missions)

    def __contains__(self, mission_id: object) -> bool:
        return mission_id in self.missions

    def count(self, statuses: Iterable[int]) -> int:
        return sum(len(self.by_status.get(s, ())) for s in statuses)

    def live_count(self) -> int:
        return self.count(flow.LIVE)

    def counts(self) -> dict[int, int]:
        return {s: len(keys) for s, keys in self.by_status.items() if keys}

    def live(self) -> list[Summary]:
        return [self.missions[k[1]] for s in flow.LIVE for k in self.by_status.get(s, ())]

    def page(self, statuses: Iterable[int] | None = None, *, since_ns: int | None = None,
             before: Key | None = None, limit: int = 50) -> tuple[list[Key], bool, int]:
        """Up to ``limit`` keys, newest first, older than ``before`` and created at or after
        ``since_ns``; whether more follow; and how many match the filters in all."""
        wanted = list(flow.LIVE | flow.FINAL) if statuses is None else list(statuses)
        lower: Key = (since_ns, "") if since_ns is not None else (-(1 << 63), "")
        runs = []
        total = 0
        for status in wanted:
            keys = self.by_status.get(status)
            if not keys:
                continue
            lo = bisect.bisect_left(keys, lower)
            hi = bisect.bisect_left(keys, before) if before is not None else len(keys)
            total += len(keys) - lo
            if hi > lo:
                runs.append(_newest_first(keys, lo, hi))
        merged = heapq.merge(*runs, reverse=True) if len(runs) > 1 else (runs[0] if runs else iter(()))
        out: list[Key] = []
        for k in merged:
            if len(out) == limit:
                return out, True, total
            out.append(k)
        return out, False, total

    def expired(self, *, older_than_ns: int | None, keep: int | None, exclude: set[str] | frozenset = frozenset(),
                limit: int = 1000) -> list[str]:
        """Finished missions retention deletes, oldest finished first: those finished before
        ``older_than_ns`` and those beyond the newest ``keep`` finished ones."""
        over = max(0, len(self.finished) - keep) if keep else 0
        out: list[str] = []
        for i, (finished_ns, mission_id) in enumerate(self.finished):
            if len(out) >= limit:
                break
            if i < over or (older_than_ns is not None and finished_ns < older_than_ns):
                if mission_id not in exclude:
                    out.append(mission_id)
            else:
                break
        return out


def _newest_first(keys: list[Key], lo: int, hi: int) -> Iterator[Key]:
    for i in range(hi - 1, lo - 1, -1):
        yield keys[i]


def _seconds(created: object) -> float:
    if isinstance(created, datetime):
        return created.timestamp()
    if isinstance(created, (int, float)) and created:
        return created / 1e9 if created > 1e12 else float(created)
    import time

    return time.time()

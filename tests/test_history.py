"""Mission history read through an index (DESIGN §4): pages, filters, retention, the live count
shared by orchestrator replicas, a watch that survives a NATS restart; on a real nats-server, with
real engines (two at once where it matters) and through the API and the CLI of a real orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from bench.history import finished_mission, live_mission, seed
from coo.budget.client import SUBJECT_SET_LIMIT
from coo.common import timeline, topology
from coo.common.bus import Bus
from coo.orchestrator import engine as engine_mod
from coo.orchestrator import flow
from coo.orchestrator.engine import AdmissionRefused, Engine, MissionNotFound
from coo.orchestrator.history import (
    BadCursor,
    MissionIndex,
    decode_cursor,
    encode_cursor,
)
from coo.orchestrator.settings import OrchestratorSettings
from coo.v1 import budget_pb2
from coo.v1 import mission_pb2 as M
from tests.harness import TEST_READ_TOKEN, TEST_TOKEN, ServiceStack
from tests.natsserver import NatsServer

DONE, FAILED, EXECUTING, PAUSED = (M.MISSION_STATUS_COMPLETED, M.MISSION_STATUS_FAILED, M.MISSION_STATUS_EXECUTING,
                                   M.MISSION_STATUS_PAUSED)


# ------------------------------------------------------------------------- the index alone
def _index(n: int = 120) -> MissionIndex:
    ix = MissionIndex()
    for i in range(n):
        status = EXECUTING if i % 10 == 0 else FAILED if i % 10 == 1 else DONE
        ix.put(f"m-{i:04d}", status, created_ns=1_000 + i, finished_ns=0 if status == EXECUTING else 5_000 + i,
               revision=i + 1)
    return ix


def _all_pages(ix: MissionIndex, limit: int, **kw) -> list[str]:
    out, before = [], None
    while True:
        keys, more, _ = ix.page(before=before, limit=limit, **kw)
        out += [k[1] for k in keys]
        if not more:
            return out
        before = keys[-1]


def test_pages_are_newest_first_complete_and_stable_under_inserts():
    ix = _index()
    first, more, total = ix.page(limit=50)
    assert more and total == 120 and [k[1] for k in first] == [f"m-{i:04d}" for i in range(119, 69, -1)]
    ix.put("m-9999", EXECUTING, created_ns=10_000, finished_ns=0)       # a new mission after page 1
    second, _, _ = ix.page(before=first[-1], limit=50)
    assert [k[1] for k in second] == [f"m-{i:04d}" for i in range(69, 19, -1)]
    ids = _all_pages(ix, 7)
    assert len(ids) == len(set(ids)) == 121 and ids[0] == "m-9999"


def test_filters_by_status_and_since_are_answered_from_the_index():
    ix = _index()
    live, more, total = ix.page([EXECUTING], limit=5)
    assert more and total == 12 and [k[1] for k in live] == ["m-0110", "m-0100", "m-0090", "m-0080", "m-0070"]
    both = _all_pages(ix, 4, statuses=[EXECUTING, FAILED])
    assert len(both) == 24 and both == sorted(both, reverse=True)
    recent = _all_pages(ix, 10, since_ns=1_100)
    assert recent == [f"m-{i:04d}" for i in range(119, 99, -1)]
    assert ix.page([FAILED], since_ns=1_100, limit=1)[2] == 2
    assert ix.live_count() == 12 and ix.counts()[FAILED] == 12


def test_status_moves_and_deletes_keep_every_view_consistent():
    ix = _index(20)
    ix.put("m-0000", DONE, created_ns=1_000, finished_ns=9_000, revision=100)   # executing -> completed
    assert ix.live_count() == 1 and ("m-0000" not in [k[1] for k in ix.page([EXECUTING], limit=50)[0]])
    ix.put("m-0000", EXECUTING, created_ns=1_000, finished_ns=0, revision=50)   # an older revision: ignored
    assert ix.missions["m-0000"].status == DONE
    ix.apply("m-0003", None, "PURGE", 101)
    assert "m-0003" not in ix and "m-0003" in ix.tombstones and ix.revision == 101
    assert len(ix.finished) == 18 and ix.page(limit=50)[2] == 19
    ix.apply("admission.blocks", b"{}", None, 102)                                # not a mission
    assert len(ix) == 19 and ix.revision == 102


def test_retention_picks_finished_missions_oldest_first_never_live_ones():
    ix = _index(30)            # finished_ns 5_000 + i for the 27 finished; 3 live
    assert ix.expired(older_than_ns=None, keep=20) == [f"m-{i:04d}" for i in (1, 2, 3, 4, 5, 6, 7)]
    by_age = ix.expired(older_than_ns=5_012, keep=None)
    assert by_age == [f"m-{i:04d}" for i in range(1, 12) if i % 10 != 0]
    assert ix.expired(older_than_ns=None, keep=20, exclude={"m-0001"}, limit=3) == ["m-0002", "m-0003", "m-0004"]
    assert not ix.expired(older_than_ns=10**12, keep=None, exclude=set(), limit=100) or all(
        ix.missions[i].status in flow.FINAL for i in ix.expired(older_than_ns=10**12, keep=None, limit=100))
    assert len(ix.expired(older_than_ns=10**12, keep=None, limit=100)) == 27


def test_cursors_round_trip_and_refuse_what_was_never_given():
    key = (1_733_000_000_123_456_789, "m-0193a1b2c3d4e5f6a7")
    assert decode_cursor(encode_cursor(key)) == key
    for bad in ("", "not base64!", encode_cursor((1, "x" * 80)), "bm90LWEtY3Vyc29y"):
        with pytest.raises(BadCursor):
            decode_cursor(bad)


async def test_lists_and_admission_wait_for_the_index():
    from unittest import mock

    from nats.js.kv import KeyValue

    from coo.orchestrator.engine import NotReady

    engine = Engine(mock.Mock(), _settings("nats://127.0.0.1:9"))
    engine.kv = mock.Mock(spec=KeyValue)          # connected, its index not built yet: no count of 0 live
    with pytest.raises(NotReady, match="mission history"):
        await engine.check_admission()
    with pytest.raises(NotReady, match="mission history"):
        await engine.list_missions()


# ------------------------------------------------------------------- engines on a real server
def _settings(url: str, **kw) -> OrchestratorSettings:
    base = {"nats_url": url, "mission_retention_count": 0, "mission_retention_seconds": 0,
            "mission_retention_interval_seconds": 3600, "mission_deadline_seconds": 10 * 86400}
    return OrchestratorSettings(**{**base, **kw})


async def _engine(url: str, name: str, **kw) -> Engine:
    bus = await Bus.connect(name, _settings(url))
    engine = Engine(bus, _settings(url, **kw))
    await engine.start()
    return engine


async def _close(*engines: Engine) -> None:
    for e in engines:
        await e.stop()
        await e.bus.close()


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def bucket(nats_server):
    bus = await Bus.connect("test-history", _settings(nats_server.url))
    await bus.ensure_topology()
    kv = await bus.kv(topology.BUCKET_MISSIONS)
    budget = await Bus.connect("test-budget", _settings(nats_server.url))

    async def set_limit(req: budget_pb2.SetLimitRequest) -> budget_pb2.SetLimitReply:
        return budget_pb2.SetLimitReply(ok=True)

    await budget.serve("budget", {SUBJECT_SET_LIMIT: (budget_pb2.SetLimitRequest, set_limit)})
    try:
        yield bus, kv, nats_server
    finally:
        await budget.close()
        await bus.close()


async def test_two_engines_share_pages_and_the_live_count(bucket):
    _, kv, server = bucket
    now = time.time()
    await seed(kv, [finished_mission(i, now - 3600 + i) for i in range(40)]
               + [live_mission(1000 + i, now - 60 + i) for i in range(3)])
    a = await _engine(server.url, "orch-a", max_live_missions=5)
    b = await _engine(server.url, "orch-b", max_live_missions=5)
    try:
        assert len(a.index) == len(b.index) == 43 and a.live_count() == b.live_count() == 3
        # pages: newest first, complete, no duplicates, cursor-driven
        seen, before = [], None
        while True:
            page, before, total = await a.list_missions(limit=9, before=before)
            seen += [m.mission_id for m in page]
            assert total == 43
            if before is None:
                break
        created = [m.created_at.ToNanoseconds() for m in [await a.get(i) for i in seen]]
        assert len(seen) == len(set(seen)) == 43 and created == sorted(created, reverse=True)
        live, after, total = await b.list_missions(sorted(flow.LIVE), limit=50)
        assert total == 3 and after is None and all(m.status == EXECUTING for m in live)
        since = int((now - 3600 + 30) * 1e9)
        recent, _, total = await b.list_missions([DONE, FAILED], since_ns=since, limit=50)
        assert total == 10 and all(m.created_at.ToNanoseconds() >= since for m in recent)

        # admission: two admitted through A, then B (which admitted nothing itself) refuses the sixth
        await a.create_mission("write a FizzBuzz function")
        await a.create_mission("write a word counter")
        await _until(lambda: b.live_count() == 5)
        with pytest.raises(AdmissionRefused, match="5 live missions"):
            await b.create_mission("one too many")
        with pytest.raises(AdmissionRefused):
            await a.create_mission("one too many")
        # concurrent requests to one replica cannot all pass the same check
        await _close(b)
        b = await _engine(server.url, "orch-b2", max_live_missions=8)
        results = await asyncio.gather(*(b.create_mission(f"goal {k}") for k in range(6)), return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 3
        assert all(isinstance(r, (AdmissionRefused,)) for r in results if isinstance(r, BaseException))
        await _until(lambda: a.live_count() == 8)
    finally:
        await _close(a, b)


async def test_retention_deletes_finished_missions_by_age_and_count_never_live_ones(bucket, monkeypatch):
    bus, kv, server = bucket
    now = time.time()
    old = [finished_mission(i, now - 3 * 86400 + i) for i in range(10)]                 # finished 3 days ago
    recent = [finished_mission(100 + i, now - 3600 + i) for i in range(30)]
    live = [live_mission(1000 + i, now - 5 * 86400 + i) for i in range(2)]              # older than all of them
    await seed(kv, old + recent + live)
    for m in (old[0], recent[0], recent[-1]):
        await timeline.record(bus, m.mission_id, "mission.completed", "done")
    a = await _engine(server.url, "orch-a", mission_retention_seconds=2 * 86400, mission_retention_count=25)
    b = await _engine(server.url, "orch-b", mission_retention_seconds=2 * 86400, mission_retention_count=25)
    try:
        assert await a.retention_once(batch=4) == 15          # 10 by age, then 5 more by count
        assert await b.retention_once() == 0                  # A holds the lease
        for e in (a, b):
            await _until(lambda e=e: len(e.index) == 27)
            assert len(e.index.finished) == 25 and e.live_count() == 2
        for m in old + recent[:5]:
            with pytest.raises(MissionNotFound):
                await b.get(m.mission_id)
        for m in recent[5:] + live:
            assert (await b.get(m.mission_id)).mission_id == m.mission_id
        assert await timeline.read(bus, old[0].mission_id) == []
        assert await timeline.read(bus, recent[0].mission_id) == []
        assert [e.type for e in await timeline.read(bus, recent[-1].mission_id)] == ["mission.completed"]
        # nothing more to delete; the purge markers go once they are old enough
        monkeypatch.setattr(engine_mod, "TOMBSTONE_SECONDS", 0.0)
        assert await a.retention_once() == 0
        assert not a.index.tombstones
        info = await bus.js.stream_info(f"KV_{topology.BUCKET_MISSIONS}",
                                        subjects_filter=f"$KV.{topology.BUCKET_MISSIONS}.*")
        assert len(info.state.subjects or {}) == 27           # the missions left, no marker of the deleted
        # a restarted replica rebuilds the same index from the bucket
        await _close(b)
        b = await _engine(server.url, "orch-b2")
        assert len(b.index) == 27 and len(b.index.finished) == 25 and b.live_count() == 2
    finally:
        await _close(a, b)


class _MarkerFirst:
    """A real KV watcher whose end-of-initial-values marker is delivered before the values: the
    order nats-py produces when the consumer's info reply overtakes the pushed messages (seen in CI
    under load: a second replica built an empty index from a bucket of 43 missions)."""

    def __init__(self, watcher) -> None:
        self.watcher = watcher

    async def stop(self) -> None:
        await self.watcher.stop()

    async def __aiter__(self):
        held: list | None = []
        async for entry in self.watcher:
            if held is None:              # after the marker: as they come
                yield entry
            elif entry is None:
                yield None
                await asyncio.sleep(0.3)  # the values still on their way
                for e in held:
                    yield e
                held = None
            else:
                held.append(entry)


async def test_a_marker_ahead_of_the_values_does_not_empty_the_index(bucket, monkeypatch):
    _, kv, server = bucket
    now = time.time()
    await seed(kv, [finished_mission(i, now - 3600 + i) for i in range(40)]
               + [live_mission(1000 + i, now - 60 + i) for i in range(3)])
    real_watchall = type(kv).watchall

    async def marker_first(self, **kw):
        return _MarkerFirst(await real_watchall(self, **kw))

    monkeypatch.setattr(type(kv), "watchall", marker_first)
    a = await _engine(server.url, "orch-a", max_live_missions=5)
    try:
        assert len(a.index) == 43 and a.live_count() == 3
    finally:
        await _close(a)


async def test_the_index_survives_a_nats_restart(bucket):
    _, kv, server = bucket
    now = time.time()
    await seed(kv, [finished_mission(i, now - 600 + i) for i in range(5)])
    a = await _engine(server.url, "orch-a")
    try:
        assert len(a.index) == 5
        server.restart()
        writer = await Bus.connect("test-writer", _settings(server.url))
        try:
            wkv = await writer.kv(topology.BUCKET_MISSIONS)
            deadline = time.monotonic() + 30
            while len(a.index) < 8:
                assert time.monotonic() < deadline, f"index stuck at {len(a.index)} after the restart"
                await seed(wkv, [finished_mission(50 + k, now - 100 + k) for k in range(3)])
                for _ in range(4):
                    with contextlib.suppress(Exception):   # the connection coming back
                        await a.housekeeping_once()       # notices a watch that fell behind
                    if len(a.index) >= 8:
                        break
                    await asyncio.sleep(0.5)
        finally:
            await writer.close()
    finally:
        await _close(a)


# ------------------------------------------------------------- through the API and the CLI
@pytest.fixture
def orchestrator(tmp_path):
    nats = NatsServer(data_dir=tmp_path / "nats").start()
    s = ServiceStack(tmp_path, nats, services=("orchestrator",),
                     env={"COO_MISSION_RETENTION_COUNT": "30", "COO_MISSION_RETENTION_SECONDS": "0",
                          "COO_MISSION_RETENTION_INTERVAL_SECONDS": "1"})
    try:
        s.start()
        s.wait_engine()
        yield s
    finally:
        s.stop()
        nats.cleanup()


def test_api_and_cli_page_filter_and_retain(orchestrator):
    now = time.time()

    async def write() -> None:
        bus = await Bus.connect("test-seed", _settings(orchestrator.nats.url))
        kv = await bus.kv(topology.BUCKET_MISSIONS)
        await seed(kv, [finished_mission(i, now - 7200 + i) for i in range(40)]
                   + [live_mission(500 + i, now - 30 + i) for i in range(2)])
        await bus.close()

    asyncio.run(write())
    with orchestrator.api() as api:
        deadline = time.monotonic() + 20
        while api.get("/v1/missions", params={"limit": 1}).json()["total"] != 32:   # 30 finished kept, 2 live
            assert time.monotonic() < deadline, api.get("/v1/missions", params={"limit": 1}).json()
            time.sleep(0.2)
        first = api.get("/v1/missions", params={"limit": 20}).json()
        assert first["count"] == 20 and first["total"] == 32 and first["next_cursor"]
        assert [m["status"] for m in first["missions"][:2]] == ["executing", "executing"]
        assert "artifacts" not in first["missions"][0] and first["missions"][0]["tasks"]
        rest = api.get("/v1/missions", params={"limit": 20, "cursor": first["next_cursor"]}).json()
        assert rest["count"] == 12 and rest["next_cursor"] is None
        ids = [m["mission_id"] for m in first["missions"] + rest["missions"]]
        assert len(set(ids)) == 32 and ids == sorted(ids, reverse=True)
        live = api.get("/v1/missions", params={"status": "live"}).json()
        assert live["total"] == 2 and {m["status"] for m in live["missions"]} == {"executing"}
        failed = api.get("/v1/missions", params={"status": "failed,budget_exceeded"}).json()
        assert failed["total"] == sum(1 for i in range(10, 40) if i % 10 == 7 or i % 50 == 3)
        assert api.get("/v1/missions", params={"cursor": "garbage!"}).status_code == 422
        assert api.get("/v1/missions", params={"status": "done"}).status_code == 422
        assert httpx.get(orchestrator.url("orchestrator", "/v1/missions"), timeout=5).status_code == 401
        # the oldest ten were deleted by retention (count 30), and the metrics say so
        assert api.get(f"/v1/missions/{finished_mission(0, now - 7200).mission_id}").status_code == 404
        deadline = time.monotonic() + 15
        while True:
            text = httpx.get(orchestrator.url("orchestrator", "/metrics"), timeout=5).text
            if "coo_missions_finished_kept 30.0" in text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "coo_missions_finished_kept 30.0" in text and "coo_missions_deleted_total 10.0" in text

    env = {**os.environ, "COO_API_URL": orchestrator.url("orchestrator"), "COO_API_READ_TOKEN": TEST_READ_TOKEN}
    env.pop("COO_API_TOKEN", None)
    coo = [sys.executable, "-m", "coo.cli"]
    every = subprocess.run([*coo, "missions", "--all", "--limit", "7", "--json"], check=False, capture_output=True,
                           text=True, env=env, timeout=60)
    assert every.returncode == 0, every.stderr
    body = json.loads(every.stdout)
    assert body["count"] == 32 and len({m["mission_id"] for m in body["missions"]}) == 32
    page = subprocess.run([*coo, "missions", "--limit", "5", "--json"], check=False, capture_output=True, text=True,
                          env=env, timeout=60)
    one = json.loads(page.stdout)
    assert one["count"] == 5 and one["total"] == 32 and one["next_cursor"]
    after = subprocess.run([*coo, "missions", "--limit", "5", "--cursor", one["next_cursor"], "--json"],
                           check=False, capture_output=True, text=True, env=env, timeout=60)
    assert [m["mission_id"] for m in json.loads(after.stdout)["missions"]] == ids[5:10]
    human = subprocess.run([*coo, "missions", "--limit", "5"], check=False, capture_output=True, text=True, env=env,
                           timeout=60)
    assert human.returncode == 0 and "--cursor" in human.stdout and "32" in human.stdout
    bad = subprocess.run([*coo, "missions", "--cursor", "garbage!"], check=False, capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode != 0 and "cursor" in bad.stderr and "Traceback" not in bad.stderr
    assert TEST_TOKEN not in every.stdout + every.stderr

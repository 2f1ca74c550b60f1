"""The budget service against a real nats-server: arithmetic, limits, idempotency, expiry,
recovery, request/reply with two replicas, and no overspend under concurrency."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from coo.budget import ledger as L
from coo.budget import metrics
from coo.budget.client import SUBJECT_RESERVE, SUBJECT_SET_LIMIT, SUBJECT_STATUS, BudgetClient
from coo.budget.ledger import Ledger
from coo.budget.pricing import Pricing
from coo.budget.service import BudgetService
from coo.budget.settings import BudgetSettings, ModelPrice
from coo.common import timeline
from coo.common.bus import Bus, ServiceError
from coo.v1 import budget_pb2
from tests.natsserver import free_port

MISSION = budget_pb2.BUDGET_SCOPE_MISSION
DAILY = budget_pb2.BUDGET_SCOPE_DAILY
MONTHLY = budget_pb2.BUDGET_SCOPE_MONTHLY

# "t-model": $0.001 per input token, $0.002 per output token.
PRICES = {"t-model": ModelPrice(input_per_mtok=1000.0, output_per_mtok=2000.0)}


def make_settings(nats_server, **overrides) -> BudgetSettings:
    values = {"nats_url": nats_server.url, "budget_pricing": PRICES, "budget_mission_usd": 1.0,
              "budget_daily_usd": 50.0, "budget_monthly_usd": 500.0, "budget_sweep_interval_seconds": 0.2,
              "budget_gauge_interval_seconds": 0.5, "budget_stuck_seconds": 0.5}
    values.update(overrides)
    return BudgetSettings(**values)


@pytest.fixture
def settings(nats_server):
    return make_settings(nats_server)


@pytest.fixture
async def bus(settings):
    b = await Bus.connect("budget-test-client", settings)
    await b.ensure_topology()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def replicas(settings, bus):
    """Two budget replicas, each on its own NATS connection (as two processes would be)."""
    started: list[tuple[Bus, BudgetService]] = []
    for i in range(2):
        rb = await Bus.connect(f"budget-{i}", settings)
        await rb.ensure_topology()
        started.append((rb, await BudgetService.start(rb, settings)))
    try:
        yield [svc for _, svc in started]
    finally:
        for rb, svc in started:
            await svc.stop()
            await rb.close()


@pytest.fixture
def budget(bus, replicas) -> BudgetClient:
    return BudgetClient(bus, retries=0)


def scope(reply: budget_pb2.BudgetStatusReply, which: int) -> budget_pb2.ScopeStatus:
    return next(s for s in reply.scopes if s.scope == which)


def counter(metric, *labels) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


async def eventually(predicate, timeout=8.0, interval=0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------ pricing/settings
def test_pricing_table_from_env(monkeypatch):
    monkeypatch.setenv("COO_BUDGET_PRICING", json.dumps({"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 2},
                                                         "my-model": {"input_per_mtok": 3, "output_per_mtok": 4}}))
    monkeypatch.setenv("COO_BUDGET_ON_EXCEEDED", "pause")
    s = BudgetSettings()
    assert s.budget_port == 8082 and s.budget_on_exceeded == "pause"
    assert s.budget_mission_usd == 1.0 and s.budget_daily_usd == 50 and s.budget_monthly_usd == 500
    p = Pricing.from_settings(s)
    assert p.cost_nusd("gpt-4o-mini", 1_000_000, 0) == 1_000_000_000          # overridden: $1/Mtok
    assert p.cost_nusd("my-model", 0, 1_000_000) == 4_000_000_000
    assert p.price("gpt-4.1-mini-2025-04-14").known                                # dated snapshot
    assert p.price("mock-small").known and p.price("mock-large").known
    unknown = p.price("no-such-model")
    assert not unknown.known and unknown.cost_nusd(1000, 1000) > 0                 # never free


# --------------------------------------------------------------------------- arithmetic
async def test_reserve_settle_release_arithmetic(budget, spans):
    r = await budget.reserve("r-1", "m-1", "t-model", input_tokens=100, max_output_tokens=200, task_id="t1",
                             role="engineer")
    assert r.ok and r.reservation_id == "r-1"
    assert r.reserved_usd == pytest.approx(0.5) and r.reserved_tokens == 300
    assert r.remaining_usd == pytest.approx(0.5)          # the mission's $1 is the tightest scope
    assert r.remaining_tokens == -1                        # no token limit anywhere
    assert r.expires_at.seconds > 0

    st = await budget.status("m-1")
    m, d = scope(st, MISSION), scope(st, DAILY)
    assert m.key == "m-1" and m.reserved_usd == pytest.approx(0.5) and m.reservations == 1
    assert d.reserved_usd == pytest.approx(0.5) and scope(st, MONTHLY).reserved_usd == pytest.approx(0.5)

    s = await budget.settle("r-1", "m-1", "t-model", input_tokens=100, output_tokens=50)
    assert s.ok and not s.over_limit and s.cost_usd == pytest.approx(0.2)
    st = await budget.status("m-1")
    m = scope(st, MISSION)
    assert m.spent_usd == pytest.approx(0.2) and m.spent_tokens == 150
    assert m.reserved_usd == 0 and m.reservations == 0 and m.remaining_usd == pytest.approx(0.8)
    assert scope(st, DAILY).spent_usd == pytest.approx(0.2)

    r2 = await budget.reserve("r-2", "m-1", "t-model", 10, 10)
    assert r2.ok and r2.reserved_usd == pytest.approx(0.03)
    rel = await budget.release("r-2", "m-1", reason="call not made")
    assert rel.ok and rel.released_usd == pytest.approx(0.03)
    st = await budget.status("m-1")
    assert scope(st, MISSION).reserved_usd == 0 and scope(st, MISSION).spent_usd == pytest.approx(0.2)
    assert scope(st, MONTHLY).spent_usd == pytest.approx(0.2) and scope(st, MONTHLY).reserved_usd == 0

    served = [sp for sp in spans.get_finished_spans() if sp.name == f"process {SUBJECT_RESERVE}"]
    assert served and served[0].attributes["mission.id"] == "m-1"
    assert served[0].attributes["coo.cost.usd"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------ refusals
async def test_mission_limit_refusal_changes_nothing_and_is_on_the_timeline(budget, bus, settings):
    before_exceeded = counter(metrics.BUDGET_EXCEEDED, "mission")
    assert (await budget.reserve("a", "m-2", "t-model", 100, 200)).ok      # $0.5
    assert (await budget.reserve("b", "m-2", "t-model", 100, 200)).ok      # $1.0: exactly the limit
    snapshot = await budget.status("m-2")

    refused = await budget.reserve("c", "m-2", "t-model", 1, 0)            # $0.001 more
    assert not refused.ok and refused.scope == MISSION
    assert "mission budget exceeded" in refused.reason and refused.remaining_usd == 0
    after = await budget.status("m-2")
    for a, b in zip(snapshot.scopes, after.scopes):
        a.ClearField("updated_at"), b.ClearField("updated_at")
    assert list(snapshot.scopes) == list(after.scopes)                    # no state change
    ledger = await Ledger.open(bus.js, settings)
    assert await ledger.scan("res.c") == [] and await ledger.scan("done.c") == []
    assert counter(metrics.BUDGET_EXCEEDED, "mission") == before_exceeded + 1

    async def exceeded_event():
        events = await timeline.read(bus, "m-2")
        return [e for e in events if e.type == "budget.exceeded"]

    events = await eventually(exceeded_event)
    assert events[0].level == "warning" and events[0].attributes["scope"] == "mission"
    assert events[0].attributes["reservation_id"] == "c"
    warnings = [e for e in await timeline.read(bus, "m-2") if e.type == "budget.warning"]
    assert len(warnings) == 1                                              # crossed 80% once, recorded once


async def test_token_limit_refusal(budget):
    await budget.set_limit("mission", mission_id="m-tok", limit_tokens=500)
    assert (await budget.reserve("t1", "m-tok", "t-model", 100, 300)).ok
    refused = await budget.reserve("t2", "m-tok", "t-model", 100, 1)
    assert not refused.ok and refused.scope == MISSION and "token" in refused.reason
    assert refused.remaining_tokens == 100


async def test_daily_and_monthly_refusal_roll_back_earlier_scopes(budget):
    await budget.set_limit("daily", limit_usd=0.6, requested_by="test")
    assert (await budget.reserve("d1", "m-d1", "t-model", 100, 200)).ok    # $0.5 of the day's $0.6
    refused = await budget.reserve("d2", "m-d2", "t-model", 100, 200)
    assert not refused.ok and refused.scope == DAILY and "daily" in refused.reason
    assert refused.remaining_usd == pytest.approx(0.1)
    st = await budget.status("m-d2")
    assert scope(st, MISSION).reserved_usd == 0 and scope(st, MISSION).reservations == 0   # rolled back
    assert scope(st, DAILY).reserved_usd == pytest.approx(0.5)

    await budget.set_limit("daily", limit_usd=0)                           # no daily limit
    await budget.set_limit("monthly", limit_usd=0.7)
    assert (await budget.reserve("d3", "m-d3", "t-model", 100, 0)).ok      # $0.1: month at $0.6
    refused = await budget.reserve("d4", "m-d4", "t-model", 100, 100)      # $0.3 > $0.1 left
    assert not refused.ok and refused.scope == MONTHLY
    st = await budget.status("m-d4")
    assert scope(st, MISSION).reserved_usd == 0 and scope(st, DAILY).reserved_usd == pytest.approx(0.6)
    assert scope(st, MONTHLY).reserved_usd == pytest.approx(0.6) and scope(st, MONTHLY).limit_usd == pytest.approx(0.7)


# --------------------------------------------------------------------------- idempotency
async def test_reserve_settle_release_are_idempotent(budget):
    first = await budget.reserve("i-1", "m-i", "t-model", 100, 100)
    again = await budget.reserve("i-1", "m-i", "t-model", 100, 100)
    assert first.ok and again.ok and again.reserved_usd == first.reserved_usd
    assert again.expires_at == first.expires_at
    st = await budget.status("m-i")
    assert scope(st, MISSION).reserved_usd == pytest.approx(0.3) and scope(st, MISSION).reservations == 1

    s1 = await budget.settle("i-1", "m-i", "t-model", 100, 50)
    s2 = await budget.settle("i-1", "m-i", "t-model", 100, 50)
    assert s1.ok and s2.ok and s1.cost_usd == s2.cost_usd == pytest.approx(0.2)
    assert scope(await budget.status("m-i"), MISSION).spent_usd == pytest.approx(0.2)   # charged once
    assert (await budget.reserve("i-1", "m-i", "t-model", 100, 100)).ok                # no new reservation
    assert scope(await budget.status("m-i"), MISSION).reserved_usd == 0
    late_release = await budget.release("i-1", "m-i")
    assert late_release.ok and late_release.released_usd == 0 and "settled" in late_release.reason

    assert (await budget.reserve("i-2", "m-i", "t-model", 100, 0)).ok
    rel1 = await budget.release("i-2", "m-i")
    rel2 = await budget.release("i-2", "m-i")
    assert rel1.ok and rel2.ok and rel1.released_usd == rel2.released_usd == pytest.approx(0.1)
    assert not (await budget.reserve("i-2", "m-i", "t-model", 100, 0)).ok    # released: not reserved again
    unknown = await budget.release("never", "m-i")
    assert unknown.ok and unknown.released_usd == 0
    st = scope(await budget.status("m-i"), MISSION)
    assert st.reserved_usd == 0 and st.spent_usd == pytest.approx(0.2)


async def test_settle_past_the_reservation_reports_over_limit(budget, bus):
    before = counter(metrics.BUDGET_EXCEEDED, "mission")
    assert (await budget.reserve("o-1", "m-o", "t-model", 100, 200)).ok      # $0.5
    s = await budget.settle("o-1", "m-o", "t-model", 100, 500)               # $1.1 > $1.0 limit
    assert s.ok and s.over_limit and s.scope == MISSION and s.cost_usd == pytest.approx(1.1)
    assert s.remaining_usd == 0
    st = scope(await budget.status("m-o"), MISSION)
    assert st.spent_usd == pytest.approx(1.1) and st.remaining_usd == 0
    assert counter(metrics.BUDGET_EXCEEDED, "mission") == before + 1
    again = await budget.settle("o-1", "m-o", "t-model", 100, 500)
    assert again.over_limit and again.cost_usd == s.cost_usd
    assert counter(metrics.BUDGET_EXCEEDED, "mission") == before + 1         # not counted twice
    refused = await budget.reserve("o-2", "m-o", "t-model", 1, 0)
    assert not refused.ok and refused.scope == MISSION

    async def over_event():
        return [e for e in await timeline.read(bus, "m-o") if e.type == "budget.exceeded"]

    assert (await eventually(over_event))[0].attributes.get("over_limit") == "true"


# -------------------------------------------------------------------------------- expiry
async def test_orphaned_reservation_expires_and_late_usage_still_counts(budget):
    before = counter(metrics.BUDGET_EXPIRED)
    r = await budget.reserve("e-1", "m-e", "t-model", 100, 200, ttl_seconds=1)
    assert r.ok

    async def released():
        st = scope(await budget.status("m-e"), MISSION)
        return st.reserved_usd == 0 and st.reservations == 0

    await eventually(released, timeout=6)
    assert counter(metrics.BUDGET_EXPIRED) == before + 1            # two sweepers, released once
    assert scope(await budget.status("m-e"), DAILY).reserved_usd == 0
    rel = await budget.release("e-1", "m-e")
    assert rel.ok and rel.released_usd == pytest.approx(0.5)

    late = await budget.settle("e-1", "m-e", "t-model", 100, 100)  # the call did happen after all
    assert late.ok and late.cost_usd == pytest.approx(0.3) and "expired" in late.reason
    assert scope(await budget.status("m-e"), MISSION).spent_usd == pytest.approx(0.3)
    await budget.settle("e-1", "m-e", "t-model", 100, 100)
    assert scope(await budget.status("m-e"), MISSION).spent_usd == pytest.approx(0.3)

    unreserved = await budget.settle("u-1", "m-e", "t-model", 10, 0)  # never reserved: still charged
    assert unreserved.ok and "without a reservation" in unreserved.reason
    assert scope(await budget.status("m-e"), MISSION).spent_usd == pytest.approx(0.31)


async def test_sweeper_finishes_half_done_operations(bus, settings):
    """A replica died after the first scope of a settle, and another mid-reserve."""
    ledger = await Ledger.open(bus.js, settings)
    limits = await ledger.global_limits()
    limit_of = ledger._limit_fn(limits)
    now = ledger.clock()
    keys = [L.mission_key("m-h"), L.day_key(now), L.month_key(now)]
    # settle half-done: reserved everywhere, record settling, only the mission scope settled
    for k in keys:
        await ledger._cas(k, ledger._reserve_step("h-1", 500_000_000, 300, limit_of, now))
    rec = L.Record(id="h-1", mission_id="m-h", state=L.SETTLING, model="t-model", reserved_nusd=500_000_000,
                   reserved_tokens=300, scopes=keys, created_at=now - 5, expires_at=now + 300, updated_at=now - 5,
                   cost_nusd=200_000_000, input_tokens=100, output_tokens=50)
    await ledger._write(L.res_key("h-1"), rec.encode(), 0)
    await ledger._cas(keys[0], ledger._settle_step("h-1", 200_000_000, 150, limit_of, now))
    # reserve half-done: pending, expired, only the mission scope incremented
    await ledger._cas(keys[0], ledger._reserve_step("h-2", 100_000_000, 100, limit_of, now))
    pending = L.Record(id="h-2", mission_id="m-h", state=L.PENDING, reserved_nusd=100_000_000, reserved_tokens=100,
                       scopes=keys, created_at=now - 60, expires_at=now + 240, updated_at=now - 60)
    await ledger._write(L.res_key("h-2"), pending.encode(), 0)

    expired, _ = await ledger.sweep()
    assert expired == 1
    states = {s.scope: s for s, _ in await ledger.scopes("m-h")}
    for name in ("mission", "daily", "monthly"):
        assert states[name].spent_nusd == 200_000_000 and states[name].spent_tokens == 150   # settled once each
        assert states[name].open == {}
    assert await ledger.scan("res.>") == []
    done = {json.loads(v)["id"]: json.loads(v)["state"] for _, v, _ in await ledger.scan("done.>")}
    assert done == {"h-1": "settled", "h-2": "released"}


async def test_ids_outside_the_key_alphabet_and_a_bucket_without_message_ttl(bus, settings):
    from nats.js.api import StreamConfig

    assert L.safe_id("m-1_ok") == "m-1_ok"
    assert L.safe_id("m 1/x.y") != L.safe_id("m 1/x.z") and L.safe_id("m 1/x.y").startswith("=")
    assert L.unsafe_id(L.safe_id("m 1/x.y")) == "m 1/x.y" and L.unsafe_id("plain") == "plain"
    # an older bucket created without allow_msg_ttl: the ledger still works (keeps records longer)
    await bus.js.add_stream(StreamConfig(name="KV_oldbudget", subjects=["$KV.oldbudget.>"], max_msgs_per_subject=1))
    ledger = Ledger(bus.js, settings, bucket="oldbudget")
    mission = "mission with spaces/and.dots"
    reply, _ = await ledger.reserve(budget_pb2.ReserveRequest(reservation_id="r:1/2", mission_id=mission,
                                                              model="t-model", input_tokens=100))
    assert reply.ok and not ledger._ttl_ok
    settled, _ = await ledger.settle(budget_pb2.SettleRequest(reservation_id="r:1/2", mission_id=mission,
                                                              model="t-model", input_tokens=50))
    assert settled.ok and settled.cost_usd == pytest.approx(0.05)
    status = await ledger.status(budget_pb2.BudgetStatusRequest(mission_id=mission))
    assert scope(status, MISSION).key == mission and scope(status, MISSION).spent_usd == pytest.approx(0.05)


# ------------------------------------------------------------------------ limits, status
async def test_set_limit_and_status(budget):
    reply = await budget.set_limit("mission", mission_id="m-s", limit_usd=2.5, limit_tokens=1000, requested_by="op")
    assert reply.ok and reply.status.scope == MISSION and reply.status.limit_usd == pytest.approx(2.5)
    assert reply.status.limit_tokens == 1000 and reply.status.remaining_usd == pytest.approx(2.5)
    reply = await budget.set_limit(MISSION, mission_id="m-s", limit_tokens=0)   # usd unchanged, tokens removed
    assert reply.status.limit_usd == pytest.approx(2.5) and reply.status.limit_tokens == 0
    daily = await budget.set_limit("daily", limit_usd=12.0, limit_tokens=10_000)
    assert daily.status.scope == DAILY and daily.status.limit_usd == pytest.approx(12.0)

    st = await budget.status("m-s")
    assert st.ok and [s.scope for s in st.scopes] == [MISSION, DAILY, MONTHLY]
    assert scope(st, DAILY).limit_tokens == 10_000 and scope(st, MONTHLY).limit_usd == pytest.approx(500)
    assert len(scope(st, DAILY).key) == 10 and len(scope(st, MONTHLY).key) == 7
    assert [s.scope for s in (await budget.status()).scopes] == [DAILY, MONTHLY]
    assert (await budget.reserve("s-1", "m-s", "t-model", 1000, 500)).ok        # $2 of $2.5
    refused = await budget.reserve("s-2", "m-s", "t-model", 1000, 0)            # $1 more
    assert not refused.ok and refused.remaining_usd == pytest.approx(0.5)


async def test_invalid_requests_are_answered_400_and_the_service_keeps_serving(budget, bus):
    bad = [
        (SUBJECT_RESERVE, budget_pb2.ReserveRequest(reservation_id="", mission_id="m", model="t-model")),
        (SUBJECT_RESERVE, budget_pb2.ReserveRequest(reservation_id="x", mission_id="", model="t-model")),
        (SUBJECT_RESERVE, budget_pb2.ReserveRequest(reservation_id="x", mission_id="m", input_tokens=-1)),
        (SUBJECT_SET_LIMIT, budget_pb2.SetLimitRequest(scope=budget_pb2.BUDGET_SCOPE_UNSPECIFIED, limit_usd=1)),
        (SUBJECT_SET_LIMIT, budget_pb2.SetLimitRequest(scope=7, limit_usd=1)),
        (SUBJECT_SET_LIMIT, budget_pb2.SetLimitRequest(scope=MISSION, limit_usd=1)),
        (SUBJECT_SET_LIMIT, budget_pb2.SetLimitRequest(scope=DAILY, limit_usd=-1)),
    ]
    for subject, request in bad:
        reply_cls = budget_pb2.ReserveReply if subject == SUBJECT_RESERVE else budget_pb2.SetLimitReply
        with pytest.raises(ServiceError) as err:
            await bus.request(subject, request, reply_cls)
        assert err.value.code == "400", request
    with pytest.raises(ServiceError) as err:
        await budget.settle("x", "m", "t-model", 1, -5)
    assert err.value.code == "400"
    resp = await bus.nc.request(SUBJECT_STATUS, b"\xff\xff\xff", timeout=5)   # undecodable
    assert resp.headers["Nats-Service-Error-Code"] == "400"
    assert (await budget.status()).ok                                         # still serving
    assert (await budget.reserve("ok-after", "m", "t-model", 1, 1)).ok


# --------------------------------------------------------------------------- concurrency
async def test_twenty_concurrent_reservations_on_two_replicas_never_pass_the_limit(budget, replicas):
    await budget.set_limit("mission", mission_id="m-c", limit_usd=0.7)          # exactly 7 x $0.1
    replies = await asyncio.gather(*(budget.reserve(f"c-{i}", "m-c", "t-model", 100, 0) for i in range(20)))
    ok = [r for r in replies if r.ok]
    assert len(ok) == 7
    assert all(r.scope == MISSION for r in replies if not r.ok)
    st = await budget.status("m-c")
    m = scope(st, MISSION)
    assert m.reserved_usd == pytest.approx(0.7) and m.reservations == 7
    assert scope(st, DAILY).reserved_usd == pytest.approx(0.7)                 # refusals fully rolled back
    served = [sum(e.num_requests for e in svc.bus.micro_services[0].stats().endpoints if e.subject == SUBJECT_RESERVE)
              for svc in replicas]
    assert all(n > 0 for n in served), served                                 # both replicas took part

    await asyncio.gather(*(budget.settle(r.reservation_id, "m-c", "t-model", 100, 0) for r in ok))
    m = scope(await budget.status("m-c"), MISSION)
    ledger_spent = round(m.spent_usd * 1e9)
    assert ledger_spent == 700_000_000 and m.reserved_usd == 0
    assert max(0, ledger_spent - 700_000_000) == 0                            # overspend exactly 0


async def test_ledger_compare_and_set_under_heavy_contention(bus, settings):
    """Three ledgers (as three replicas) reserving fully concurrently, across two scopes."""
    ledgers = [await Ledger.open(bus.js, settings) for _ in range(3)]
    await ledgers[0].set_limit(budget_pb2.SetLimitRequest(scope=DAILY, limit_usd=0.5))
    conflicts_before = counter(metrics.BUDGET_CAS_CONFLICTS)

    async def one(i: int):
        req = budget_pb2.ReserveRequest(reservation_id=f"h-{i}", mission_id=f"hm-{i % 4}", model="t-model",
                                        input_tokens=100)
        reply, _ = await ledgers[i % 3].reserve(req)
        return reply

    replies = await asyncio.gather(*(one(i) for i in range(30)))
    assert sum(r.ok for r in replies) == 5                                     # the day allows 5 x $0.1
    assert {r.scope for r in replies if not r.ok} <= {MISSION, DAILY}
    assert counter(metrics.BUDGET_CAS_CONFLICTS) > conflicts_before            # it really was contended
    scopes = {s.key: s for s, _ in await ledgers[0].scopes()}
    day = next(s for s in scopes.values() if s.scope == "daily")
    assert day.reserved_nusd == 500_000_000 and len(day.open) == 5
    missions = [s for m in range(4) for s, _ in (await ledgers[0].scopes(f"hm-{m}"))[:1]]
    assert sum(s.reserved_nusd for s in missions) == 500_000_000               # no leak from rollbacks


# ------------------------------------------------------------------------- the process
async def test_service_runs_with_health_and_metrics(nats_server):
    from coo.budget.service import start
    from coo.common.service import serve_service

    settings = make_settings(nats_server, budget_daily_usd=42.0)
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve_service("budget", port, settings, start, stop=stop, install_signals=False))
    client_bus = await Bus.connect("probe", settings)
    try:
        async def ready():
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=15)
        reply = await BudgetClient(client_bus).status()
        assert scope(reply, DAILY).limit_usd == pytest.approx(42.0)
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'coo_budget_limit_usd{scope="daily"} 42.0' in body
        assert "coo_budget_remaining_usd" in body
    finally:
        await client_bus.close()
        stop.set()
        await asyncio.wait_for(task, timeout=15)


# ------------------------------------------------------------------ group commit, caching
def reserve_req(rid: str, mission: str, input_tokens: int = 100, output_tokens: int = 0) -> budget_pb2.ReserveRequest:
    return budget_pb2.ReserveRequest(reservation_id=rid, mission_id=mission, model="t-model",
                                     input_tokens=input_tokens, max_output_tokens=output_tokens)


def settle_req(rid: str, mission: str, input_tokens: int = 100) -> budget_pb2.SettleRequest:
    return budget_pb2.SettleRequest(reservation_id=rid, mission_id=mission, model="t-model",
                                    input_tokens=input_tokens, output_tokens=0)


@pytest.fixture
async def two_ledgers(settings):
    """Two ledgers on two NATS connections: two replicas, as the group commit sees them."""
    buses = [await Bus.connect(f"ledger-{i}", settings) for i in range(2)]
    await buses[0].ensure_topology()
    ledgers = [await Ledger.open(b.js, settings) for b in buses]
    try:
        yield ledgers
    finally:
        for lg in ledgers:
            await lg.close()
        for b in buses:
            await b.close()


async def test_many_concurrent_reservations_on_two_replicas_give_exactly_the_allowed_number(budget, replicas):
    """120 reservations at once through two service replicas, six missions of $0.7 and a day of $3:
    exactly 30 pass (the day binds before the missions), none leaks, settling charges each once."""
    await budget.set_limit("daily", limit_usd=3.0)
    missions = [f"gc-m{k}" for k in range(6)]
    for m in missions:
        await budget.set_limit("mission", mission_id=m, limit_usd=0.7)
    replies = await asyncio.gather(*(budget.reserve(f"gc-{i}", missions[i % 6], "t-model", 100, 0)
                                     for i in range(120)))
    ok = [(i, r) for i, r in enumerate(replies) if r.ok]
    assert len(ok) == 30
    assert {r.scope for r in replies if not r.ok} <= {MISSION, DAILY}
    per_mission = {m: sum(1 for i, _ in ok if missions[i % 6] == m) for m in missions}
    assert all(n <= 7 for n in per_mission.values()), per_mission
    day = scope(await budget.status(), DAILY)
    assert round(day.reserved_usd * 1e9) == 3_000_000_000 and day.reservations == 30
    reserved = 0
    for m in missions:
        s = scope(await budget.status(m), MISSION)
        assert s.reservations == per_mission[m]
        reserved += round(s.reserved_usd * 1e9)
    assert reserved == 3_000_000_000                                        # refusals rolled back exactly

    settles = await asyncio.gather(*(budget.settle(f"gc-{i}", missions[i % 6], "t-model", 100, 0) for i, _ in ok))
    assert all(s.ok and not s.over_limit for s in settles)
    day = scope(await budget.status(), DAILY)
    assert round(day.spent_usd * 1e9) == 3_000_000_000 and day.reserved_usd == 0 and day.reservations == 0
    spent = sum([round(scope(await budget.status(m), MISSION).spent_usd * 1e9) for m in missions])
    assert spent == 3_000_000_000                                           # overspend exactly 0
    assert all(sum(e.num_requests for e in svc.bus.micro_services[0].stats().endpoints
                   if e.subject == SUBJECT_RESERVE) > 0 for svc in replicas)


async def test_group_commit_coalesces_steps_and_stays_exact_across_two_replicas(two_ledgers):
    """Many reservations at once on two ledgers: several steps go into one compare-and-set write,
    conflicts only happen between the replicas, and the limit is met exactly."""
    a, b = two_ledgers
    await a.set_limit(budget_pb2.SetLimitRequest(scope=MISSION, mission_id="gm", limit_usd=4.0))   # 40 x $0.1
    replies = await asyncio.gather(*((a, b)[i % 2].reserve(reserve_req(f"g-{i}", "gm")) for i in range(100)))
    ok = [i for i, (r, _) in enumerate(replies) if r.ok]
    assert len(ok) == 40
    for lg in (a, b):
        assert lg.stats["steps"] > lg.stats["groups"]                       # steps were coalesced
    await asyncio.gather(*((b, a)[i % 2].settle(settle_req(f"g-{i}", "gm")) for i in ok))
    (m, _), (d, _), (mo, _) = await a.scopes("gm")
    for s in (m, d, mo):
        assert s.spent_nusd == 4_000_000_000 and s.open == {} and s.spent_tokens == 4000
        assert s.closed == {}            # complete reservations (and refusals by the first scope) leave no marker


async def test_same_reservation_at_once_on_two_replicas_counts_once(two_ledgers):
    a, b = two_ledgers
    replies = await asyncio.gather(*((a, b)[i % 2].reserve(reserve_req("same-1", "gs", 100, 100)) for i in range(10)))
    assert all(r.ok for r, _ in replies)                                     # the others answer from it
    (m, _), (d, _), _ = await a.scopes("gs")
    assert m.open == {"same-1": [300_000_000, 200]} and d.open == {"same-1": [300_000_000, 200]}
    settled = await asyncio.gather(*((a, b)[i % 2].settle(settle_req("same-1", "gs", 100)) for i in range(10)))
    assert all(r.ok and r.cost_usd == pytest.approx(0.1) for r, _ in settled)
    for s, _ in await b.scopes("gs"):
        assert s.spent_nusd == 100_000_000 and s.open == {}                   # charged once per scope
    released = await asyncio.gather(*((a, b)[i % 2].release(budget_pb2.ReleaseRequest(reservation_id="same-1"))
                                      for i in range(4)))
    assert all(r.ok and r.released_usd == 0 for r, _ in released)


async def test_a_remembered_state_never_decides_alone(two_ledgers):
    """Replica A keeps the day it wrote last; B changes the day behind its back. A refusal is
    re-checked on a fresh read, and a grant on the stale state loses its compare-and-set."""
    a, b = two_ledgers
    await a.set_limit(budget_pb2.SetLimitRequest(scope=DAILY, limit_usd=0.2))
    assert (await a.reserve(reserve_req("s-1", "sa")))[0].ok
    assert (await a.reserve(reserve_req("s-2", "sb")))[0].ok                  # A remembers a full day
    assert (await b.release(budget_pb2.ReleaseRequest(reservation_id="s-1")))[0].ok
    reply, _ = await a.reserve(reserve_req("s-3", "sc"))
    assert reply.ok                                                         # not refused on the stale day

    assert (await a.release(budget_pb2.ReleaseRequest(reservation_id="s-2")))[0].ok   # A: room for one
    assert (await b.reserve(reserve_req("s-4", "sd")))[0].ok                # the day is full again...
    conflicts = a.stats["cas_conflicts"]
    reply, _ = await a.reserve(reserve_req("s-5", "se"))                    # ...but A remembers room
    assert not reply.ok and reply.scope == DAILY
    assert a.stats["cas_conflicts"] > conflicts                             # its stale write lost the race
    day = next(s for s, _ in await a.scopes() if s.scope == "daily")
    assert day.reserved_nusd == 200_000_000 and sorted(day.open) == ["s-3", "s-4"]
    (m, _), _, _ = await a.scopes("se")
    assert m.open == {}                                                     # its mission step rolled back


async def test_round_trips_per_operation_and_markers_pruned_by_the_next_write(bus, settings):
    """One replica, warm: a reserve+settle reads no scope ledger back (it wrote them last) and
    leaves no closed marker; a refusal's rollback does, and the first write after
    budget_marker_seconds drops it."""
    now = [1_790_000_000.0]
    ledger = await Ledger.open(bus.js, settings, clock=lambda: now[0])
    try:
        assert (await ledger.reserve(reserve_req("rt-0", "rt")))[0].ok
        await ledger.settle(settle_req("rt-0", "rt"))
        before = dict(ledger.stats)
        assert (await ledger.reserve(reserve_req("rt-1", "rt")))[0].ok
        await ledger.settle(settle_req("rt-1", "rt"))
        delta = {k: ledger.stats[k] - before[k] for k in before}
        # reserve: record + done + two limits read at once; settle: record + limits; nothing else
        assert delta["gets"] == 7, delta
        # pending, 3 scopes, reserved; settling, 3 scopes, done; then one purge
        assert delta["writes"] == 10 and delta["purges"] == 1 and delta["cas_conflicts"] == 0, delta
        scopes = {s.scope: s for s, _ in await ledger.scopes("rt")}
        assert all(s.closed == {} and s.open == {} for s in scopes.values())
        assert scopes["mission"].spent_nusd == scopes["daily"].spent_nusd == 200_000_000

        refused, _ = await ledger.reserve(reserve_req("rt-big", "rt", 100, 400))       # $0.9 > $0.8 left
        assert not refused.ok and refused.scope == MISSION
        await ledger.set_limit(budget_pb2.SetLimitRequest(scope=DAILY, limit_usd=0.25))   # $0.2 spent
        refused, _ = await ledger.reserve(reserve_req("rt-2", "rt2"))                   # the day refuses...
        assert not refused.ok and refused.scope == DAILY
        (m2, _), _, _ = await ledger.scopes("rt2")
        assert m2.open == {} and list(m2.closed) == ["rt-2"]                            # ...its mission rolled back
        now[0] += settings.budget_marker_seconds + 1
        await ledger.set_limit(budget_pb2.SetLimitRequest(scope=DAILY, limit_usd=0))
        assert (await ledger.reserve(reserve_req("rt-3", "rt2")))[0].ok
        (m2, _), _, _ = await ledger.scopes("rt2")
        assert m2.closed == {} and list(m2.open) == ["rt-3"]
    finally:
        await ledger.close()


async def test_a_refused_reservation_retried_with_its_id_is_refused_again(budget):
    """The retry of a refused request (e.g. its reply was lost) must not be granted half-counted:
    the mission scope that rolled it back remembers the id."""
    await budget.set_limit("daily", limit_usd=0.15)
    assert (await budget.reserve("x-1", "m-x1", "t-model", 100, 0)).ok           # $0.1 of the day's $0.15
    first = await budget.reserve("x-2", "m-x2", "t-model", 100, 0)
    assert not first.ok and first.scope == DAILY                                   # mission m-x2 rolled back
    assert (await budget.release("x-1", "m-x1")).ok                                # the day has room again
    retry = await budget.reserve("x-2", "m-x2", "t-model", 100, 0)
    assert not retry.ok and "refused" in retry.reason
    st = await budget.status("m-x2")
    assert scope(st, MISSION).reserved_usd == 0 and scope(st, DAILY).reserved_usd == 0
    assert (await budget.reserve("x-3", "m-x2", "t-model", 100, 0)).ok             # a new id is fine
    st = await budget.status("m-x2")
    assert scope(st, MISSION).reservations == 1 and scope(st, DAILY).reservations == 1


async def test_concurrent_requests_share_limit_reads_and_see_a_limit_set_before(two_ledgers):
    a, b = two_ledgers
    before = b.stats["gets"]
    results = await asyncio.gather(*(b.global_limits() for _ in range(20)))
    assert all(r == results[0] for r in results)
    assert b.stats["gets"] - before <= 4                                    # two shared reads at most
    await a.set_limit(budget_pb2.SetLimitRequest(scope=DAILY, limit_usd=0.1))
    assert (await b.global_limits())[L.DAILY].nusd == 100_000_000           # answered before: seen
    replies = await asyncio.gather(*(b.reserve(reserve_req(f"lim-{i}", f"lm-{i}")) for i in range(5)))
    assert sum(r.ok for r, _ in replies) == 1
    day = next(s for s, _ in await a.scopes() if s.scope == "daily")
    assert day.reserved_nusd == 100_000_000


async def test_remembered_keys_are_bounded(bus, settings, monkeypatch):
    monkeypatch.setattr(L, "_KEYS_MAX", 8)
    ledger = await Ledger.open(bus.js, settings)
    try:
        for i in range(20):
            assert (await ledger.reserve(reserve_req(f"ev-{i}", f"ev-m{i}")))[0].ok
        assert len(ledger._keys) <= 8
        assert L.day_key(ledger.clock()) in ledger._keys                     # the busy keys stay
        assert (await ledger.settle(settle_req("ev-0", "ev-m0")))[0].ok      # a forgotten key is read again
        (m, _), _, _ = await ledger.scopes("ev-m0")
        assert m.spent_nusd == 100_000_000 and m.open == {}
    finally:
        await ledger.close()


async def test_half_done_settle_of_a_complete_reservation_is_finished_once_by_two_sweepers(two_ledgers, settings):
    """A replica died after settling the mission scope of a complete reservation (no marker
    written): both replicas' sweepers drive it at once, and every scope is charged exactly once."""
    a, b = two_ledgers
    assert (await a.reserve(reserve_req("k-1", "mk", 100, 100)))[0].ok             # $0.3 reserved
    rec = L.Record.decode((await a._get(L.res_key("k-1")))[0])
    assert rec.state == L.RESERVED
    _, rev = await a._get(L.res_key("k-1"))
    rec.state, rec.complete, rec.cost_nusd, rec.input_tokens = L.SETTLING, True, 100_000_000, 100
    rec.updated_at = a.clock() - 60                                                # stuck long enough
    rev = await a._write(L.res_key("k-1"), rec.encode(), rev)
    limit_of = a._limit_fn(await a.global_limits())
    await a._cas(rec.scopes[0], a._settle_step("k-1", 100_000_000, 100, limit_of, a.clock(), marked=False))
    await asyncio.gather(a.sweep(), b.sweep(), a.sweep())
    for s, _ in await a.scopes("mk"):
        assert s.spent_nusd == 100_000_000 and s.spent_tokens == 100 and s.open == {} and s.closed == {}
    assert await a.scan("res.>") == []
    again, _ = await b.settle(settle_req("k-1", "mk"))                              # a retried settle
    assert again.ok and again.cost_usd == pytest.approx(0.1)
    for s, _ in await b.scopes("mk"):
        assert s.spent_nusd == 100_000_000

"""The budget's reservation model on its own (no bus): keys, limits, scope steps, record changes."""

from __future__ import annotations

import json

from coo.budget import model as M
from coo.budget.model import DAILY, MISSION, MONTHLY, Limit, Record, ScopeState

NOW = 1_790_000_000.0          # 2026-09-21 UTC
RATIO = 0.8


def state(key: str = "mission.m-1", **kw) -> ScopeState:
    s = ScopeState.new(key)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


MISSION_LIMIT, DAILY_LIMIT, NO_LIMIT = Limit(1000, 0), Limit(5000, 0), Limit(0, 0)


def limits(mission: Limit = MISSION_LIMIT, daily: Limit = DAILY_LIMIT, monthly: Limit = NO_LIMIT):
    return M.limit_fn({DAILY: daily, MONTHLY: monthly}, mission)


def test_keys_and_ids():
    assert M.mission_key("m-1") == "mission.m-1" and M.res_key("r 1").startswith("res.=")
    assert M.unsafe_id(M.safe_id("a/b.c d")) == "a/b.c d" and M.safe_id("plain_1-x") == "plain_1-x"
    assert M.day_key(NOW) == "day.2026-09-21" and M.month_key(NOW) == "month.2026-09"
    assert [M.scope_of(k) for k in ("mission.x", "day.2026-09-21", "month.2026-09")] == [MISSION, DAILY, MONTHLY]
    assert ScopeState.new(M.mission_key("a b")).key == "a b"


def test_scope_state_round_trip_and_prune():
    s = state(spent_nusd=7, open={"r": [3, 4]}, closed={"old": ["r", NOW - 200], "new": ["s", NOW - 5]},
              limit_nusd=10, warned=True, updated_at=NOW)
    back = ScopeState.decode("mission.m-1", s.encode())
    assert back == s and back.committed() == (10, 4) and back.reservations == 1
    back.prune(NOW, 120)
    assert list(back.closed) == ["new"]
    assert ScopeState.decode("day.2026-09-21", None) == ScopeState(scope=DAILY, key="2026-09-21")


def test_limits_mission_override_and_defaults():
    limit_of = limits()
    assert limit_of(state()) == Limit(1000, 0)
    assert limit_of(state(limit_nusd=50)) == Limit(50, 0)
    assert limit_of(state("day.2026-09-21")) == Limit(5000, 0)
    assert M.override(None, Limit(5, 6)) == Limit(5, 6)
    assert M.override(json.dumps({"limit_nusd": 9, "limit_tokens": None}).encode(), Limit(5, 6)) == Limit(9, 6)
    raw = M.set_override(None, None, 100, "ops", NOW)
    assert json.loads(raw) == {"limit_nusd": None, "limit_tokens": 100, "requested_by": "ops", "updated_at": NOW}
    assert M.override(M.set_override(raw, 0, None, "ops", NOW), Limit(5, 6)) == Limit(0, 100)


def test_reserve_step_checks_the_limit_and_is_idempotent():
    limit_of = limits()
    s = state(spent_nusd=600)
    first = M.reserve_step("r1", 300, 10, limit_of, NOW, RATIO)(s)
    assert first.applied and s.open == {"r1": [300, 10]} and first.warn_first and s.warned     # 900 >= 800
    again = M.reserve_step("r1", 300, 10, limit_of, NOW, RATIO)(s)
    assert not again.applied and not again.refused and s.reserved_nusd == 300
    refused = M.reserve_step("r2", 101, 1, limit_of, NOW, RATIO)(s)
    assert refused.refused == "usd" and refused.need == 101 and refused.available == 100 and "r2" not in s.open
    assert M.reserve_step("r3", 100, 1, limit_of, NOW, RATIO)(s).applied                      # exactly the limit
    tokens = M.reserve_step("t", 0, 11, limits(mission=Limit(0, 10)), NOW, RATIO)(state())
    assert tokens.refused == "tokens" and tokens.available == 10


def test_a_scope_that_closed_the_id_refuses_to_reopen_it():
    limit_of = limits()
    s = state()
    assert M.reserve_step("r", 10, 1, limit_of, NOW, RATIO)(s).applied
    assert M.release_step("r", limit_of, NOW)(s).applied and s.closed == {"r": ["r", NOW]}
    assert M.reserve_step("r", 10, 1, limit_of, NOW, RATIO)(s).closed and s.open == {}
    assert not M.release_step("r", limit_of, NOW)(s).applied                                  # released once


def test_settle_charges_once_with_or_without_a_marker():
    limit_of = limits()
    s = state(open={"a": [500, 5], "b": [500, 5]})
    r = M.settle_step("a", 1200, 7, limit_of, NOW, RATIO)(s)
    assert r.applied and r.over and s.spent_nusd == 1200 and s.closed == {"a": ["s", NOW]}
    assert not M.settle_step("a", 1200, 7, limit_of, NOW, RATIO)(s).applied and s.spent_nusd == 1200
    unmarked = M.settle_step("b", 100, 1, limit_of, NOW, RATIO, marked=False)
    assert unmarked(s).applied and "b" not in s.closed and s.spent_nusd == 1300
    assert not unmarked(s).applied and s.spent_nusd == 1300                   # not open any more: done


def test_stages_and_summary():
    scopes = ["mission.m", "day.2026-09-21", "month.2026-09"]
    assert M.reserve_stages(scopes, {DAILY: Limit(1, 0), MONTHLY: Limit(0, 0)}) == [
        ["mission.m", "month.2026-09"], ["day.2026-09-21"]]
    assert M.reserve_stages(scopes, {DAILY: Limit(1, 0), MONTHLY: Limit(0, 5)}) == [[s] for s in scopes]
    a = M.StepResult(state(spent_nusd=700), Limit(1000, 0))
    b = M.StepResult(state("day.2026-09-21", spent_nusd=100), Limit(5000, 50))
    assert M.summary([a, b], RATIO) == (300, 50, False)
    a.state.spent_nusd = 1200
    assert M.summary([a, b], RATIO) == (0, 50, True)
    assert M.summary([M.StepResult(state(), Limit())], RATIO) == (None, None, False)


def test_record_transitions():
    rec = M.new_reservation("r", "m", model="x", task_id="t", role="engineer", nusd=10, tokens=2, ttl=60, now=NOW)
    assert rec.state == M.PENDING and rec.scopes == ["mission.m", "day.2026-09-21", "month.2026-09"]
    assert Record.decode(rec.encode()) == rec and M.expiry_deadline(rec, 10, 4) == NOW + 22
    rec.state = M.RESERVED
    assert M.expiry_deadline(rec, 10, 4) == NOW + 60
    M.begin_settle(rec, 7, "x", 3, 4, NOW + 1)
    assert rec.state == M.SETTLING and rec.complete and not rec.late and rec.settle_tokens == 7
    released = M.new_reservation("q", "m", model="x", task_id="", role="", nusd=1, tokens=1, ttl=1, now=NOW)
    M.begin_release(released, "done", NOW)
    assert released.state == M.RELEASING and not released.complete
    released.state = M.RELEASED
    M.begin_settle(released, 5, "x", 1, 1, NOW)
    assert released.late and not released.complete and M.settle_reason(released).startswith("the reservation had")
    orphan = M.unreserved_settlement("z", "m", "x", NOW)
    M.begin_settle(orphan, 5, "x", 1, 1, NOW)
    assert orphan.late and orphan.unreserved and M.settle_reason(orphan).startswith("settled without")


def test_mark_settled_reports_the_first_scope_over_its_limit():
    rec = M.new_reservation("r", "m", model="x", task_id="", role="", nusd=10, tokens=2, ttl=60, now=NOW)
    results = [M.StepResult(state(spent_nusd=50), Limit(100, 0)),
               M.StepResult(state("day.2026-09-21", spent_nusd=60), Limit(50, 0), over=True)]
    M.mark_settled(rec, results, RATIO)
    assert rec.state == M.SETTLED and rec.over_limit and rec.over_scope == DAILY and rec.remaining_nusd == 0
    event = M.over_limit_event(rec, 60)
    assert event.type == "budget.exceeded" and event.attributes["scope"] == DAILY

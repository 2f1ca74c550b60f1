"""The mission pipeline end to end: every service a real process, a real nats-server, the mock
LLM over HTTP, code really run in the bubblewrap sandbox."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections import Counter

import httpx
import pytest

from tests.harness import TEST_READ_TOKEN, TEST_TOKEN, ServiceStack, process_stack

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make test installs it)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with process_stack(tmp_path_factory.mktemp("stack"), {"COO_BUDGET_ON_EXCEEDED": "fail"}) as s:
        yield s


def _types(events):
    return [e["type"] for e in events]


def _executions(stack: ServiceStack) -> Counter:
    """Sandbox runs actually executed, by run id, from every sandbox log line."""
    runs: Counter = Counter()
    for line in stack.log("sandbox").splitlines():
        if '"sandbox run executed"' in line:
            runs[json.loads(line)["run_id"]] += 1
    return runs


def test_mission_completes_with_the_full_timeline(stack):
    m = stack.submit("write a FizzBuzz function with tests")
    assert m["status"] == "planning" and re.fullmatch(r"[0-9a-f]{32}", m["trace_id"])
    done = stack.wait_status(m["mission_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert done["retries"] == 0 and done["cost_usd"] > 0 and done["tokens"]["input"] > 0
    assert done["tasks"][0]["status"] == "passed"
    assert any(f["name"].endswith(".py") for f in done["artifacts"])
    events = stack.timeline(m["mission_id"])
    order = [t for t in _types(events)
             if t in ("mission.planned", "task.started", "sandbox.executed", "task.reviewed", "mission.completed")]
    assert order == ["mission.planned", "task.started", "sandbox.executed", "task.reviewed", "mission.completed"]
    assert _types(events)[0] == "mission.created"
    sandbox_event = next(e for e in events if e["type"] == "sandbox.executed")
    assert sandbox_event["attributes"]["outcome"] == "ok"


def test_failing_first_attempt_is_retried(stack):
    m = stack.submit("write a word counter with tests [mock:flaky]")
    done = stack.wait_status(m["mission_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert done["retries"] == 1 and done["tasks"][0]["attempts"] == 2
    types = _types(stack.timeline(m["mission_id"]))
    assert types.count("sandbox.executed") == 2 and "task.retry" in types


def test_expensive_mission_ends_budget_exceeded_without_overspend(stack):
    m = stack.submit("write a palindrome checker [mock:expensive]", budget_usd=0.05)
    done = stack.wait_status(m["mission_id"], {"completed", "failed", "budget_exceeded"})
    assert done["status"] == "budget_exceeded", done
    assert "budget.exceeded" in _types(stack.timeline(m["mission_id"]))

    async def ledger():
        from coo.budget.client import BudgetClient
        from coo.common.bus import Bus
        from coo.common.config import CommonSettings

        bus = await Bus.connect("test", CommonSettings(nats_url=stack.nats.url))
        try:
            return await BudgetClient(bus).status(mission_id=m["mission_id"])
        finally:
            await bus.close()

    status = asyncio.run(ledger())
    mission_scope = next(s for s in status.scopes if s.key == m["mission_id"])
    # Reservations are worst case: nothing refused ever went out, and nothing is left reserved.
    assert mission_scope.reserved_usd == pytest.approx(0, abs=1e-9)
    assert 0 < mission_scope.spent_usd <= mission_scope.limit_usd + 1e-9
    assert done["cost_usd"] == pytest.approx(mission_scope.spent_usd, rel=1e-6)


def test_pause_stops_progress_and_resume_continues(stack):
    m = stack.submit("write a Roman numerals converter with tests [mock:slow=1]")
    mid = m["mission_id"]
    with stack.api() as api:
        assert api.post(f"/v1/missions/{mid}/control", json={"action": "pause"}).status_code == 202
        paused = stack.wait_status(mid, "paused", timeout=20)
        assert "paused by" in paused["status_reason"]
        again = api.post(f"/v1/missions/{mid}/control", json={"action": "pause"})
        assert again.status_code == 409
        time.sleep(3)  # the in-flight LLM answer arrives and is parked, not applied
        held = stack.mission(mid)
        assert held["status"] == "paused" and held["updated_at"] is not None
        types = _types(stack.timeline(mid))
        assert "task.started" not in types
        assert api.post(f"/v1/missions/{mid}/control", json={"action": "resume"}).status_code == 202
    done = stack.wait_status(mid, {"completed", "failed"}, timeout=120)
    assert done["status"] == "completed", done
    types = _types(stack.timeline(mid))
    assert types.index("mission.paused") < types.index("mission.resumed") < types.index("task.started")


def test_resume_of_a_running_mission_is_refused_and_cancel_works(stack):
    m = stack.submit("write a Fibonacci function with tests [mock:slow=2]")
    mid = m["mission_id"]
    with stack.api() as api:
        resp = api.post(f"/v1/missions/{mid}/control", json={"action": "resume"})
        assert resp.status_code == 409 and "not paused" in resp.json()["detail"]
        assert api.post(f"/v1/missions/{mid}/control", json={"action": "cancel", "reason": "test"}).status_code == 202
    done = stack.wait_status(mid, "cancelled", timeout=20)
    assert "cancelled by" in done["status_reason"]
    time.sleep(2.5)
    assert stack.mission(mid)["status"] == "cancelled"  # late results change nothing


def test_approval_gate(stack):
    m = stack.submit("write a stack class with tests", require_approval=True)
    mid = m["mission_id"]
    waiting = stack.wait_status(mid, "awaiting_approval", timeout=30)
    assert waiting["tasks"] and waiting["tasks"][0]["status"] == "pending"
    with stack.api() as api:
        assert api.post(f"/v1/missions/{mid}/control", json={"action": "approve"}).status_code == 202
    assert stack.wait_status(mid, {"completed", "failed"})["status"] == "completed"
    assert "mission.approved" in _types(stack.timeline(mid))


@pytest.mark.parametrize("victim", ["agent", "sandbox", "budget", "orchestrator", "mockllm"])
def test_service_killed_mid_mission_recovers(stack, victim):
    m = stack.submit("write an ISO date parser with tests [mock:slow=0.5]")
    mid = m["mission_id"]
    time.sleep(0.8)
    stack.kill(victim)
    time.sleep(0.5)
    stack.start(victim)
    done = stack.wait_status(mid, {"completed", "failed"}, timeout=180)
    assert done["status"] == "completed", (victim, done)
    runs = _executions(stack)
    assert runs and max(runs.values()) == 1, runs


def test_poison_message_lands_in_dlq_and_replay_puts_it_back(stack):
    async def poison():
        import nats

        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        await js.publish("coo.results.agent", b"\x00\xff not protobuf",
                         headers={"Coo-Type": "coo.v1.AgentResult", "Nats-Msg-Id": "poison-1"})
        await nc.close()

    asyncio.run(poison())
    deadline = time.monotonic() + 15
    with stack.api() as api:
        while time.monotonic() < deadline:
            letters = api.get("/v1/dlq").json()["dead_letters"]
            ours = [d for d in letters if "undecodable coo.v1.AgentResult" in d["reason"]]
            if ours:
                break
            time.sleep(0.2)
        assert ours, letters
        entry = ours[0]
        assert entry["stream"] == "COO_RESULTS" and entry["kind"] == "terminated"
        assert api.post(f"/v1/dlq/{entry['dlq_id']}/replay").status_code == 200
        # replayed, it is dead-lettered again (still garbage) — under a new entry, with the same reason
        time.sleep(1.0)
        again = [d for d in api.get("/v1/dlq").json()["dead_letters"] if "undecodable" in d["reason"]]
        assert again and all(d["dlq_id"] != entry["dlq_id"] for d in again)
        assert api.post("/v1/dlq/999999/replay").status_code == 404
        # the services kept serving
    assert stack.wait_status(stack.submit("write a CSV column summer")["mission_id"],
                             {"completed", "failed"})["status"] == "completed"


def test_bad_api_input_gets_clear_4xx(stack):
    base = stack.url("orchestrator")
    auth = {"Authorization": f"Bearer {TEST_TOKEN}"}
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/v1/missions/m-does-not-exist", headers=auth).status_code == 404
        assert c.get("/v1/missions/" + "x" * 500, headers=auth).status_code == 404
        assert c.post("/v1/missions", json={"goal": "x"}).status_code == 401
        assert c.post("/v1/missions", json={"goal": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/missions", json={"goal": "x"}, headers={"Authorization": "Basic abc"}).status_code == 401
        assert c.post("/v1/missions", json={}, headers=auth).status_code == 422
        assert c.post("/v1/missions", json={"goal": ""}, headers=auth).status_code == 422
        assert c.post("/v1/missions", json={"goal": "x" * 5000}, headers=auth).status_code == 422
        assert c.post("/v1/missions", json={"goal": "x", "budget_usd": -1}, headers=auth).status_code == 422
        assert c.post("/v1/missions", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
                      ).status_code == 422
        assert c.post("/v1/missions/m-nope/control", json={"action": "pause"}, headers=auth).status_code == 404
        assert c.post("/v1/missions/m-nope/control", json={"action": "explode"}, headers=auth).status_code == 422
        assert c.get("/v1/missions", params={"status": "nonsense"}, headers=auth).status_code == 422
        assert c.get("/v1/missions", params={"limit": 0}, headers=auth).status_code == 422
        assert c.get("/openapi.json").json()["info"]["title"] == "COO orchestrator"


def test_coo_run_waits_and_prints_json(stack):
    import os
    import subprocess
    import sys

    env = {**os.environ, "COO_API_URL": stack.url("orchestrator"), "COO_API_TOKEN": TEST_TOKEN}
    coo = [sys.executable, "-m", "coo.cli"]
    res = subprocess.run([*coo, "run", "write a FizzBuzz function with tests", "--wait", "--json", "--budget", "0.5"],
                         capture_output=True, text=True, env=env, check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "completed" and out["cost_usd"] > 0 and re.fullmatch(r"[0-9a-f]{32}", out["trace_id"])
    assert stack.mission(out["mission_id"])["budget_usd"] == 0.5

    human = subprocess.run([*coo, "run", "write a word counter", "--wait"], capture_output=True, text=True, env=env,
                           check=False, timeout=120)
    assert human.returncode == 0, human.stderr
    assert "completed" in human.stdout and "trace" in human.stdout and "cost $" in human.stdout

    bad = subprocess.run([*coo, "run", "x"], capture_output=True, text=True, check=False, timeout=60,
                         env={**env, "COO_API_TOKEN": "wrong"})
    assert bad.returncode == 1 and "invalid token" in bad.stderr and "Traceback" not in bad.stderr
    down = subprocess.run([*coo, "run", "x"], capture_output=True, text=True, check=False, timeout=60,
                          env={**env, "COO_API_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1 and "not reachable" in down.stderr


def test_budget_alert_webhook_closes_admission_in_its_scope(stack):
    import os
    import subprocess
    import sys

    alert = {"version": "4", "status": "firing", "receiver": "coo-orchestrator", "alerts": [
        {"status": "firing", "labels": {"alertname": "BudgetExceeded", "scope": "daily", "severity": "critical"},
         "annotations": {"summary": "daily budget exceeded"}}]}
    with stack.api() as api:
        assert httpx.post(stack.url("orchestrator", "/v1/alerts"), json=alert, timeout=10).status_code == 401
        resp = api.post("/v1/alerts", json=alert)
        assert resp.status_code == 200 and resp.json()["changes"] == [{"scope": "daily", "admission": "closed"}]
        status = api.get("/v1/status").json()
        assert status["admission"] == "closed" and "daily" in status["blocked_scopes"]
        refused = api.post("/v1/missions", json={"goal": "write a FizzBuzz function"})
        assert refused.status_code == 429 and "daily budget is exhausted" in refused.json()["detail"]
        assert refused.headers["Retry-After"]
        # the CLI as a read-only operator: the read token is enough to see admission closed
        env = {**os.environ, "COO_API_URL": stack.url("orchestrator"), "COO_API_READ_TOKEN": TEST_READ_TOKEN}
        env.pop("COO_API_TOKEN", None)
        shown = subprocess.run([sys.executable, "-m", "coo.cli", "status"], capture_output=True, text=True,
                               env=env, check=False, timeout=60)
        assert "closed for the daily budget" in shown.stdout
        events = api.get("/v1/system/timeline").json()["events"]
        assert any(e["type"] == "admission.closed" and e["attributes"]["scope"] == "daily" for e in events)
        resolved = {**alert, "status": "resolved", "alerts": [{**alert["alerts"][0], "status": "resolved"}]}
        assert api.post("/v1/alerts", json=resolved).json()["changes"] == [{"scope": "daily", "admission": "open"}]
        assert api.get("/v1/status").json()["admission"] == "open"
        assert api.post("/v1/missions", json={"goal": "write a FizzBuzz function"}).status_code == 201

"""The whole embedded stack, as `coo up` runs it (supervisord, every component a process on free
loopback ports): traces in Jaeger, metrics in Prometheus, alerts through Alertmanager to the
orchestrator, and canary secrets in no sink."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from datetime import datetime

import httpx
import pytest

from coo.stack import supervisor
from coo.stack.components import StackSettings
from tests.harness import CANARIES, ECHO, assert_every_panel_has_data, canary_goal

pytestmark = pytest.mark.stack

REQUIRED_SPANS = {"invoke_workflow coo.mission", "invoke_agent coo", "invoke_agent engineer", "invoke_agent qa",
                  "execute_tool sandbox"}


@pytest.fixture(scope="module")
def stack(embedded):  # the session's one embedded stack (tests/stack_fixture.py)
    return Stack(*embedded)


class Stack:
    def __init__(self, s: StackSettings, token: str) -> None:
        self.s = s
        self.token = token
        self.api = httpx.Client(base_url=s.url(s.orchestrator_port), timeout=10,
                                headers={"Authorization": f"Bearer {token}"})

    def submit(self, goal: str, **body) -> dict:
        resp = self.api.post("/v1/missions", json={"goal": goal, **body})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def wait(self, mission_id: str, statuses, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            m = self.api.get(f"/v1/missions/{mission_id}").json()
            if m["status"] in statuses:
                return m
            assert time.monotonic() < deadline, m
            time.sleep(0.2)

    def control(self, mission_id: str, action: str) -> None:
        assert self.api.post(f"/v1/missions/{mission_id}/control", json={"action": action}).status_code == 202

    def jaeger(self, path: str, **params) -> dict:
        return httpx.get(self.s.url(self.s.jaeger_query_port, path), params=params, timeout=10).json()

    def traces_of(self, mission_id: str) -> list[dict]:
        tags = json.dumps({"mission.id": mission_id})
        return self.jaeger("/api/traces", service="orchestrator", tags=tags, limit=20, lookback="1h")["data"]

    def viewer(self, method: str, *params: str) -> str:
        """A JSON-RPC call to the trace UI (otel-desktop-viewer: what its own pages call), as text."""
        resp = httpx.post(self.s.url(self.s.viewer_port, "/rpc"), timeout=10,
                          json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        assert resp.status_code == 200 and "error" not in resp.json(), resp.text
        return resp.text

    def prom(self, expr: str) -> list:
        resp = httpx.get(self.s.url(self.s.prometheus_port, "/api/v1/query"), params={"query": expr}, timeout=10)
        body = resp.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def supervisor(self):
        return supervisor.rpc(self.s).supervisor

    def log(self, name: str) -> str:
        path = self.s.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wait_trace(stack: Stack, mission_id: str, services=("orchestrator", "agent", "budget", "sandbox"),
                timeout: float = 45) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        traces = stack.traces_of(mission_id)
        if traces:
            seen = {traces[0]["processes"][s["processID"]]["serviceName"] for s in traces[0]["spans"]}
            names = {s["operationName"] for s in traces[0]["spans"]}
            if set(services) <= seen and names >= REQUIRED_SPANS:
                return traces
        assert time.monotonic() < deadline, f"trace of {mission_id} incomplete: {traces and seen}"
        time.sleep(1)


def _assert_one_intact_trace(traces: list[dict], *, allow_orphans: bool = False) -> dict:
    assert len(traces) == 1, f"{len(traces)} traces for one mission"
    trace = traces[0]
    spans = trace["spans"]
    ids = {s["spanID"] for s in spans}
    assert len({s["traceID"] for s in spans}) == 1
    names = {s["operationName"] for s in spans}
    assert any(n.startswith("chat ") for n in names), names
    assert names >= REQUIRED_SPANS, names
    by_id = {s["spanID"]: s for s in spans}
    for span in spans:
        kind = next((t["value"] for t in span["tags"] if t["key"] == "span.kind"), "")
        parents = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
        if not allow_orphans:
            assert not parents or parents[0] in ids, f"orphan span {span['operationName']}"
        if kind == "consumer" and parents and parents[0] in by_id:
            parent_kind = next((t["value"] for t in by_id[parents[0]]["tags"] if t["key"] == "span.kind"), "")
            assert parent_kind == "producer", (span["operationName"], by_id[parents[0]]["operationName"])
    return trace


def test_one_trace_per_mission_across_every_hop(stack):
    m = stack.submit("write a FizzBuzz function with tests")
    assert stack.wait(m["mission_id"], {"completed", "failed"})["status"] == "completed"
    trace = _assert_one_intact_trace(_wait_trace(stack, m["mission_id"]))
    assert trace["traceID"] == m["trace_id"]
    consumers = [s for s in trace["spans"] if s["operationName"].startswith("process coo.")]
    assert all(any(t["key"] == "mission.id" and t["value"] == m["mission_id"] for t in s["tags"]) for s in consumers)


def test_paused_and_resumed_mission_is_still_one_trace(stack):
    m = stack.submit("write a palindrome checker with tests [mock:slow=1]")
    stack.control(m["mission_id"], "pause")
    stack.wait(m["mission_id"], {"paused"}, timeout=20)
    time.sleep(1.5)
    stack.control(m["mission_id"], "resume")
    assert stack.wait(m["mission_id"], {"completed", "failed"})["status"] == "completed"
    _assert_one_intact_trace(_wait_trace(stack, m["mission_id"]))


def test_agent_restarted_midway_is_still_one_trace(stack):
    m = stack.submit("write a Roman numerals converter with tests [mock:slow=1.5]")
    time.sleep(0.5)
    stack.supervisor().signalProcess("agent", "KILL")  # supervisord restarts it, as in production
    assert stack.wait(m["mission_id"], {"completed", "failed"}, timeout=240)["status"] == "completed"
    # spans the killed process held in memory are lost with it; the trace stays one trace
    _assert_one_intact_trace(_wait_trace(stack, m["mission_id"]), allow_orphans=True)


_WEBHOOK_LINE = re.compile(r'"alert":\s*"BudgetExceeded"')    # a JSON log line, however it is spaced


def test_budget_exceeded_alert_reaches_the_orchestrator(stack):
    m = stack.submit("write a word counter [mock:expensive]", budget_usd=0.05)
    assert stack.wait(m["mission_id"], {"budget_exceeded", "completed", "failed"})["status"] == "budget_exceeded"
    am = stack.s.url(stack.s.alertmanager_port, "/api/v2/alerts")
    deadline = time.monotonic() + 120
    firing = []
    while time.monotonic() < deadline:
        firing = [a for a in httpx.get(am, timeout=5).json() if a["labels"].get("alertname") == "BudgetExceeded"]
        if firing and _WEBHOOK_LINE.search(stack.log("orchestrator")):
            break
        time.sleep(1)
    assert firing, "BudgetExceeded never fired in Alertmanager"
    assert firing[0]["labels"]["scope"] == "mission" and firing[0]["labels"]["severity"] == "critical"
    assert _WEBHOOK_LINE.search(stack.log("orchestrator")), "the webhook never reached the orchestrator"


def test_prometheus_has_the_metrics_and_every_dashboard_panel_returns_data(stack):
    # some traffic of every kind: a retry, a dead letter
    m = stack.submit("write a Fibonacci function with tests [mock:flaky]")
    stack.wait(m["mission_id"], {"completed", "failed"})
    for metric in ("coo_missions_total", "coo_mission_duration_seconds_bucket", "coo_llm_tokens_total",
                   "coo_llm_cost_usd_total", "coo_budget_operations_total", "coo_bus_messages_total",
                   "coo_sandbox_runs_total", "coo_task_duration_seconds_bucket"):
        deadline = time.monotonic() + 60
        while not stack.prom(metric):
            assert time.monotonic() < deadline, f"{metric} never reached Prometheus"
            time.sleep(2)
    assert_every_panel_has_data(stack.prom, timeout=60)


def test_canary_secrets_reach_no_sink(stack):
    m = stack.submit(canary_goal())
    done = stack.wait(m["mission_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    _wait_trace(stack, m["mission_id"])
    time.sleep(3)  # the collector's file exporter and Prometheus catch up
    secrets = [*CANARIES.values(), ECHO]

    sinks: dict[str, str] = {}
    sinks["jaeger trace"] = json.dumps(stack.traces_of(m["mission_id"]))
    sinks["trace UI spans"] = stack.viewer("searchSpans", m["trace_id"])
    # the trace UI's log records since the mission began, each in full
    since_ns = int(datetime.fromisoformat(done["created_at"]).timestamp() - 5) * 10**9
    summaries = json.loads(stack.viewer("searchLogs", str(since_ns), str(time.time_ns())))["result"] or []
    sinks["trace UI logs"] = json.dumps(summaries) + "".join(stack.viewer("getLog", r["id"]) for r in summaries)
    sinks["timeline"] = stack.api.get(f"/v1/missions/{m['mission_id']}/timeline").text
    audit = stack.s.state / "logs" / "coo-audit.jsonl"
    sinks["collector log file"] = "".join(p.read_text(errors="replace") for p in audit.parent.glob("coo-audit*"))
    for name in ("orchestrator", "agent", "budget", "sandbox", "mockllm", "otelcol", "viewer"):
        sinks[f"{name} output"] = stack.log(name)
    prom = stack.s.url(stack.s.prometheus_port)
    series = httpx.get(f"{prom}/api/v1/series", params={"match[]": '{__name__=~".+"}'}, timeout=10).text
    sinks["prometheus series"] = series + urllib.parse.unquote(series)
    assert m["mission_id"] in sinks["jaeger trace"] and len(sinks["collector log file"]) > 0
    assert m["mission_id"] in sinks["trace UI spans"] and m["mission_id"] in sinks["trace UI logs"]
    # content capture is on: the prompt really went through the collector and was redacted there
    assert "[REDACTED" in sinks["jaeger trace"]
    leaks = [f"{secret[:12]}… in {where}" for where, text in sinks.items() for secret in secrets if secret in text]
    assert not leaks, leaks

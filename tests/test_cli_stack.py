"""Every `coo` command against the real local stack (supervisord, every component a process on free
loopback ports), run as an operator runs it: `python -m coo.cli ...` in a subprocess, pointed at the
stack by COO_API_URL, COO_STATE_DIR and the COO_<COMPONENT>_PORT variables. The error paths too:
an unknown id, a stack that is down, a wrong token, invalid arguments, a mission in the wrong state."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.natsserver import free_port
from tests.test_stack_e2e import Stack, _wait_trace

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def stack(embedded):  # the session's one embedded stack (tests/stack_fixture.py), as in test_stack_e2e.py
    return Stack(*embedded)


COO = [sys.executable, "-m", "coo.cli"]
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def cli_env(st: Stack, **extra: str) -> dict[str, str]:
    s = st.s
    env = {k: v for k, v in os.environ.items() if not k.startswith("COO_")}
    env.update({f"COO_{name.upper()}": str(getattr(s, name))
                for name in type(s).model_fields if name.endswith("_port")})
    env.update({"COO_STATE_DIR": str(s.state), "COO_API_URL": s.url(s.orchestrator_port), "COLUMNS": "200"})
    env.update(extra)
    return env


def coo(st: Stack, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COO, *args], capture_output=True, text=True, check=False, timeout=timeout,
                          env=cli_env(st, **extra))


def coo_many(st: Stack, calls: list[tuple[tuple[str, ...], dict[str, str]]]) -> list[subprocess.CompletedProcess]:
    """Independent invocations side by side (each is a fresh interpreter: ~0.5 s of start-up)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda call: coo(st, *call[0], **call[1]), calls))


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    return res.stdout


def as_json(res: subprocess.CompletedProcess):
    return json.loads(ok(res))


def one_line_error(res: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """A clear error: the exit code, one line on stderr, no traceback, nothing on stdout."""
    assert res.returncode == code, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, res.stderr
    assert err.startswith("error:"), err
    for n in needles:
        assert n in err, (n, err)
    assert res.stdout.strip() == "", res.stdout
    return err


@pytest.fixture(scope="module")
def done(stack):
    """One completed mission, and its trace in Jaeger."""
    m = stack.submit("write a FizzBuzz function with tests")
    m = stack.wait(m["mission_id"], {"completed", "failed"})
    assert m["status"] == "completed", m
    return m


# ------------------------------------------------------------------------------------- reading

def test_missions_lists_and_filters(stack, done):
    rows = as_json(coo(stack, "missions", "--json"))
    assert rows["count"] >= 1 and any(m["mission_id"] == done["mission_id"] for m in rows["missions"])
    completed = as_json(coo(stack, "missions", "--status", "completed", "--since", "10m", "--limit", "5", "--json"))
    assert completed["missions"] and all(m["status"] == "completed" for m in completed["missions"])
    future = as_json(coo(stack, "missions", "--since", "2099-01-01T00:00:00Z", "--json"))
    assert future == {"missions": [], "count": 0, "total": 0, "next_cursor": None}
    human = ok(coo(stack, "missions"))
    assert done["mission_id"] in human and "completed" in human and "FizzBuzz" in human


def test_mission_shows_state_budget_steps_events_and_trace(stack, done):
    mid = done["mission_id"]
    view = as_json(coo(stack, "mission", mid, "--json"))
    assert view["mission"]["status"] == "completed" and view["mission"]["status_reason"]
    assert view["budget"]["source"] == "budget service"
    assert view["budget"]["limit_usd"] == pytest.approx(done["budget_usd"])
    assert view["budget"]["spent_usd"] == pytest.approx(done["cost_usd"], abs=1e-5) and view["budget"]["spent_usd"] > 0
    assert set(view["roles"]) >= {"coo", "engineer", "sandbox", "qa"} and view["step"].startswith("finished completed")
    assert 0 < len(view["timeline"]) <= 10 and view["timeline"][-1]["type"] == "mission.completed"
    assert HEX32.match(view["trace_id"]) and view["jaeger_url"].endswith(f"/trace/{view['trace_id']}")
    assert str(stack.s.jaeger_query_port) in view["jaeger_url"]
    human = ok(coo(stack, "mission", mid))
    for fact in (mid, "completed", "budget", "used of $1.0000", "retries", "FizzBuzz", "mission.completed",
                 view["trace_id"], view["jaeger_url"]):
        assert fact in human, fact


def test_logs_print_the_timeline_in_order(stack, done):
    mid = done["mission_id"]
    events = as_json(coo(stack, "logs", mid, "--json"))["events"]
    assert events[0]["type"] == "mission.created" and events[-1]["type"] == "mission.completed"
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    human = ok(coo(stack, "logs", mid)).splitlines()
    assert len(human) == len(events) and "mission.created" in human[0] and "mission.completed" in human[-1]
    # a final mission: --follow prints everything and ends by itself
    followed = ok(coo(stack, "logs", mid, "--follow", "--json", timeout=30)).splitlines()
    assert [json.loads(line)["event_id"] for line in followed] == [e["event_id"] for e in events]


def test_logs_service_logs_come_from_the_audit_log(stack, done):
    mid = done["mission_id"]
    deadline = time.monotonic() + 30
    while True:
        body = as_json(coo(stack, "logs", mid, "--service-logs", "--json"))
        services = {r["service"] for r in body["records"]}
        if {"orchestrator", "agent", "sandbox"} <= services or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {"orchestrator", "agent", "sandbox"} <= services, services
    assert all(r["mission_id"] == mid for r in body["records"])
    assert any(r["body"] == "mission finished" for r in body["records"])
    assert body["files"] and all("coo-audit" in f for f in body["files"])
    human = ok(coo(stack, "logs", mid, "--service-logs"))
    assert "mission finished" in human and "agent task started" in human
    followed = ok(coo(stack, "logs", mid, "--service-logs", "--follow", "--json", timeout=30)).splitlines()
    assert len(followed) >= len(body["records"]) and all(json.loads(ln)["mission_id"] == mid for ln in followed)


def test_following_the_audit_log_survives_rotation(tmp_path):
    from coo.cli import audit

    def line(mid: str, msg: str, ns: int) -> str:
        rec = {"observedTimeUnixNano": str(ns), "severityText": "INFO", "body": {"stringValue": msg},
               "attributes": [{"key": "mission_id", "value": {"stringValue": mid}},
                              {"key": "service", "value": {"stringValue": "agent"}}]}
        return json.dumps({"resourceLogs": [{"resource": {}, "scopeLogs": [{"logRecords": [rec]}]}]}) + "\n"

    live = tmp_path / "coo-audit.jsonl"
    live.write_text(line("m-a", "one", 1_000) + line("m-b", "other", 2_000))
    tail = audit.Tail(audit.Query(mission_id="m-a"), live)
    assert [r["body"] for r in tail.poll()] == ["one"]
    with live.open("a") as fh:
        fh.write(line("m-a", "two", 3_000) + '{"resourceLogs": [')  # the last line is still being written
    assert [r["body"] for r in tail.poll()] == ["two"]
    live.rename(tmp_path / "coo-audit-2026-01-01T00-00-00.000.jsonl")  # the collector rotates
    live.write_text(line("m-a", "three", 4_000))
    assert "three" in [r["body"] for r in tail.poll()]
    assert tail.poll() == []


def test_trace_is_a_span_tree_from_jaeger(stack, done):
    mid = done["mission_id"]
    _wait_trace(stack, mid)
    body = as_json(coo(stack, "trace", mid, "--json", "--wait", "20"))
    assert body["trace_id"] == done["trace_id"] and body["mission_id"] == mid
    assert {"orchestrator", "agent", "budget", "sandbox"} <= set(body["services"])
    ids = {s["span_id"] for s in body["spans"]}
    names = {s["operation"] for s in body["spans"]}
    assert "invoke_workflow coo.mission" in names and any(n.startswith("chat ") for n in names)
    assert sum(1 for s in body["spans"] if s["parent_id"] not in ids) >= 1  # a root
    assert all(s["parent_id"] in ids for s in body["spans"] if s["operation"].startswith("process coo."))
    assert all({"service", "operation", "duration_ms", "error", "parent_id"} <= set(s) for s in body["spans"])
    human = ok(coo(stack, "trace", mid))
    assert done["trace_id"] in human and "invoke_agent engineer" in human and " ms" in human and "└──" in human
    by_trace_id = as_json(coo(stack, "trace", done["trace_id"], "--json"))
    assert by_trace_id["trace_id"] == done["trace_id"] and by_trace_id["span_count"] >= body["span_count"]


def test_budget_per_scope(stack, done):
    body = as_json(coo(stack, "budget", "--mission", done["mission_id"], "--json"))
    scopes = {s["scope"]: s for s in body["scopes"]}
    assert set(scopes) == {"mission", "daily", "monthly"}
    assert scopes["mission"]["key"] == done["mission_id"] and scopes["mission"]["limit_usd"] == done["budget_usd"]
    for sc in scopes.values():
        assert {"spent_usd", "reserved_usd", "remaining_usd"} <= set(sc)
    assert scopes["daily"]["spent_usd"] >= scopes["mission"]["spent_usd"] > 0
    glob = as_json(coo(stack, "budget", "--json"))
    assert {s["scope"] for s in glob["scopes"]} == {"daily", "monthly"}
    human = ok(coo(stack, "budget", "--mission", done["mission_id"]))
    assert "mission" in human and "daily" in human and "monthly" in human and "remaining" in human


def test_audit_search_filters_the_audit_log(stack, done):
    mid = done["mission_id"]
    body = as_json(coo(stack, "audit", "search", "--mission", mid, "--event", "mission finished", "--json"))
    assert body["count"] == 1 and body["records"][0]["attributes"]["status"] == "completed"
    recent = as_json(coo(stack, "audit", "search", "--since", "10m", "--grep", "bubble?wrap", "--limit", "3", "--json"))
    assert 0 < recent["count"] <= 3
    assert as_json(coo(stack, "audit", "search", "--since", "2099-01-01", "--json"))["count"] == 0
    human = ok(coo(stack, "audit", "search", "--mission", mid, "--limit", "5"))
    assert "line(s) from" in human and len(human.strip().splitlines()) == 6


def test_audit_search_reads_rotated_and_gzipped_files(stack, done, tmp_path):
    """The collector rotates coo-audit.jsonl to coo-audit-<time>.jsonl (and may compress it)."""
    live = stack.s.state / "logs" / "coo-audit.jsonl"
    lines = [ln for ln in live.read_text().splitlines() if done["mission_id"] in ln]
    assert lines
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "coo-audit-2026-01-01T00-00-00.000.jsonl.gz").write_bytes(gzip.compress((lines[0] + "\n").encode()))
    (logs / "coo-audit-2026-01-02T00-00-00.000.jsonl").write_text("not json\n" + "\n".join(lines[1:]) + "\n")
    shutil.copy(live, logs / "coo-audit.jsonl")
    body = as_json(coo(stack, "audit", "search", "--mission", done["mission_id"], "--limit", "10000", "--json",
                       COO_AUDIT_LOG=str(logs / "coo-audit.jsonl")))
    assert len(body["files"]) == 3 and body["files"][-1].endswith("coo-audit.jsonl")
    direct = as_json(coo(stack, "audit", "search", "--mission", done["mission_id"], "--limit", "10000", "--json"))
    assert body["count"] == 2 * direct["count"]  # each record once in the backups, once in the live copy


# ------------------------------------------------------------------------------------- controls

def test_pause_resume_and_the_wrong_state(stack):
    m = stack.submit("write a palindrome checker with tests [mock:slow=1]")
    mid = m["mission_id"]
    wrong = coo(stack, "resume", mid)
    one_line_error(wrong, "is not paused", "HTTP 409")
    paused = as_json(coo(stack, "pause", mid, "--reason", "cli test", "--wait", "--json"))
    assert paused["action"] == "pause" and paused["status"] == "paused"
    view = as_json(coo(stack, "mission", mid, "--json"))
    assert view["mission"]["status"] == "paused" and "cli test" in view["mission"]["status_reason"]
    assert view["step"].startswith("paused")
    again = coo(stack, "pause", mid)
    one_line_error(again, "already paused")
    human = ok(coo(stack, "resume", mid, "--wait"))
    assert "resume requested" in human and mid in human
    # --follow prints new events until the mission ends
    followed = ok(coo(stack, "logs", mid, "--follow", timeout=90))
    assert "mission.resumed" in followed and followed.strip().splitlines()[-1].split()[1] == "mission.completed"


def test_cancel_and_approve(stack):
    gated = stack.submit("write a FizzBuzz function with tests", require_approval=True)
    stack.wait(gated["mission_id"], {"awaiting_approval"}, timeout=30)
    view = as_json(coo(stack, "mission", gated["mission_id"], "--json"))
    assert "approve" in view["step"] and "operator" in view["roles"]
    approved = as_json(coo(stack, "approve", gated["mission_id"], "--json", "--wait"))
    assert approved["status"] != "awaiting_approval"
    assert stack.wait(gated["mission_id"], {"completed", "failed"})["status"] == "completed"
    one_line_error(coo(stack, "approve", gated["mission_id"]), "HTTP 409")

    slow = stack.submit("write a word counter [mock:slow=2]")
    out = ok(coo(stack, "cancel", slow["mission_id"], "--reason", "not needed", "--wait"))
    assert "cancelled" in out
    assert as_json(coo(stack, "mission", slow["mission_id"], "--json"))["mission"]["status"] == "cancelled"


def test_dlq_list_and_replay(stack):
    async def poison():
        import nats

        admin = stack.s.state / "secrets" / "nats-admin.password"  # a stack with NATS users: the operator's
        creds = {"user": "admin", "password": admin.read_text().strip()} if admin.exists() else {}
        nc = await nats.connect(f"nats://127.0.0.1:{stack.s.nats_port}", **creds)
        await nc.jetstream().publish("coo.results.agent", b"\x00\xff not protobuf",
                                     headers={"Coo-Type": "coo.v1.AgentResult", "Nats-Msg-Id": "cli-poison-1"})
        await nc.close()

    asyncio.run(poison())
    deadline = time.monotonic() + 20
    while True:
        letters = as_json(coo(stack, "dlq", "list", "--json"))["dead_letters"]
        ours = [d for d in letters if "undecodable" in d["reason"]]
        if ours or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ours, letters
    human = ok(coo(stack, "dlq", "list"))
    assert str(ours[0]["dlq_id"]) in human and "undecodable" in human and "COO_RESULTS" in human
    replayed = as_json(coo(stack, "dlq", "replay", str(ours[0]["dlq_id"]), "--json"))
    assert replayed["replayed"] is True and replayed["subject"] == "coo.results.agent"
    one_line_error(coo(stack, "dlq", "replay", "999999"), "no dead letter 999999", "coo dlq list")
    one_line_error(coo(stack, "dlq", "replay", str(ours[0]["dlq_id"]), COO_API_TOKEN="wrong"), "invalid token")


# ------------------------------------------------------------------------------- operating views

def test_metrics_from_prometheus_and_from_the_api(stack, done):
    deadline = time.monotonic() + 60
    while True:
        prom = as_json(coo(stack, "metrics", "--since", "1h", "--json"))
        if prom["missions_finished"] >= 1 and prom["duration_seconds"]["p95"] is not None:
            break
        assert time.monotonic() < deadline, prom
        time.sleep(2)
    assert prom["source"] == "prometheus" and 0 <= prom["success_rate"] <= 1 and prom["cost_usd"] > 0
    assert prom["by_status"].get("completed", 0) >= 1 and prom["duration_seconds"]["p50"] > 0
    api = as_json(coo(stack, "metrics", "--since", "1h", "--source", "api", "--json"))
    assert api["source"] == "missions api" and api["missions_finished"] >= 1 and api["cost_usd"] > 0
    assert api["duration_seconds"]["p50"] > 0 and "retries" in api
    # Prometheus down: the missions API, and it says so
    fallback = as_json(coo(stack, "metrics", "--json", COO_PROMETHEUS_PORT=str(free_port())))
    assert fallback["source"] == "missions api" and "not ready" in fallback["note"]
    csv_out = ok(coo(stack, "metrics", "--export", "csv")).splitlines()
    assert csv_out[0] == "metric,value" and "source,prometheus" in csv_out and any(
        ln.startswith("success_rate,") for ln in csv_out)
    human = ok(coo(stack, "metrics", "--since", "30m"))
    assert "success rate" in human and "duration p95" in human and "source: prometheus" in human


def test_health_passes_and_fails_with_reasons(stack):
    body = as_json(coo(stack, "health", "--json"))
    assert body["ok"] is True, body["failed"]
    names = {c["check"] for c in body["checks"]}
    for check in ("nats + jetstream", "orchestrator", "agent", "budget", "sandbox", "collector", "jaeger",
                  "prometheus", "alertmanager", "config OrchestratorSettings", "config AgentSettings",
                  "config BudgetSettings", "config SandboxSettings", "config StackSettings", "state dir writable",
                  "data dir writable"):
        assert check in names, check
    assert "pass" in ok(coo(stack, "health"))
    down = coo(stack, "health", "--json", COO_PROMETHEUS_PORT=str(free_port()), COO_MAX_RETRIES="many")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    failed = json.loads(down.stdout)
    assert set(failed["failed"]) == {"prometheus", "config OrchestratorSettings"}, failed["failed"]
    reason = next(c["detail"] for c in failed["checks"] if c["check"] == "config OrchestratorSettings")
    assert "COO_MAX_RETRIES" in reason
    human = coo(stack, "health", COO_PROMETHEUS_PORT=str(free_port()))
    assert human.returncode == 1 and "FAIL" in human.stdout and "1 check(s) failed: prometheus" in human.stdout


def test_watch_renders_a_frame_and_quits_cleanly_on_ctrl_c(stack):
    live = stack.submit("write a Roman numerals converter [mock:slow=2]")
    try:
        frame = as_json(coo(stack, "watch", "--once", "--json"))
        assert any(m["mission_id"] == live["mission_id"] for m in frame["missions"])
        assert frame["rates"] and frame["rates"]["source"] == "prometheus"
        assert {s["scope"] for s in frame["budget"]} == {"daily", "monthly"}
        human = ok(coo(stack, "watch", "--once"))
        assert "live missions" in human and live["mission_id"] in human and "rates" in human and "daily" in human
        proc = subprocess.Popen([*COO, "watch", "--interval", "0.5"], env=cli_env(stack), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert "live missions" in out
    finally:
        stack.api.post(f"/v1/missions/{live['mission_id']}/control", json={"action": "cancel"})


# ------------------------------------------------------------------------------------ error paths

def test_unknown_id_is_one_line_and_exit_1(stack):
    calls = [(args, {}) for args in (("mission", "m-nope"), ("logs", "m-nope"), ("logs", "m-nope", "--service-logs"),
                                     ("trace", "m-nope"), ("budget", "--mission", "m-nope"), ("pause", "m-nope"))]
    for res in coo_many(stack, calls):
        one_line_error(res, "no mission m-nope", "HTTP 404")
    one_line_error(coo(stack, "trace", "0" * 31 + "1"), "not in Jaeger")


def test_stack_down_is_one_line_and_exit_1(stack):
    dead = f"http://127.0.0.1:{free_port()}"
    calls = [(args, {"COO_API_URL": dead}) for args in (
        ("missions",), ("mission", "m-x"), ("logs", "m-x"), ("budget",), ("dlq", "list"), ("pause", "m-x"),
        ("watch", "--once"), ("metrics", "--source", "api"))]
    for res in coo_many(stack, calls):
        one_line_error(res, "not reachable")
    jaeger, prom, audit = coo_many(stack, [
        (("trace", "a" * 32), {"COO_JAEGER_QUERY_PORT": str(free_port())}),
        (("metrics", "--source", "prometheus"), {"COO_PROMETHEUS_PORT": str(free_port())}),
        (("audit", "search"), {"COO_AUDIT_LOG": "/nonexistent/coo-audit.jsonl"})])
    one_line_error(jaeger, "Jaeger", "not reachable")
    one_line_error(prom, "Prometheus", "not ready")
    one_line_error(audit, "no audit log")


def test_wrong_token_is_refused(stack, done):
    calls = [(args, {"COO_API_TOKEN": "wrong"}) for args in (
        ("pause", done["mission_id"]), ("cancel", done["mission_id"], "--reason", "x"), ("dlq", "replay", "1"))]
    for res in coo_many(stack, calls):
        one_line_error(res, "invalid token", "HTTP 401")


def test_invalid_arguments_are_usage_errors(stack):
    calls = [(args, {}) for args in (
        ("missions", "--status", "bogus"), ("missions", "--since", "yesterday"), ("missions", "--limit", "0"),
        ("dlq", "replay", "abc"), ("metrics", "--export", "xml"), ("metrics", "--source", "guess"),
        ("audit", "search", "--grep", "("), ("mission",), ("trace",), ("watch", "--interval", "0"),
        ("logs", "m-x", "--bogus"))]
    for (args, _), res in zip(calls, coo_many(stack, calls)):
        assert res.returncode == 2, (args, res.returncode, res.stderr)
        assert "Traceback" not in res.stderr and res.stdout == "", (args, res.stderr)


def test_debug_shows_the_traceback(stack):
    res = coo(stack, "--debug", "mission", "m-nope")
    assert res.returncode == 1 and "Traceback" in res.stderr and "no mission m-nope" in res.stderr

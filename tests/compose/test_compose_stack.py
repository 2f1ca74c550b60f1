"""docker-compose.yml, run for real (``make test-compose``): a Docker engine of the test's own,
stand-ins for the upstream images (tests/compose_standins.sh), the project's images from their
Dockerfiles, and the embedded e2e's checks where they apply, through the ports the stack publishes
on 127.0.0.1. Grafana has no stand-in and is left out; its dashboards' queries are run against the
compose Prometheus instead. The tests run in order and share one stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.compose.engine import DOCKER, LEFT_OUT, PROJECT, ComposeStack, _log
from tests.harness import CANARIES, ECHO, assert_every_panel_has_data, canary_goal

FIVE = ("orchestrator", "agent", "budget", "sandbox", "mockllm")
LABEL = "coo.sandbox.run_id"
# the first test also pays for the session's set-up (image builds, compose up)
pytestmark = pytest.mark.timeout(900)
SEEN: dict[str, dict] = {}  # what one test leaves for a later one (they run in order)


def _until(what: str, check, timeout: float = 90, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(every)


def test_every_container_is_healthy(stack: ComposeStack):
    services = stack.services()
    assert set(FIVE) <= set(services) and not set(LEFT_OUT) & set(services)
    assert stack.unhealthy() == []
    running = {c["Service"] for c in stack.ps()}
    assert set(services) <= running, set(services) - running
    _log(f"{len(running)} containers healthy (or done, for the one-shots); left out: {', '.join(LEFT_OUT)} "
         "(no image of it can be had here)")


def test_the_services_image_carries_no_test_or_dev_tools(stack: ComposeStack):
    """Runtime dependencies only (pyproject's dev extra is not installed in services/Dockerfile)."""
    probe = ("import importlib.util, json; print(json.dumps([m for m in ('pytest', 'hypothesis', 'ruff', 'mypy', "
             "'grpc_tools', 'playwright') if importlib.util.find_spec(m)]))")
    res = stack.engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python", "coo-services:latest",
                              "-c", probe, timeout=120)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_coo_health_shows_the_sandbox_backend_in_use(stack: ComposeStack, tmp_path: Path):
    env = {**stack.engine.env(), **{k: str(v) for k, v in stack.ports.items()}, "COO_STATE_DIR": str(tmp_path),
           "COO_API_URL": stack.url("COO_ORCHESTRATOR_PORT")}
    shown = subprocess.run([sys.executable, "-m", "coo.cli", "health", "--json"], capture_output=True, text=True,
                           env=env, timeout=120, check=False)
    row = next(c for c in json.loads(shown.stdout)["checks"] if c["check"] == "sandbox")
    assert row["ok"], row
    assert "backend docker (COO_SANDBOX_BACKEND=docker): Docker engine answers; image coo-sandbox:latest" \
        in row["detail"], row


def test_the_collector_scrapes_all_five_services(stack: ComposeStack):
    """The collector's prometheus receiver reaches each service's /metrics on the compose network
    (each binds COO_<NAME>_HOST=0.0.0.0, not loopback), and Prometheus has the result."""
    def all_up():
        ups = {r["metric"].get("job"): r["value"][1] for r in stack.prom('up{job=~"' + '|'.join(FIVE) + '"}')}
        return ups if all(ups.get(job) == "1" for job in FIVE) else None

    _until("up == 1 for every service in the collector", all_up, timeout=120, every=2)


def test_a_mission_runs_its_code_on_the_docker_backend_in_a_locked_down_container(stack: ComposeStack):
    import docker

    client = docker.DockerClient(base_url=stack.engine.host, timeout=30)
    inspected: list[dict] = []
    stop = threading.Event()

    def watch() -> None:
        events = client.events(decode=True, filters={"type": "container", "event": "create", "label": LABEL})
        try:
            for ev in events:
                try:
                    inspected.append(client.api.inspect_container(ev["id"]))
                except docker.errors.NotFound:
                    inspected.append({"Id": ev["id"], "gone": True})
                if stop.is_set():
                    break
        finally:
            events.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)
    m = stack.submit("write a FizzBuzz function with tests")
    done = stack.wait_status(m["mission_id"], {"completed", "failed", "budget_exceeded", "cancelled"})
    assert done["status"] == "completed", done
    assert done["last_sandbox_result"]["backend"] == "docker", done["last_sandbox_result"]
    assert done["last_sandbox_result"]["outcome"] == "ok", done["last_sandbox_result"]
    SEEN["mission"] = m
    stop.set()
    _until("the create event of the run's container", lambda: inspected, timeout=10, every=0.2)
    c = inspected[0]
    assert not c.get("gone"), "the container was removed before it could be inspected"
    host, cfg = c["HostConfig"], c["Config"]
    assert cfg["Image"] == "coo-sandbox:latest"
    assert cfg["User"] not in ("", "0", "root") and cfg["User"].split(":")[0] == "sandbox"
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges"]
    tmpfs = host["Tmpfs"]["/work"]
    assert "size=" in tmpfs and tmpfs.split("size=")[1].split(",")[0].endswith("m"), tmpfs
    assert 0 < host["PidsLimit"] <= 4096
    assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] > 0
    assert {u["Name"] for u in host["Ulimits"]} >= {"cpu", "fsize", "nofile", "core"}
    # the backend passes an empty environment: only the image's own ENV lines are there
    names = {e.split("=", 1)[0] for e in cfg["Env"] or []}
    assert names <= {"PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE"}, names
    # removed afterwards, with its input volume
    def gone():
        left = stack.engine.docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
        vols = stack.engine.docker("volume", "ls", "-q", "--filter", f"label={LABEL}").stdout.split()
        return not left and not vols
    _until("run containers and volumes removed", gone, timeout=30)
    client.close()


def test_one_trace_per_mission_with_all_four_services(stack: ComposeStack):
    m = SEEN.get("mission") or stack.submit("write a FizzBuzz function with tests")
    stack.wait_status(m["mission_id"], {"completed"})

    def complete():
        traces = stack.traces_of(m["mission_id"])
        if not traces:
            return None
        seen = {traces[0]["processes"][s["processID"]]["serviceName"] for s in traces[0]["spans"]}
        return traces if {"orchestrator", "agent", "budget", "sandbox"} <= seen else None

    traces = _until("the mission's trace with orchestrator, agent, budget and sandbox spans", complete, timeout=60)
    assert len(traces) == 1, f"{len(traces)} traces for one mission"
    assert traces[0]["traceID"] == m["trace_id"]
    assert len({s["traceID"] for s in traces[0]["spans"]}) == 1
    names = {s["operationName"] for s in traces[0]["spans"]}
    assert "execute_tool sandbox" in names and any(n.startswith("chat ") for n in names), names


def test_budget_exceeded_reaches_the_orchestrators_webhook(stack: ComposeStack):
    m = stack.submit("write a word counter [mock:expensive]", budget_usd=0.05)
    assert stack.wait_status(m["mission_id"], {"budget_exceeded", "completed", "failed"})["status"] == "budget_exceeded"
    am = stack.url("COO_ALERTMANAGER_PORT", "/api/v2/alerts")

    def fired():
        alerts = [a for a in httpx.get(am, timeout=5).json() if a["labels"].get("alertname") == "BudgetExceeded"]
        return alerts if alerts and re.search(r'"alert":\s*"BudgetExceeded"', stack.logs("orchestrator")) else None

    alerts = _until("BudgetExceeded in Alertmanager and at the orchestrator's webhook", fired, timeout=150, every=2)
    assert alerts[0]["labels"]["scope"] == "mission" and alerts[0]["labels"]["severity"] == "critical"


def test_every_dashboard_panel_query_returns_data_from_the_compose_prometheus(stack: ComposeStack):
    m = stack.submit("write a Fibonacci function with tests [mock:flaky]")
    stack.wait_status(m["mission_id"], {"completed", "failed"})
    assert_every_panel_has_data(stack.prom, timeout=90)


def test_canary_secrets_reach_no_sink(stack: ComposeStack, tmp_path: Path):
    m = stack.submit(canary_goal())
    done = stack.wait_status(m["mission_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    _until("the canary mission's trace", lambda: stack.traces_of(m["mission_id"]), timeout=60)
    time.sleep(6)  # the collector's file exporter and Prometheus catch up
    sinks: dict[str, str] = {}
    sinks["jaeger trace"] = json.dumps(stack.traces_of(m["mission_id"]))
    with stack.api() as api:
        sinks["timeline"] = api.get(f"/v1/missions/{m['mission_id']}/timeline").text
    # the collector's redacted log file, out of its volume (the collector image has no shell)
    cid = stack.compose("ps", "-q", "otelcol").stdout.strip()
    sinks["collector log file"] = _read_audit(stack, cid, tmp_path)
    for name in (*FIVE, "otelcol", "jaeger", "nats", "prometheus", "alertmanager"):
        sinks[f"{name} container output"] = stack.logs(name)
    series = httpx.get(stack.url("COO_PROMETHEUS_PORT", "/api/v1/series"), params={"match[]": '{__name__=~".+"}'},
                       timeout=20).text
    sinks["prometheus series"] = series + urllib.parse.unquote(series)
    assert m["mission_id"] in sinks["jaeger trace"] and m["mission_id"] in sinks["collector log file"]
    secrets = [*CANARIES.values(), ECHO]
    leaks = [f"{secret[:12]}… in {where}" for where, text in sinks.items() for secret in secrets if secret in text]
    assert not leaks, leaks


def _read_audit(stack: ComposeStack, cid: str, tmp_path: Path) -> str:
    dest = tmp_path / "audit.tar"
    with open(dest, "wb") as fh:
        subprocess.run([DOCKER, "cp", f"{cid}:/var/log/coo", "-"], env=stack.engine.env(), stdout=fh,
                       check=True, timeout=60)
    text = []
    with tarfile.open(dest) as tar:
        for member in tar.getmembers():
            if member.isfile() and "coo-audit" in member.name:
                f = tar.extractfile(member)
                if f is not None:
                    text.append(f.read().decode("utf-8", errors="replace"))
    return "".join(text)


@pytest.mark.parametrize("service", [*FIVE, "nats"])
def test_compose_restart_of_a_service_loses_no_mission(stack: ComposeStack, service: str):
    missions = [stack.submit(g) for g in ("write a palindrome checker with tests [mock:slow=2]",
                                          "write a Roman numerals converter with tests [mock:slow=1]")]
    time.sleep(1.0)
    live = [stack.mission(m["mission_id"])["status"] for m in missions]
    assert set(live) & {"created", "planning", "executing", "reviewing"}, f"no mission live to lose: {live}"
    stack.compose("restart", "--timeout", "20", service, timeout=180)
    stack.wait_healthy(180)
    stack.wait_ready(180)
    for m in missions:
        done = stack.wait_status(m["mission_id"], {"completed", "failed", "cancelled", "budget_exceeded"}, timeout=240)
        assert done["status"] == "completed", (service, done)


def test_a_sandbox_run_that_cannot_start_keeps_its_cause(stack: ComposeStack):
    """The issue's case: the engine cannot start the run's container ("unable to find user
    sandbox": an image without the sandbox user). The engine's words reach the SandboxResult (and
    the mission record), the sandbox's log line and the span's status."""
    stack.engine.docker("tag", "coo-standin/debian-bookworm:latest", "coo-test-no-sandbox-user:latest")
    stack.extra_env["COO_SANDBOX_IMAGE"] = "coo-test-no-sandbox-user:latest"
    try:
        stack.compose("up", "-d", "--no-build", "--pull", "never", "--no-deps", "sandbox", timeout=180)
        stack.wait_healthy(180)
        stack.wait_ready(180)
        m = stack.submit("write a FizzBuzz function with tests")
        done = stack.wait_status(m["mission_id"], {"completed", "failed", "cancelled", "budget_exceeded"}, timeout=240)
        assert done["status"] == "failed", done
        run = done["last_sandbox_result"]
        cause = "unable to find user sandbox"
        assert run["outcome"] == "error" and run["backend"] == "docker", run
        assert cause in (run.get("error") or ""), run
        lines = [json.loads(line) for line in stack.logs("sandbox").splitlines() if line.startswith("{")]
        logged = [x for x in lines if x.get("event") == "sandbox run could not run"
                  and x.get("mission_id") == m["mission_id"]]
        assert logged and cause in logged[0]["error"] and logged[0]["level"] == "warning", logged

        def errored_span():
            for trace in stack.traces_of(m["mission_id"]):
                for span in trace["spans"]:
                    tags = {t["key"]: t["value"] for t in span["tags"]}
                    if span["operationName"] == "execute_tool sandbox" and tags.get("otel.status_code") == "ERROR":
                        return tags
            return None

        tags = _until("the run's span with status ERROR", errored_span, timeout=60)
        assert cause in tags.get("otel.status_description", ""), tags
    finally:
        stack.extra_env.pop("COO_SANDBOX_IMAGE", None)
        stack.compose("up", "-d", "--no-build", "--pull", "never", "--no-deps", "sandbox", timeout=180)
        stack.wait_healthy(180)
        stack.wait_ready(180)


def test_a_daily_budget_alert_closes_admission(stack: ComposeStack):
    """The whole path: a daily limit passed, the budget service refuses with scope daily, the
    BudgetExceeded{scope="daily"} alert goes Prometheus → Alertmanager → the orchestrator's webhook,
    which closes admission (429 for new missions)."""
    stack.extra_env["COO_BUDGET_DAILY_USD"] = "0.000001"
    stack.compose("up", "-d", "--no-build", "--pull", "never", "--no-deps", "budget", timeout=180)
    stack.wait_healthy(180)
    m = stack.submit("write a stack class with tests")
    assert stack.wait_status(m["mission_id"], {"budget_exceeded", "completed", "failed"})["status"] == "budget_exceeded"

    def closed():
        with stack.api() as api:
            status = api.get("/v1/status").json()
        return status if status["admission"] == "closed" and "daily" in status["blocked_scopes"] else None

    _until("admission closed by BudgetExceeded{scope=daily}", closed, timeout=150, every=2)
    with stack.api() as api:
        refused = api.post("/v1/missions", json={"goal": "write a FizzBuzz function"})
    assert refused.status_code == 429, refused.text


def test_compose_down_v_leaves_no_container_network_or_volume(stack: ComposeStack):
    out = stack.down()
    assert out.returncode == 0, out.stderr
    label = f"label=com.docker.compose.project={PROJECT}"
    assert stack.engine.docker("ps", "-aq", "--filter", label).stdout.split() == []
    assert stack.engine.docker("network", "ls", "-q", "--filter", label).stdout.split() == []
    assert stack.engine.docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
    assert stack.engine.docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split() == []
    assert stack.engine.docker("volume", "ls", "-q", "--filter", f"label={LABEL}").stdout.split() == []

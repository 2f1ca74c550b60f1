"""`coo alerts` against a real Alertmanager (Debian's 0.25, alerts posted to its API v2 as Prometheus
does) and a real Prometheus (an alert rule that fires, so ALERTS has history): firing alerts with
their runbooks, recent ones, --json, and a clear error when Alertmanager is not there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from coo.stack.components import REPO_ROOT
from tests.natsserver import free_port
from tests.procs import serve

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
COO = [sys.executable, "-m", "coo.cli"]

RULES = """groups:
  - name: test
    interval: 1s
    rules:
      - alert: DeadLetterQueueGrowing
        expr: vector(1)
        labels: {severity: warning}
        annotations:
          summary: "The dead-letter queue is growing"
          runbook: docs/operations.md#deadletterqueuegrowing
"""


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    for binary in (ALERTMANAGER, PROMETHEUS):
        if not Path(binary).exists():
            pytest.skip(f"{binary} is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("alerts")
    am_port, prom_port = free_port(), free_port()
    (root / "am.yml").write_text("route: {receiver: none}\nreceivers: [{name: none}]\n")
    (root / "rules.yml").write_text(RULES)
    (root / "prom.yml").write_text(f"global: {{evaluation_interval: 1s}}\nrule_files: [{root / 'rules.yml'}]\n")
    am = f"http://127.0.0.1:{am_port}"
    prom = f"http://127.0.0.1:{prom_port}"
    with serve([ALERTMANAGER, f"--config.file={root / 'am.yml'}", f"--storage.path={root / 'am'}",
                f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
               am + "/-/ready", root / "alertmanager.log"), \
         serve([PROMETHEUS, f"--config.file={root / 'prom.yml'}", f"--storage.tsdb.path={root / 'prom'}",
                f"--web.listen-address=127.0.0.1:{prom_port}"], prom + "/-/ready", root / "prometheus.log"):
        now = datetime.now(UTC).isoformat()
        resp = httpx.post(am + "/api/v2/alerts", timeout=5, json=[{
            "labels": {"alertname": "BudgetExceeded", "severity": "critical", "scope": "mission"},
            "annotations": {"summary": "The mission budget was exceeded",
                            "runbook": "docs/operations.md#budgetexceeded"},
            "startsAt": now, "generatorURL": prom + "/graph"}])
        assert resp.status_code == 200, resp.text
        deadline = time.monotonic() + 30
        while not httpx.get(prom + "/api/v1/query", params={"query": "ALERTS"}, timeout=5).json()["data"]["result"]:
            assert time.monotonic() < deadline, "the test rule never fired"
            time.sleep(0.5)
        yield {"COO_HOST": "127.0.0.1", "COO_ALERTMANAGER_PORT": str(am_port), "COO_PROMETHEUS_PORT": str(prom_port)}


def _coo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("COO_")}
    return subprocess.run([*COO, *args], check=False, capture_output=True, text=True, timeout=60, env={**base, **env})


def test_alerts_json_lists_firing_and_recent_alerts_with_runbooks(backends):
    res = _coo(backends, "alerts", "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    [firing] = body["firing"]
    assert firing["alertname"] == "BudgetExceeded" and firing["severity"] == "critical"
    assert firing["state"] == "active" and firing["labels"] == {"scope": "mission"}
    assert firing["summary"] == "The mission budget was exceeded"
    assert firing["runbook"] == "docs/operations.md#budgetexceeded"
    assert firing["runbook_link"] == f"{REPO_ROOT / 'docs/operations.md'}#budgetexceeded"
    # Prometheus's alert never reached this Alertmanager: it is "recent", with its rule's runbook
    [past] = body["recent"]
    assert past["alertname"] == "DeadLetterQueueGrowing" and past["severity"] == "warning"
    assert past["runbook_link"].endswith("docs/operations.md#deadletterqueuegrowing")
    age = datetime.now(UTC) - datetime.fromisoformat(past["last_firing_at"])
    assert 0 <= age.total_seconds() < 300, past
    assert body["note"] is None


def test_alerts_for_people(backends):
    res = _coo({**backends, "COLUMNS": "250"}, "alerts")
    assert res.returncode == 0, res.stderr
    for text in ("firing (1)", "BudgetExceeded", "scope=mission", "The mission budget was exceeded",
                 "operations.md#budgetexceeded", "DeadLetterQueueGrowing", "operations.md#deadletterqueuegrowing"):
        assert text in res.stdout, (text, res.stdout)


def test_without_prometheus_the_firing_alerts_still_show(backends):
    res = _coo({**backends, "COO_PROMETHEUS_PORT": str(free_port())}, "alerts", "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert [a["alertname"] for a in body["firing"]] == ["BudgetExceeded"]
    assert body["recent"] is None and "not ready" in body["note"]


def test_without_alertmanager_it_says_what_to_do():
    res = _coo({"COO_HOST": "127.0.0.1", "COO_ALERTMANAGER_PORT": str(free_port())}, "alerts")
    assert res.returncode == 1
    assert "Alertmanager at" in res.stderr and "coo status" in res.stderr

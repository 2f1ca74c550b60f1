"""The embedded stack as a person sees it, in a real browser: Debian's chromium, headless, driven by
Playwright with the system binary (no browser download).

* the trace UI (otel-desktop-viewer, fed by the collector) shows the demo mission's trace with spans
  from all four services, and its search finds the trace by ``mission.id``;
* every dashboard page (the Grafana dashboards as Prometheus console pages) shows every panel with
  data: no ``no data``, no ``No timeseries returned``, no error, no failed request;
* ``coo alerts`` lists the budget alert with its runbook; ``coo status``, ``coo mission`` and
  ``coo trace`` give the trace UI and dashboards links.

Screenshots are kept in ``var/test-artifacts/browser/`` (``COO_TEST_ARTIFACTS`` moves it);
``COO_UPDATE_DOCS_SCREENSHOTS=1`` also refreshes the README's in ``docs/screenshots/``
(``make screenshots``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from coo.stack import consoles
from coo.stack.components import REPO_ROOT, StackSettings
from tests.test_stack_e2e import Stack, _wait_trace

pytestmark = pytest.mark.stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERVICES = {"orchestrator", "agent", "budget", "sandbox"}
ARTIFACTS = Path(os.environ.get("COO_TEST_ARTIFACTS") or REPO_ROOT / "var" / "test-artifacts") / "browser"
DOCS = REPO_ROOT / "docs" / "screenshots"
#: screenshot -> its name under docs/screenshots/ (the README's tour)
FOR_DOCS = {"trace-ui-waterfall.png": "trace-ui.png", "trace-ui-search.png": "trace-ui-search.png",
            "dashboard-missions.png": "dashboard-missions.png",
            "dashboard-agents-llm.png": "dashboard-agents-llm.png", "dashboard-budget.png": "dashboard-budget.png"}


def shot(page, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("COO_UPDATE_DOCS_SCREENSHOTS") == "1" and name in FOR_DOCS:
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / FOR_DOCS[name])
    return path


@pytest.fixture(scope="module")
def stack(embedded):  # the session's one embedded stack (tests/stack_fixture.py)
    return Stack(*embedded)


@pytest.fixture(scope="module")
def missions(stack):
    """A mission of each kind the dashboards show: a clean one (the demo's), one with a retry, one
    over its budget."""
    demo = stack.submit("write a FizzBuzz function with tests")
    flaky = stack.submit("write a word counter with tests [mock:flaky]")
    over = stack.submit("write a palindrome checker [mock:expensive]", budget_usd=0.05)
    out = {"demo": stack.wait(demo["mission_id"], {"completed", "failed"}),
           "flaky": stack.wait(flaky["mission_id"], {"completed", "failed"}),
           "over": stack.wait(over["mission_id"], {"budget_exceeded", "completed", "failed"})}
    assert out["demo"]["status"] == "completed" and out["over"]["status"] == "budget_exceeded", out
    return out


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs Debian's)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: Chromium's own sandbox cannot start as root, which the test machines are
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


#: Known and harmless: otel-desktop-viewer v0.4.1's page names a favicon its build does not ship.
IGNORED = ("/vite.svg",)


class Watched:
    """A page and every problem it met: script errors, console errors, failed or refused requests."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1440, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        # (a failed load is reported below with its URL; the console's copy of it has none)
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: self.problems.append(f"HTTP {r.status}: {r.url}")
                     if r.status >= 400 and not r.url.endswith(IGNORED) else None)


@pytest.fixture
def watched(browser):
    w = Watched(browser)
    try:
        yield w
    finally:
        w.context.close()


def cli(s: StackSettings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COO_")}
    env.update({f"COO_{k.upper()}": str(v) for k, v in s.model_dump().items()})
    return subprocess.run([sys.executable, "-m", "coo.cli", *args], check=False, capture_output=True, text=True,
                          timeout=120, env=env)


# ------------------------------------------------------------------------------------ trace UI
def _waterfall_services(page) -> set[str]:
    return set(page.eval_on_selector_all(".waterfall-row__td-service", "cells => cells.map(c => c.title)"))


def _span_count(page) -> int:
    """The open trace's span count (the "N spans" badge of its pane header), 0 when not shown."""
    for text in page.locator(".pane-header__badges").all_inner_texts():
        if found := re.search(r"(\d+) spans?", text):
            return int(found.group(1))
    return 0


def _walk(page, rows: int) -> tuple[set[str], set[str]]:
    """Walk the waterfall with its keyboard from the top (→ unfolds a folded span, ↓ moves on), as a
    person would to see every span; returns the services and span names of the rows seen."""
    page.locator(".waterfall-row").first.click()
    services: set[str] = set()
    names: set[str] = set()
    for _ in range(rows):
        services |= _waterfall_services(page)
        names |= set(page.locator(".waterfall-row__title").all_inner_texts())
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(20)
    return services, names


def test_trace_ui_shows_the_mission_trace_from_every_service(stack, missions, watched):
    m, page = missions["demo"], watched.page
    url = stack.s.url(stack.s.viewer_port, f"/traces/{m['trace_id']}")
    expected = len(_wait_trace(stack, m["mission_id"])[0]["spans"])  # what Jaeger has of it
    deadline = time.monotonic() + 60
    while True:  # spans reach the viewer a few seconds after the work, through the collector
        page.goto(url, wait_until="networkidle")
        page.wait_for_selector(".waterfall-row", timeout=15000)
        count = _span_count(page)
        if count >= expected or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert count >= expected, f"the trace UI has {count} spans of the mission's trace, Jaeger {expected}"
    services, names = _walk(page, count)
    assert services >= SERVICES, f"the trace UI shows spans of {services} only"
    assert {"invoke_workflow coo.mission", "invoke_agent engineer", "execute_tool sandbox"} <= names, names
    assert m["trace_id"] in page.url
    # the screenshot: the trace as it opens, its top unfolded, the mission's span and its attributes
    page.goto(url, wait_until="networkidle")
    page.wait_for_selector(".waterfall-row", timeout=15000)
    page.get_by_label("Collapse sidebar").click()
    _walk(page, 16)
    page.locator(".waterfall-row", has_text="invoke_workflow").first.click()
    page.wait_for_timeout(300)
    shot(page, "trace-ui-waterfall.png")
    assert f"mission.id (string): {m['mission_id']}" in page.inner_text("body")
    assert not watched.problems, watched.problems


def test_trace_ui_finds_the_trace_by_mission_id(stack, missions, watched):
    m, page = missions["demo"], watched.page
    page.goto(stack.s.url(stack.s.viewer_port, "/traces"), wait_until="networkidle")
    query = f"mission.id = {m['mission_id']}"
    editor = page.locator(".cm-content").first
    # the search shows the matching traces and opens the first: the mission's one trace. (Enter
    # submits; if the editor's completion list was open, Enter took a completion instead: again.)
    for attempt in range(3):
        if editor.inner_text().strip() != query:
            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.type(query)
            page.wait_for_timeout(300)
        page.keyboard.press("Enter")
        try:
            page.wait_for_url(f"**/traces/{m['trace_id']}**", timeout=5000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                shot(page, "trace-ui-search-FAILED.png")
                raise
    page.wait_for_selector(".waterfall-row", timeout=15000)
    page.wait_for_timeout(500)
    shot(page, "trace-ui-search.png")
    body = page.inner_text("body")
    assert "1 trace" in body and "2 traces" not in body, body[-300:]
    assert not watched.problems, watched.problems


# ---------------------------------------------------------------------------------- dashboards
def _wait_for_every_panel_query(stack, timeout: float = 120.0) -> None:
    """Until Prometheus answers every panel's query with data (rate() needs two scrapes)."""
    exprs = [(b.name, p.title, t.expr) for b in consoles.dashboards() for p in b.panels() for t in p.targets]
    deadline = time.monotonic() + timeout
    while True:
        empty = [f"{board}: {title}: {expr}" for board, title, expr in exprs if not stack.prom(expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not empty, "panels without data in Prometheus:\n" + "\n".join(empty)


#: The graphs' time range: the last 5 minutes (a young stack has no more; the pages default to 15).
WINDOW = "#pctc" + urllib.parse.quote(json.dumps({"duration": 300, "endTime": 0}))

_PANEL_CHECK = """() => Array.from(document.querySelectorAll('.coo-panel')).map(p => ({
    title: p.dataset.panel,
    kind: p.classList.contains('coo-graph') ? 'graph' : 'value',
    nodata: p.querySelectorAll('.coo-nodata, .prom_graph_error').length,
    lines: p.querySelectorAll('svg path').length,
    values: p.querySelectorAll('.coo-value, .coo-series tr').length,
    text: p.innerText.slice(0, 200)}))"""


def test_every_dashboard_page_shows_every_panel_with_data(stack, missions, watched):
    _wait_for_every_panel_query(stack)
    page, base = watched.page, stack.s.url(stack.s.prometheus_port)
    page.goto(base + consoles.INDEX_PATH, wait_until="networkidle")
    boards = consoles.dashboards()
    assert page.locator(".coo-index a").count() == len(boards)
    shot(page, "dashboards-index.png")
    bad: list[str] = []
    for board in boards:
        page.goto(f"{base}/consoles/{board.page}{WINDOW}", wait_until="networkidle")
        page.wait_for_function("() => document.querySelectorAll('.prom_graph_loading').length === 0", timeout=30000)
        panels = page.evaluate(_PANEL_CHECK)
        assert "error executing template" not in page.content(), board.name
        assert len(panels) == sum(1 for _ in board.panels()), board.name
        for p in panels:
            empty = p["nodata"] or (p["lines"] == 0 if p["kind"] == "graph" else p["values"] == 0)
            if empty:
                bad.append(f"{board.name}: {p['title']}: {p['text']!r}")
        shot(page, f"dashboard-{board.name}.png", full_page=True)
    assert not bad, "panels without data on the pages:\n" + "\n".join(bad)
    assert not watched.problems, watched.problems


# ------------------------------------------------------------------------------ alerts and links
def test_coo_alerts_lists_the_budget_alert_with_its_runbook(stack, missions):
    am = stack.s.url(stack.s.alertmanager_port, "/api/v2/alerts")

    def fired() -> bool:
        return any(a["labels"].get("alertname") == "BudgetExceeded" for a in httpx.get(am, timeout=5).json())

    if not fired():
        # The rule sees an increase of coo_budget_exceeded_total: on a young stack its series was born
        # with the fixture's over-budget mission, so once Prometheus has it, exceed the budget again.
        deadline = time.monotonic() + 60
        while not stack.prom('coo_budget_exceeded_total{scope="mission"}'):
            assert time.monotonic() < deadline, "coo_budget_exceeded_total never reached Prometheus"
            time.sleep(1)
        over = stack.submit("write a palindrome checker [mock:expensive]", budget_usd=0.05)
        stack.wait(over["mission_id"], {"budget_exceeded", "completed", "failed"})
    deadline = time.monotonic() + 120
    while not fired():
        assert time.monotonic() < deadline, "BudgetExceeded never fired"
        time.sleep(2)
    res = cli(stack.s, "alerts", "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    alert = next(a for a in body["firing"] if a["alertname"] == "BudgetExceeded")
    assert alert["severity"] == "critical" and alert["labels"].get("scope") == "mission"
    assert alert["runbook_link"] == f"{REPO_ROOT / 'docs/operations.md'}#budgetexceeded"
    assert "coo-orchestrator" in alert["receivers"]
    res = cli(stack.s, "alerts")
    assert res.returncode == 0 and "BudgetExceeded" in res.stdout and "operations.md#budgetexceeded" in res.stdout


def test_status_mission_and_trace_give_the_links(stack, missions):
    s, m = stack.s, missions["demo"]
    trace_ui = s.url(s.viewer_port, f"/traces/{m['trace_id']}")
    res = cli(s, "status", "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    viewer = next(c for c in status["components"] if c["name"] == "viewer")
    assert viewer["healthy"] and viewer["url"] == s.url(s.viewer_port)
    assert status["pages"]["dashboards"] == s.url(s.prometheus_port, consoles.INDEX_PATH)
    assert status["pages"]["trace_ui"] == s.url(s.viewer_port, "/traces")
    res = cli(s, "status")
    assert "open in a browser" in res.stdout and s.url(s.prometheus_port, consoles.INDEX_PATH) in res.stdout
    res = cli(s, "mission", m["mission_id"], "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["trace_ui_url"] == trace_ui
    res = cli(s, "mission", m["mission_id"])
    assert trace_ui in res.stdout and f"mission.id = {m['mission_id']}" in res.stdout
    res = cli(s, "trace", m["mission_id"], "--json", "--wait", "20")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["trace_ui_url"] == trace_ui

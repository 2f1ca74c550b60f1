"""The dashboards' console pages (coo.stack.consoles): generated from the Grafana JSON and not stale,
every panel on its page, and served by a real Prometheus (Debian's 2.42) with every static file they
load. With data, in a browser: tests/test_stack_ui.py."""

from __future__ import annotations

import html.parser
import json
import shutil
from pathlib import Path

import httpx
import pytest

from coo.stack import consoles
from tests.natsserver import free_port
from tests.procs import serve

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def test_console_pages_are_not_stale():
    assert consoles.stale() == [], "run `.venv/bin/python -m coo.stack.consoles` and commit the pages"
    assert consoles.main(["--check"]) == 0


def test_every_panel_and_query_is_on_its_page():
    boards = consoles.dashboards()
    assert {b.name for b in boards} == {p.stem for p in consoles.DASHBOARDS_DIR.glob("*.json")}
    for board in boards:
        page = (consoles.CONSOLES_DIR / board.page).read_text()
        raw = json.loads((consoles.DASHBOARDS_DIR / f"{board.name}.json").read_text())
        panels = [p for p in _grafana_panels(raw) if p.get("type") != "row"]
        assert page.count('class="coo-panel ') == len(panels), board.name
        for panel in panels:
            assert f'data-panel="{consoles._text(panel["title"])}"' in page, (board.name, panel["title"])
            for target in panel.get("targets", []):
                in_script = json.dumps(target["expr"]).replace("<", "\\u003c")
                assert in_script in page or f"`{target['expr']}`" in page, target["expr"]


def test_a_stale_page_is_reported(tmp_path):
    for name, text in consoles.render_all().items():
        (tmp_path / name).write_text(text)
    assert consoles.stale(tmp_path) == []
    (tmp_path / "coo-missions.html").write_text("old")
    (tmp_path / "coo-gone.html").write_text("left over")
    assert consoles.stale(tmp_path) == ["coo-gone.html", "coo-missions.html"]


def test_unknown_panel_types_are_refused():
    with pytest.raises(ValueError, match="no console rendering"):
        consoles.render_panel(consoles.Panel(1, "piechart", "pie", "", 6, "", []))


def _grafana_panels(board: dict):
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


class _Assets(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("prom-consoles")
    port = free_port()
    (root / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n"
        f"  - job_name: prometheus\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    base = f"http://127.0.0.1:{port}"
    with serve([PROMETHEUS, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", f"--web.console.templates={consoles.CONSOLES_DIR}",
                f"--web.console.libraries={consoles.LIBRARIES_DIR}"], base + "/-/ready", root / "prometheus.log"):
        yield base


def test_prometheus_serves_every_page_and_every_file_it_loads(prometheus):
    pages = sorted(p.name for p in consoles.CONSOLES_DIR.glob("*.html"))
    assert "index.html" in pages and len(pages) == len(consoles.dashboards()) + 1
    assets: set[str] = set()
    for name in pages:
        resp = httpx.get(f"{prometheus}/consoles/{name}", timeout=10)
        assert resp.status_code == 200, (name, resp.text[:500])
        assert "error executing template" not in resp.text and "{{" not in resp.text, name
        parser = _Assets()
        parser.feed(resp.text)
        assert parser.urls, name
        assets |= set(parser.urls)
        # the nav links every dashboard
        for other in pages:
            if other != "index.html":
                assert f"/consoles/{other}" in resp.text
    assert any(a.endswith("prom_console.js") for a in assets) and any(a.endswith("rickshaw.js") for a in assets)
    for url in sorted(assets):
        resp = httpx.get(prometheus + url, timeout=10)
        assert resp.status_code == 200 and len(resp.content) > 100, (url, resp.status_code)
        assert "text/html" not in resp.headers.get("content-type", ""), url


def test_a_page_without_data_says_so(prometheus):
    # Prometheus scrapes only itself here: COO's panels have no data, and say so rather than nothing
    text = httpx.get(f"{prometheus}/consoles/coo-missions.html", timeout=10).text
    assert text.count('class="coo-nodata"') == 4  # the four stat panels of the overview row
    assert "COO.graph(" in text

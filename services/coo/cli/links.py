"""Where a person looks in a browser: the trace UI (otel-desktop-viewer, local stack only) and the
dashboards (the Grafana dashboards as Prometheus console pages)."""

from __future__ import annotations

from functools import cache

import httpx

from coo.stack import viewer
from coo.stack.components import StackSettings
from coo.stack.consoles import INDEX_PATH


def _settings(s: StackSettings | None) -> StackSettings:
    return s or StackSettings()


@cache
def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def trace_ui_url(trace_id: str | None, s: StackSettings | None = None, *, check: bool = True) -> str | None:
    """The trace's waterfall in otel-desktop-viewer; None without a trace id, or (``check``) when
    no viewer answers (the Docker stack has Jaeger's UI instead)."""
    s = _settings(s)
    if not trace_id or (check and not _answers(s.url(s.viewer_port, "/"))):
        return None
    return s.url(s.viewer_port, viewer.trace_path(trace_id))


def trace_ui_search_hint(mission_id: str) -> str:
    """What to type in the viewer's search box to find a mission's trace."""
    return f"mission.id = {mission_id}"


def dashboards_url(s: StackSettings | None = None) -> str:
    s = _settings(s)
    return s.url(s.prometheus_port, INDEX_PATH)

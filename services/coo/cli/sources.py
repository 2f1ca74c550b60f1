"""Read-only clients of the telemetry backends the CLI shows: Prometheus' query API and Jaeger's HTTP API."""

from __future__ import annotations

import math

import httpx

from coo.cli.output import CliError
from coo.cli.util import jaeger_base, prometheus_base


class Prometheus:
    def __init__(self, base_url: str | None = None, timeout: float = 5.0) -> None:
        self.base_url = base_url or prometheus_base()
        self.timeout = timeout

    def up(self) -> bool:
        try:
            return httpx.get(self.base_url + "/-/ready", timeout=min(self.timeout, 2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[tuple[dict, float]]:
        """An instant query: [(labels, value)]; NaN values are dropped."""
        try:
            resp = httpx.get(self.base_url + "/api/v1/query", params={"query": expr}, timeout=self.timeout)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CliError(f"Prometheus at {self.base_url} failed: {type(exc).__name__} {exc}".strip()) from None
        if body.get("status") != "success":
            raise CliError(f"Prometheus rejected {expr!r}: {body.get('error', body)}")
        out = []
        for r in body["data"]["result"]:
            value = float(r["value"][1])
            if not math.isnan(value):
                out.append((r.get("metric", {}), value))
        return out

    def scalar(self, expr: str) -> float | None:
        rows = self.query(expr)
        return rows[0][1] if rows else None


def jaeger_trace(trace_id: str, base_url: str | None = None, timeout: float = 10.0) -> dict | None:
    """The trace from Jaeger's HTTP API (GET /api/traces/<id>), or None when Jaeger does not have it."""
    base = base_url or jaeger_base()
    try:
        resp = httpx.get(f"{base}/api/traces/{trace_id}", timeout=timeout)
    except httpx.HTTPError as exc:
        raise CliError(f"Jaeger at {base} is not reachable ({type(exc).__name__})",
                       "is the stack up? (`coo status`); COO_JAEGER_QUERY_PORT sets its port") from None
    if resp.status_code == 404:
        return None
    try:
        body = resp.json()
    except ValueError:
        raise CliError(f"Jaeger at {base} did not answer JSON (HTTP {resp.status_code})") from None
    errors = body.get("errors") or []
    if any(e.get("code") == 404 for e in errors):
        return None
    if resp.status_code >= 400 or errors:
        msg = "; ".join(str(e.get("msg")) for e in errors) or f"HTTP {resp.status_code}"
        raise CliError(f"Jaeger refused trace {trace_id}: {msg}")
    data = body.get("data") or []
    return data[0] if data else None

"""`coo metrics`: execution metrics from Prometheus, or from the missions API when it is down."""

from __future__ import annotations

import csv
import io
import statistics
from datetime import UTC, datetime

import typer
from rich.table import Table

from coo.cli.client import Api, api_url
from coo.cli.mission_cmds import FINAL
from coo.cli.output import CliError, console, emit_json
from coo.cli.sources import Prometheus
from coo.cli.util import duration, iso, since_option, usd, validate_since


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _metrics_from_api(after: datetime) -> dict:
    rows: list[dict] = []
    with Api() as api:
        cursor = None
        while True:   # every page: exact, however many missions the window holds
            page = api.get("/v1/missions", since=iso(after), limit=1000, cursor=cursor)
            rows += page["missions"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
    finished = [m for m in rows if m["status"] in FINAL]
    by_status: dict[str, int] = {}
    for m in finished:
        by_status[m["status"]] = by_status.get(m["status"], 0) + 1
    durations = sorted(m["duration_seconds"] for m in finished if m.get("duration_seconds") is not None)
    return {
        "missions_finished": len(finished),
        "missions_live": len(rows) - len(finished),
        "by_status": by_status,
        "success_rate": (by_status.get("completed", 0) / len(finished)) if finished else None,
        "duration_seconds": {"p50": _quantile(durations, 0.50), "p95": _quantile(durations, 0.95)},
        "retries": sum(m["retries"] for m in rows),
        "missions_with_retries": sum(1 for m in rows if m["retries"]),
        "cost_usd": round(sum(m["cost_usd"] for m in rows), 6),
        "tokens": {"input": sum(m["tokens"]["input"] for m in rows),
                   "output": sum(m["tokens"]["output"] for m in rows)},
        "truncated": len(rows) >= 1000,
    }


def _increase(metric: str, w: str, by: str = "") -> str:
    """The increase of a counter over the window, counting series born inside it in full (``increase()``
    alone misses a series' first sample, e.g. a histogram's first observation)."""
    inner = f"(increase({metric}[{w}]) and {metric} offset {w}) or ({metric} unless {metric} offset {w})"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def _metrics_from_prometheus(prom: Prometheus, window_s: int) -> dict:
    w = f"{max(window_s, 60)}s"
    by_status = {labels.get("status", "?"): round(v) for labels, v in
                 prom.query(_increase("coo_missions_total", w, "status"))}
    by_status = {k: v for k, v in by_status.items() if v}
    finished = sum(by_status.values())

    def q(expr: str) -> float | None:
        v = prom.scalar(expr)
        return None if v is None else round(v, 6)

    live = q("sum(coo_missions_active)")
    buckets = _increase("coo_mission_duration_seconds_bucket", w, "le")
    p50 = q(f"histogram_quantile(0.5, {buckets})")
    p95 = q(f"histogram_quantile(0.95, {buckets})")
    tokens = {labels.get("type", "?"): round(v) for labels, v in
              prom.query(_increase("coo_llm_tokens_total", w, "type"))}
    return {
        "missions_finished": finished,
        "missions_live": None if live is None else round(live),
        "by_status": by_status,
        "success_rate": (by_status.get("completed", 0) / finished) if finished else None,
        # estimated from the histogram's buckets (linear interpolation inside a bucket)
        "duration_seconds": {"p50": p50 if finished else None, "p95": p95 if finished else None},
        "retries": round(q(_increase("coo_mission_retries_total", w)) or 0),
        "cost_usd": q(_increase("coo_llm_cost_usd_total", w)) or 0.0,
        "tokens": {"input": tokens.get("input", 0), "output": tokens.get("output", 0)},
        "llm_errors": round(q(_increase("coo_llm_errors_total", w)) or 0),
        "dlq_size": q("max(coo_dlq_messages)"),
    }


def _flatten(prefix: str, obj, out: list[tuple[str, object]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out.append((prefix, "" if obj is None else obj))


def metrics(since: str = typer.Option("1h", "--since", callback=validate_since,
                                      help="The window: ISO-8601 start or 30m, 1h, 2d."),
            source: str = typer.Option("auto", "--source", help="auto (Prometheus when it is up, else the "
                                       "missions API), prometheus, or api."),
            export: str | None = typer.Option(None, "--export", help="json or csv on stdout."),
            json_out: bool = typer.Option(False, "--json", help="Same as --export json.")) -> None:
    """Execution metrics: success rate, duration p50/p95, retries, cost — and which source they came from."""
    if source not in ("auto", "prometheus", "api"):
        raise typer.BadParameter("one of auto, prometheus, api", param_hint="--source")
    if export is not None and export not in ("json", "csv"):
        raise typer.BadParameter("json or csv", param_hint="--export")
    after = since_option(since)
    now = datetime.now(UTC)
    if after >= now:
        raise typer.BadParameter("the window must start in the past", param_hint="--since")
    window_s = int((now - after).total_seconds())
    prom = Prometheus()
    why_not = ""
    if source in ("auto", "prometheus"):
        if prom.up():
            data = _metrics_from_prometheus(prom, window_s)
            used = {"source": "prometheus", "url": prom.base_url}
        elif source == "prometheus":
            raise CliError(f"Prometheus at {prom.base_url} is not ready",
                           "start the stack (`coo up`) or use --source api")
        else:
            why_not = f"Prometheus at {prom.base_url} is not ready"
    if source == "api" or why_not:
        data = _metrics_from_api(after)
        used = {"source": "missions api", "url": api_url()}
        if why_not:
            used["note"] = why_not
    result = {**used, "since": iso(after), "window_seconds": window_s, **data}
    fmt = "json" if json_out else export
    if fmt == "json":
        emit_json(result)
        return
    if fmt == "csv":
        typer.echo(_csv(result), nl=False)
        return
    _print_table(result, used, window_s)


def _csv(result: dict) -> str:
    """``metric,value`` rows, nested keys dotted."""
    rows: list[tuple[str, object]] = []
    _flatten("", result, rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("metric", "value"))
    w.writerows(rows)
    return buf.getvalue()


def _print_table(result: dict, used: dict, window_s: int) -> None:
    console.print(f"execution metrics since {result['since']} (the last {duration(window_s)})")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    sr = result["success_rate"]
    table.add_row("missions finished", str(result["missions_finished"]))
    for st, n in sorted(result["by_status"].items()):
        table.add_row(f"  {st}", str(n))
    if result.get("missions_live") is not None:
        table.add_row("missions live now" if used["source"] == "prometheus" else "missions live",
                      str(result["missions_live"]))
    table.add_row("success rate", "—" if sr is None else f"{sr * 100:.1f}%")
    table.add_row("duration p50", duration(result["duration_seconds"]["p50"]))
    table.add_row("duration p95", duration(result["duration_seconds"]["p95"]))
    table.add_row("retries", str(result["retries"]))
    table.add_row("cost", usd(result["cost_usd"]))
    table.add_row("tokens (in+out)", f"{result['tokens']['input']}+{result['tokens']['output']}")
    if "llm_errors" in result:
        table.add_row("LLM errors", str(result["llm_errors"]))
    console.print(table)
    console.print(f"source: {used['source']} ({used['url']})" + (f"; {used['note']}" if used.get("note") else ""))


app = typer.Typer()
app.command()(metrics)

"""Operating the system: `coo dlq`, `coo budget`, `coo metrics`, `coo health`, `coo watch`."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from coo.cli.client import Api, api_url
from coo.cli.main import CliError, console, emit_json
from coo.cli.mission_cmds import FINAL, step_of
from coo.cli.sources import Prometheus
from coo.cli.util import ago, duration, iso, settings, since_option, status_markup, truncate, usd, validate_since

# ------------------------------------------------------------------------------------------- dlq

dlq_app = typer.Typer(help="Dead letters: messages that could never be processed.", no_args_is_help=True)


@dlq_app.command("list")
def dlq_list(limit: int = typer.Option(100, "--limit", min=1, max=1000, help="The newest N dead letters."),
             json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """The dead letters, oldest first, with their reason."""
    with Api() as api:
        body = api.get("/v1/dlq", limit=limit)
    if json_out:
        emit_json(body)
        return
    rows = body["dead_letters"]
    if not rows:
        console.print("the dead-letter queue is empty")
        return
    table = Table(title=f"dead letters ({len(rows)})", title_justify="left")
    for col in ("id", "kind", "stream", "seq", "consumer", "deliveries", "reason", "at"):
        table.add_column(col)
    for d in rows:
        table.add_row(str(d["dlq_id"]), d["kind"], d["stream"], str(d["stream_seq"]), d["consumer"],
                      str(d["deliveries"]), escape(truncate(d["reason"], 70)), str(d.get("at") or ""))
    console.print(table)
    console.print("[dim]replay one, once its cause is fixed: coo dlq replay ID[/dim]")


@dlq_app.command("replay")
def dlq_replay(dlq_id: int = typer.Argument(..., min=1, metavar="ID", help="The dead letter's id (coo dlq list)."),
               json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Publish a dead letter's original message again (fresh message id) and remove the dead letter."""
    with Api() as api:
        body = api.post(f"/v1/dlq/{dlq_id}/replay", hints={404: "list the dead letters with `coo dlq list`"})
    if json_out:
        emit_json(body)
        return
    console.print(f"dead letter {dlq_id} replayed: {body.get('subject')} (from {body.get('stream')} "
                  f"seq {body.get('stream_seq')}); if it is still bad it returns with its reason (coo dlq list)")


# ---------------------------------------------------------------------------------------- budget

def _budget_table(scopes: list[dict], title: str = "budget") -> Table:
    table = Table(title=title, title_justify="left")
    for col, right in (("scope", False), ("key", False), ("limit", True), ("spent", True), ("reserved", True),
                       ("remaining", True), ("used", True), ("tokens spent", True), ("open reservations", True)):
        table.add_column(col, justify="right" if right else "left")
    for sc in scopes:
        limit = sc["limit_usd"]
        used = f"{(sc['spent_usd'] + sc['reserved_usd']) / limit * 100:.1f}%" if limit else "—"
        colour = "red" if limit and sc["remaining_usd"] is not None and sc["remaining_usd"] <= 0 else (
            "yellow" if limit and (sc["remaining_usd"] or 0) < 0.1 * limit else "")
        remaining = usd(sc["remaining_usd"]) if limit else "no limit"
        table.add_row(sc["scope"], sc["key"], usd(limit) if limit else "none", usd(sc["spent_usd"]),
                      usd(sc["reserved_usd"]), f"[{colour}]{remaining}[/{colour}]" if colour else remaining, used,
                      str(sc["spent_tokens"]), str(sc["reservations"]))
    return table


def budget(mission: str | None = typer.Option(None, "--mission", help="Also this mission's scope."),
           json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Spent, reserved and remaining per budget scope (mission, daily, monthly)."""
    with Api() as api:
        body = api.get("/v1/budget", mission_id=mission)
    if json_out:
        emit_json(body)
        return
    console.print(_budget_table(body["scopes"]))


# --------------------------------------------------------------------------------------- metrics

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
            raise CliError(f"Prometheus at {prom.base_url} is not ready", "start the stack (`coo up`) or use --source api")
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
        rows: list[tuple[str, object]] = []
        _flatten("", result, rows)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("metric", "value"))
        w.writerows(rows)
        typer.echo(buf.getvalue(), nl=False)
        return
    console.print(f"execution metrics since {result['since']} (the last {duration(window_s)})")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    sr = result["success_rate"]
    table.add_row("missions finished", str(result["missions_finished"]))
    for st, n in sorted(result["by_status"].items()):
        table.add_row(f"  {st}", str(n))
    if result.get("missions_live") is not None:
        table.add_row("missions live now" if used["source"] == "prometheus" else "missions live", str(result["missions_live"]))
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


# ---------------------------------------------------------------------------------------- health

def _http_check(url: str, timeout: float = 2.0, want_json_status: bool = False) -> tuple[bool, str]:
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__} {str(exc)[:120]}".strip()
    if want_json_status:
        # a readiness answer (200 ready, 503 not): its checks say what is wrong (e.g. which sandbox
        # backend is in use and why it does not work), in full
        try:
            body = resp.json()
            checks = body.get("checks") or {}
            bad = [f"{k}: {v.get('detail')}" for k, v in checks.items() if isinstance(v, dict) and not v.get("ok")]
            if bad:
                return False, "; ".join(bad)
            if resp.status_code < 400:
                return True, ", ".join(f"{k} {v.get('detail')}" for k, v in checks.items()
                                       if isinstance(v, dict)) or "ready"
        except (ValueError, AttributeError):
            pass
    if resp.status_code >= 400:
        detail = resp.text.strip().replace("\n", " ")[:160]
        return False, f"{url}: HTTP {resp.status_code} {detail}"
    return True, f"HTTP {resp.status_code}"


def _writable(path: Path) -> tuple[bool, str]:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False, f"{path}: no existing parent"
        probe = probe.parent
    if not probe.is_dir():
        return False, f"{probe} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".coo-health-"):
            pass
    except OSError as exc:
        return False, f"{probe} is not writable: {exc.strerror or exc}"
    return True, str(path) + ("" if probe == path else f" (does not exist yet; {probe} is writable)")


def _config_checks() -> list[dict]:
    out = []
    classes = [("StackSettings", "coo.stack.components", "StackSettings"),
               ("OrchestratorSettings", "coo.orchestrator.settings", "OrchestratorSettings"),
               ("AgentSettings", "coo.agent.settings", "AgentSettings"),
               ("BudgetSettings", "coo.budget.settings", "BudgetSettings"),
               ("SandboxSettings", "coo.sandbox.settings", "SandboxSettings")]
    import importlib

    from pydantic import ValidationError

    for name, module, cls in classes:
        try:
            getattr(importlib.import_module(module), cls)()
            out.append({"check": f"config {name}", "ok": True, "detail": "loads from the environment"})
        except ValidationError as exc:
            errs = "; ".join(f"COO_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
            out.append({"check": f"config {name}", "ok": False, "detail": errs})
        except Exception as exc:  # noqa: BLE001 - a JSON setting that does not parse, an import error
            out.append({"check": f"config {name}", "ok": False, "detail": f"{type(exc).__name__}: {str(exc)[:200]}"})
    return out


def health_checks() -> list[dict]:
    s = settings()
    checks: list[dict] = []

    def add(name: str, result: tuple[bool, str]) -> None:
        checks.append({"check": name, "ok": result[0], "detail": result[1]})

    add("nats + jetstream", _http_check(s.url(s.nats_monitor_port, "/healthz?js-enabled-only=true")))
    orchestrator = os.environ.get("COO_API_URL") or s.url(s.orchestrator_port)
    add("orchestrator", _http_check(orchestrator.rstrip("/") + "/readyz", want_json_status=True))
    for name, port in (("agent", s.agent_port), ("budget", s.budget_port), ("sandbox", s.sandbox_port)):
        add(name, _http_check(s.url(port, "/readyz"), want_json_status=True))
    llm = os.environ.get("COO_LLM_BASE_URL", "")
    if not llm or f":{s.mockllm_port}" in llm:  # the mock LLM is in use (a real provider: the agent checks it)
        add("mockllm", _http_check(s.url(s.mockllm_port, "/healthz")))
    add("collector", _http_check(s.url(s.otelcol_health_port, "/")))
    add("jaeger", _http_check(s.url(s.jaeger_query_port, "/api/services")))
    add("prometheus", _http_check(s.url(s.prometheus_port, "/-/ready")))
    add("alertmanager", _http_check(s.url(s.alertmanager_port, "/-/ready")))
    checks += _config_checks()
    dirs = {"state dir": s.state, "data dir": s.state / "data"}
    if os.environ.get("COO_DATA_DIR"):
        dirs["data dir"] = Path(os.environ["COO_DATA_DIR"]).resolve()
    for name, path in dirs.items():
        add(f"{name} writable", _writable(path))
    return checks


def health(json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Check every dependency, the configuration and the data directories; exit 1 when anything fails."""
    checks = health_checks()
    failed = [c for c in checks if not c["ok"]]
    if json_out:
        emit_json({"ok": not failed, "checks": checks, "failed": [c["check"] for c in failed]})
    else:
        table = Table(title="COO health", title_justify="left")
        for col in ("check", "result", "detail"):
            table.add_column(col)
        for c in checks:
            table.add_row(c["check"], "[green]pass[/green]" if c["ok"] else "[red]FAIL[/red]", escape(c["detail"]))
        console.print(table)
        console.print(f"[red]{len(failed)} check(s) failed[/red]: {', '.join(c['check'] for c in failed)}"
                      if failed else "[green]all checks passed[/green]")
    if failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------- watch

LIVE_STATES = ("created", "planning", "awaiting_approval", "executing", "reviewing", "paused")


def snapshot(api: Api, prom: Prometheus) -> dict:
    snap: dict = {"at": iso(datetime.now(UTC)), "errors": []}
    try:
        # every live mission (the index answers the filter), however old; the newest for the last hour
        live = api.get("/v1/missions", status="live", limit=1000)["missions"]
        rows = api.get("/v1/missions", limit=1000)["missions"]
        snap["missions"] = [{"mission_id": m["mission_id"], "status": m["status"], "step": step_of(m),
                             "created_at": m["created_at"], "duration_seconds": m["duration_seconds"],
                             "cost_usd": m["cost_usd"], "budget_usd": m["budget_usd"], "retries": m["retries"],
                             "goal": m["goal"]} for m in live if m["status"] in LIVE_STATES]
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        recent = [m for m in rows if m["status"] in FINAL and m.get("finished_at")
                  and datetime.fromisoformat(m["finished_at"]) >= hour_ago]
        snap["finished_last_hour"] = {st: sum(1 for m in recent if m["status"] == st)
                                      for st in sorted({m["status"] for m in recent})}
    except CliError as exc:
        snap["missions"] = None
        snap["errors"].append(str(exc))
    try:
        snap["budget"] = api.get("/v1/budget")["scopes"]
    except CliError as exc:
        snap["budget"] = None
        snap["errors"].append(f"budget: {exc}")
    try:
        snap["admission"] = api.get("/v1/status")
    except CliError:
        snap["admission"] = None
    if prom.up():
        try:
            per_min = {labels.get("status", "?"): round(v * 60, 3) for labels, v in
                       prom.query("sum by (status) (rate(coo_missions_total[5m]))")}
            snap["rates"] = {
                "source": "prometheus",
                "missions_started_per_min": round((prom.scalar("sum(rate(coo_missions_started_total[5m]))") or 0) * 60, 3),
                "missions_finished_per_min": {k: v for k, v in per_min.items() if v},
                "llm_cost_usd_per_hour": round((prom.scalar("sum(rate(coo_llm_cost_usd_total[5m]))") or 0) * 3600, 4),
                "llm_tokens_per_s": round(prom.scalar("sum(rate(coo_llm_tokens_total[5m]))") or 0, 2),
                "retries_per_min": round((prom.scalar("sum(rate(coo_mission_retries_total[5m]))") or 0) * 60, 3),
                "dlq_size": prom.scalar("max(coo_dlq_messages)"),
            }
        except CliError as exc:
            snap["rates"] = None
            snap["errors"].append(str(exc))
    else:
        snap["rates"] = None
        snap["errors"].append(f"Prometheus at {prom.base_url} is not ready: no rates")
    return snap


def render(snap: dict) -> Group:
    parts = []
    missions = snap.get("missions")
    if missions is None:
        parts.append(Panel("[red]the orchestrator does not answer[/red]", title="missions"))
    else:
        table = Table(title=f"live missions ({len(missions)})", title_justify="left")
        for col in ("mission", "status", "step", "age", "cost / budget", "retries", "goal"):
            table.add_column(col, no_wrap=col in ("mission",))
        for m in missions[:30]:
            table.add_row(m["mission_id"], status_markup(m["status"]), escape(truncate(m["step"], 60)),
                          ago(m["created_at"]).removesuffix(" ago"), f"{usd(m['cost_usd'])} / {usd(m['budget_usd'])}",
                          str(m["retries"]), escape(truncate(m["goal"], 40)))
        if not missions:
            table.add_row("—", "no live missions", "", "", "", "", "")
        parts.append(table)
        done = snap.get("finished_last_hour") or {}
        parts.append("finished in the last hour: " + (", ".join(f"{k} {v}" for k, v in done.items()) or "none"))
    rates = snap.get("rates")
    if rates:
        fin = ", ".join(f"{k} {v:g}" for k, v in rates["missions_finished_per_min"].items()) or "0"
        parts.append(Panel(
            f"missions started {rates['missions_started_per_min']:g}/min · finished {fin} /min · "
            f"retries {rates['retries_per_min']:g}/min\n"
            f"LLM cost {usd(rates['llm_cost_usd_per_hour'])}/h · {rates['llm_tokens_per_s']:g} tokens/s · "
            f"DLQ {'—' if rates['dlq_size'] is None else int(rates['dlq_size'])}",
            title="rates (Prometheus, 5m)", title_align="left"))
    if snap.get("budget"):
        parts.append(_budget_table(snap["budget"], title="budget"))
    adm = snap.get("admission")
    if adm:
        parts.append("admission: " + ("[green]open[/green]" if adm["admission"] == "open" else
                                      "[red]closed[/red] for " + ", ".join(adm["blocked_scopes"])))
    for e in snap.get("errors", []):
        parts.append(f"[yellow]{escape(e)}[/yellow]")
    parts.append(f"[dim]{snap['at']} · Ctrl-C quits[/dim]")
    return Group(*parts)


def watch(interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between refreshes."),
          once: bool = typer.Option(False, "--once", help="Render one frame and exit."),
          json_out: bool = typer.Option(False, "--json", help="JSON snapshots on stdout (one a line; one with --once).")
          ) -> None:
    """A live view of running missions, rates (from Prometheus) and budget; Ctrl-C quits."""
    prom = Prometheus(timeout=2.0)
    with Api(timeout=5.0) as api:
        if once:
            snap = snapshot(api, prom)
            if snap["missions"] is None:
                raise CliError(snap["errors"][0])
            if json_out:
                emit_json(snap)
            else:
                console.print(render(snap))
            return
        try:
            if json_out:
                while True:
                    typer.echo(json.dumps(snapshot(api, prom), default=str))
                    time.sleep(interval)
            with Live(render(snapshot(api, prom)), console=console, refresh_per_second=4, screen=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(snapshot(api, prom)))
        except KeyboardInterrupt:
            return


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
    app.command()(budget)
    app.command()(metrics)
    app.command()(health)
    app.command()(watch)

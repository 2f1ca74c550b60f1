"""`coo watch`: a live view of running missions, rates and budget."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from coo.cli.budget_cmd import budget_table
from coo.cli.client import Api
from coo.cli.mission_cmds import FINAL, step_of
from coo.cli.output import CliError, console, emit_json
from coo.cli.sources import Prometheus
from coo.cli.util import ago, iso, status_markup, truncate, usd

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
                "missions_started_per_min":
                    round((prom.scalar("sum(rate(coo_missions_started_total[5m]))") or 0) * 60, 3),
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
    parts: list[RenderableType] = []
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
        parts.append(budget_table(snap["budget"], title="budget"))
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


app = typer.Typer()
app.command()(watch)

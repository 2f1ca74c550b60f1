"""`coo run`: submit a mission and follow it."""

from __future__ import annotations

import time

import typer
from rich.status import Status

from coo.cli.client import Api
from coo.cli.main import CliError, console, emit_json

FINAL = {"completed", "failed", "cancelled", "budget_exceeded"}


def jaeger_url(trace_id: str) -> str:
    from coo.stack.components import StackSettings

    s = StackSettings()
    return s.url(s.jaeger_query_port, f"/trace/{trace_id}")


def wait_for(api: Api, mission_id: str, timeout: float, *, quiet: bool) -> dict:
    deadline = time.monotonic() + timeout
    last_status = None
    spinner = None if quiet else Status(f"mission {mission_id}: submitted", console=console)
    if spinner:
        spinner.start()
    try:
        while True:
            m = api.get(f"/v1/missions/{mission_id}")
            if spinner and m["status"] != last_status:
                if last_status is not None:
                    console.print(f"  [dim]{time.strftime('%H:%M:%S')}[/dim] {m['status']}"
                                  + (f" — {m['status_reason']}" if m.get("status_reason") else ""))
                last_status = m["status"]
            if spinner:
                task = ""
                if m.get("tasks") and m.get("current_task") is not None:
                    t = m["tasks"][m["current_task"]]
                    task = f" · task {m['current_task'] + 1}/{len(m['tasks'])} “{t['title']}” attempt {t['attempts']}"
                spinner.update(f"mission {mission_id}: [bold]{m['status']}[/bold]"
                               f"{' (' + m['awaiting'] + ')' if m.get('awaiting') else ''}{task}"
                               f" · ${m['cost_usd']:.4f}")
            if m["status"] in FINAL or m["status"] == "paused" or m["status"] == "awaiting_approval":
                return m
            if time.monotonic() > deadline:
                raise CliError(f"mission {mission_id} still {m['status']} after {timeout:.0f}s",
                               f"follow it with `coo mission {mission_id}`")
            time.sleep(0.5)
    finally:
        if spinner:
            spinner.stop()


def run(goal: str = typer.Argument(..., help="What the agents should build."),
        budget: float | None = typer.Option(None, "--budget", min=0.0001, help="Mission budget in USD."),
        approve: bool = typer.Option(False, "--approve", help="Require an operator's approval after planning."),
        wait: bool = typer.Option(False, "--wait", help="Follow the mission until it ends (or pauses)."),
        timeout: float = typer.Option(600.0, help="Seconds to wait with --wait."),
        json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Submit a mission; with --wait, show its progress and the final state, cost, duration and trace id.

    Exit codes with --wait: 0 completed, 2 failed/cancelled/budget exceeded, 3 paused or awaiting approval.
    """
    body = {"goal": goal, "require_approval": approve or None}
    if budget is not None:
        body["budget_usd"] = budget
    with Api() as api:
        m = api.post("/v1/missions", {k: v for k, v in body.items() if v is not None})
        if wait:
            m = wait_for(api, m["mission_id"], timeout, quiet=json_out)
    summary = {"mission_id": m["mission_id"], "status": m["status"], "cost_usd": m["cost_usd"],
               "duration_seconds": m["duration_seconds"], "retries": m["retries"], "trace_id": m["trace_id"],
               "tokens": m["tokens"], "error": m.get("error"), "status_reason": m.get("status_reason")}
    if json_out:
        emit_json(summary)
    else:
        colour = {"completed": "green", "failed": "red", "budget_exceeded": "red", "cancelled": "yellow"}.get(
            m["status"], "cyan")
        console.print(f"mission [bold]{m['mission_id']}[/bold]: [{colour}]{m['status']}[/{colour}]"
                      + (f" — {m['error']}" if m.get("error") else ""))
        console.print(f"  cost ${m['cost_usd']:.4f} · {m['tokens']['input']}+{m['tokens']['output']} tokens · "
                      f"{m['duration_seconds']:.1f}s · retries {m['retries']}")
        console.print(f"  trace {m['trace_id']}  {jaeger_url(m['trace_id'])}")
        if not wait:
            console.print(f"  follow it: coo run … --wait, or coo mission {m['mission_id']}")
    if wait:
        if m["status"] in ("failed", "cancelled", "budget_exceeded"):
            raise typer.Exit(2)
        if m["status"] in ("paused", "awaiting_approval"):
            raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command()(run)

"""`coo up`, `coo down`, `coo status`: the local stack."""

from __future__ import annotations

import subprocess
import time

import httpx
import typer
from rich.live import Live
from rich.table import Table

from coo.cli.output import CliError, console, emit_json
from coo.stack import supervisor
from coo.stack.components import REPO_ROOT, StackSettings, components


def _status_table(rows: list[supervisor.ComponentStatus]) -> Table:
    table = Table(title="COO local stack", show_lines=False)
    for col in ("component", "kind", "process", "health", "url"):
        table.add_column(col)
    for r in rows:
        health = "[green]up[/green]" if r.healthy else f"[red]down[/red] [dim]{r.detail}[/dim]"
        if r.state == "unavailable":
            health = f"[yellow]unavailable[/yellow] [dim]{r.detail}[/dim]"
        table.add_row(r.name, r.kind, r.state, health, r.url)
    return table


def _pages(rows: list[supervisor.ComponentStatus]) -> dict[str, str]:
    """The pages for people of the healthy components: {"what": url}."""
    return {what: url for r in rows if r.healthy for what, url in r.links.items()}


PAGE_LABELS = {"trace_ui": "trace UI (traces, logs, metrics)", "dashboards": "dashboards"}


def _print_pages(rows: list[supervisor.ComponentStatus]) -> None:
    pages = _pages(rows)
    if pages:
        console.print("open in a browser:")
        for what, url in pages.items():
            console.print(f"  {PAGE_LABELS.get(what, what):<34} {url}")
        console.print(f"  {'alerts':<34} coo alerts (Alertmanager's API; it has no UI here)")


def up(build: bool = typer.Option(True, help="Build the collector, Jaeger and the trace UI first if not cached."),
       demo: bool = typer.Option(False, "--demo", help="Run a demo mission once the stack is up."),
       timeout: float = typer.Option(120.0, help="Seconds to wait for every component to be healthy."),
       nats_cluster: int | None = typer.Option(
           None, "--nats-cluster", min=1, max=5,
           help="NATS servers to run: 3 for a cluster (every stream on each, one may be lost). "
                "Default: COO_NATS_CLUSTER, else what this state dir ran last, else 1."),
       json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Start the local stack (every component a supervised process on loopback)."""
    s = StackSettings(nats_cluster=nats_cluster) if nats_cluster else StackSettings()
    s.record_nats_cluster()
    if build:
        script = REPO_ROOT / "scripts" / "build-tools.sh"
        if script.exists():
            res = subprocess.run(["bash", str(script), "all"], check=False)
            if res.returncode != 0:
                raise CliError("building the collector, Jaeger or the trace UI failed",
                               "see the output above; re-run `make up`")
    parts = components(s)
    supervisor.start(s, parts)
    deadline = time.monotonic() + timeout
    rows = supervisor.status(s)
    with Live(_status_table(rows), console=console, refresh_per_second=4, transient=json_out) as live:
        while time.monotonic() < deadline:
            rows = supervisor.status(s)
            live.update(_status_table(rows))
            if all(r.healthy for r in rows if r.state != "unavailable"):
                break
            time.sleep(0.5)
    unhealthy = [r.name for r in rows if not r.healthy and r.state != "unavailable"]
    if json_out:
        emit_json({"components": [r.__dict__ for r in rows], "healthy": not unhealthy, "pages": _pages(rows)})
    else:
        _print_pages(rows)
    if unhealthy:
        raise CliError(f"not healthy after {timeout:.0f}s: {', '.join(unhealthy)}",
                       f"look at {s.state / 'logs'}/<component>.log")
    if demo:
        from coo.cli import demo as demo_mod

        demo_mod.run_demo(s, json_out=json_out)


def down(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Stop the local stack."""
    s = StackSettings()
    was_running = supervisor.stop(s)
    if json_out:
        emit_json({"stopped": was_running})
    else:
        console.print("stack stopped" if was_running else "the stack was not running")


def _admission() -> dict | None:
    """The orchestrator's admission state (closed scopes after a BudgetExceeded alert), if it answers."""
    from coo.cli.client import api_url, auth_headers

    try:
        return httpx.get(api_url() + "/v1/status", headers=auth_headers(), timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def status(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every component of the stack with its health and URL, the pages to open in a browser (trace UI,
    dashboards), and whether new missions are admitted."""
    rows = supervisor.status(StackSettings())
    admission = _admission()
    if json_out:
        emit_json({"components": [r.__dict__ for r in rows], "admission": admission, "pages": _pages(rows)})
        return
    console.print(_status_table(rows))
    _print_pages(rows)
    if admission is None:
        console.print("admission: unknown (the orchestrator does not answer)")
    elif admission["admission"] == "open":
        console.print("admission: [green]open[/green]")
    else:
        for scope, block in admission["blocked_scopes"].items():
            console.print(f"admission: [red]closed[/red] for the {scope} budget until {block['until']}"
                          f" — {block.get('summary') or 'BudgetExceeded alert'}")


app = typer.Typer()
app.command()(up)
app.command()(down)
app.command()(status)

"""Missions: `coo run`, `coo missions`, `coo mission ID`, and the controls (pause, resume, cancel, approve)."""

from __future__ import annotations

import time
from datetime import datetime

import typer
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from coo.cli.client import Api
from coo.cli.links import trace_ui_search_hint, trace_ui_url
from coo.cli.output import CliError, console, emit_json
from coo.cli.util import ago, duration, iso, short_time, since_option, status_markup, truncate, usd, validate_since
from coo.v1 import mission_pb2

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
    body: dict[str, object] = {"goal": goal, "require_approval": approve or None}
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




STATUSES = [n.removeprefix("MISSION_STATUS_").lower()
            for n in mission_pb2.MissionStatus.keys()  # noqa: SIM118 - an enum
            if n != "MISSION_STATUS_UNSPECIFIED"]
ROLE_OF = {"plan": "coo", "engineer": "engineer", "sandbox": "sandbox", "qa": "qa"}
DOING = {"coo": "planning", "engineer": "writing", "sandbox": "running", "qa": "reviewing"}


def _status_option(value: str | None) -> str | None:
    if value is not None and value not in (*STATUSES, "live", "final"):
        raise typer.BadParameter(f"{value!r} is not a mission status; one of: {', '.join(STATUSES)}, live, final")
    return value


def _mission_id_arg(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("a mission id is required (see `coo missions`)")
    return value.strip()


# ---------------------------------------------------------------------------------------- missions

def missions(status: str | None = typer.Option(None, "--status", callback=_status_option,
                                               help=f"Only missions in this state ({', '.join(STATUSES)}; "
                                                    "live or final for all of those)."),
             since: str | None = typer.Option(None, "--since", callback=validate_since,
                                              help="Created after: ISO-8601 or 30m, 1h, 2d."),
             limit: int = typer.Option(50, "--limit", min=1, max=1000,
                                       help="At most this many (newest first); with --all, per request."),
             cursor: str | None = typer.Option(None, "--cursor", help="Continue after a previous page (its "
                                                                       "next_cursor, printed below the table)."),
             every: bool = typer.Option(False, "--all", help="Every matching mission: follow the pages to the end."),
             json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """List missions, newest first, a page at a time (--cursor for the next one, --all for all)."""
    after: datetime | None = since_option(since)
    rows: list[dict] = []
    with Api() as api:
        while True:
            body = api.get("/v1/missions", status=status, since=iso(after) if after else None, limit=limit,
                           cursor=cursor)
            rows += body["missions"]
            cursor = body.get("next_cursor")
            if not every or not cursor:
                break
    total = body.get("total", len(rows))
    if json_out:
        emit_json({"missions": rows, "count": len(rows), "total": total, "next_cursor": cursor})
        return
    if not rows:
        console.print("no missions" + (f" with status {status}" if status else "")
                      + (f" since {since}" if since else ""))
        return
    table = Table(title=f"missions ({len(rows)} of {total})", title_justify="left")
    for col, kw in (("mission", {"no_wrap": True}), ("status", {}), ("created", {}), ("duration", {"justify": "right"}),
                    ("cost", {"justify": "right"}), ("retries", {"justify": "right"}), ("goal", {})):
        table.add_column(col, **kw)
    for m in rows:
        table.add_row(m["mission_id"], status_markup(m["status"]), ago(m["created_at"]),
                      duration(m["duration_seconds"]), usd(m["cost_usd"]), str(m["retries"]),
                      escape(truncate(m["goal"], 60)))
    console.print(table)
    if cursor:
        console.print(f"more: coo missions --cursor {cursor}" + (f" --status {status}" if status else "")
                      + (f" --since {since}" if since else "") + (f" --limit {limit}" if limit != 50 else "")
                      + "  (or --all)", soft_wrap=True, highlight=False)


# ----------------------------------------------------------------------------------------- mission

def roles_of(m: dict) -> dict[str, str]:
    """What each role is doing for the mission now (from the work item it awaits)."""
    awaiting_role = ROLE_OF.get(m.get("awaiting") or "")
    tasks = m.get("tasks") or []
    ct = m.get("current_task")
    task_desc = ""
    if tasks and ct is not None and ct < len(tasks):
        t = tasks[ct]
        task_desc = f"task {ct + 1}/{len(tasks)} “{t['title']}”, attempt {t['attempts']}"
    final = m["status"] in FINAL
    out: dict[str, str] = {}
    for role in ("coo", "engineer", "sandbox", "qa"):
        if awaiting_role == role and not final:
            what = "planning the mission" if role == "coo" else f"{DOING[role]} {task_desc}"
            if m["status"] == "paused":
                what += " (paused: its result is held until resume)"
            out[role] = what
        elif role == "coo" and tasks:
            out[role] = f"planned {len(tasks)} task(s)"
        else:
            out[role] = "done" if final and tasks else "idle"
    if m["status"] == "awaiting_approval":
        out["operator"] = f"approval awaited: coo approve {m['mission_id']}"
    return out


def step_of(m: dict) -> str:
    status = m["status"]
    if status in FINAL:
        return f"finished {status}" + (f": {m['status_reason']}" if m.get("status_reason") else "")
    if status == "awaiting_approval":
        return f"awaiting an operator's approval (coo approve {m['mission_id']})"
    role = ROLE_OF.get(m.get("awaiting") or "")
    prefix = f"paused (from {m.get('paused_from')}), " if status == "paused" else ""
    if role:
        what = roles_of({**m, "status": m.get("paused_from") or "executing"} if status == "paused" else m)[role]
        return prefix + f"awaiting {role}: {what}" + (" (its result is held until resume)" if prefix else "")
    return prefix + status


def _budget_of(api: Api, m: dict) -> dict:
    try:
        body = api.get("/v1/budget", mission_id=m["mission_id"])
        scope = next((s for s in body["scopes"] if s["scope"] == "mission"), None)
        if scope:
            return {"source": "budget service", "limit_usd": scope["limit_usd"], "spent_usd": scope["spent_usd"],
                    "reserved_usd": scope["reserved_usd"], "remaining_usd": scope["remaining_usd"],
                    "spent_tokens": scope["spent_tokens"], "reservations": scope["reservations"]}
        why = "the budget service has no scope for it"
    except CliError as exc:
        why = str(exc)
    return {"source": "mission record", "limit_usd": m["budget_usd"], "spent_usd": m["cost_usd"],
            "reserved_usd": None, "remaining_usd": max(m["budget_usd"] - m["cost_usd"], 0.0),
            "spent_tokens": m["tokens"]["input"] + m["tokens"]["output"], "reservations": None, "note": why}


def _info_grid(m: dict, budget: dict, link: str | None, ui: str | None) -> Table:
    """A mission's facts: goal, step, budget, usage, workspace, trace."""
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    info.add_row("goal", escape(truncate(m["goal"], 160)))
    info.add_row("created", f"{m['created_at']} ({ago(m['created_at'])}) · duration {duration(m['duration_seconds'])}")
    info.add_row("step", escape(step_of(m)))
    if m.get("error"):
        info.add_row("error", f"[red]{escape(m['error'])}[/red]")
    pct = f" ({budget['spent_usd'] / budget['limit_usd'] * 100:.1f}%)" if budget["limit_usd"] else ""
    line = f"{usd(budget['spent_usd'])} used of {usd(budget['limit_usd'])}{pct}"
    if budget.get("reserved_usd"):
        line += f" · reserved {usd(budget['reserved_usd'])}"
    if budget.get("remaining_usd") is not None:
        line += f" · remaining {usd(budget['remaining_usd'])}"
    if budget["source"] != "budget service":
        line += f" [dim](from the mission record: {escape(budget.get('note', ''))})[/dim]"
    info.add_row("budget", line)
    info.add_row("usage", f"{m['tokens']['input']}+{m['tokens']['output']} tokens · {m['llm_calls']} LLM calls")
    info.add_row("retries", f"{m['retries']} (max {m['max_retries']} per task)")
    ws = m.get("workspace") or {}
    if ws.get("files"):
        info.add_row("workspace", f"{ws['files']} file(s), {ws['bytes']} bytes  "
                                  f"[dim](coo artifacts {m['mission_id']})[/dim]")
    if m.get("cost_estimated"):
        info.add_row("cost", "[yellow]estimated[/yellow]: the LLM endpoint reported no usage for some calls")
    info.add_row("trace", f"{m.get('trace_id') or '—'}  {link or ''}")
    if ui:
        info.add_row("trace UI", f"{ui}  [dim](or search: {trace_ui_search_hint(m['mission_id'])})[/dim]")
    return info


def _roles_table(m: dict) -> Table:
    roles = Table(title="roles", title_justify="left", show_header=False, box=None, padding=(0, 2))
    roles.add_column(style="bold")
    roles.add_column()
    for role, what in roles_of(m).items():
        roles.add_row(role, escape(what))
    return roles


def _tasks_table(task_list: list[dict]) -> Table:
    tasks = Table(title="tasks", title_justify="left")
    for col in ("#", "title", "status", "attempts", "score", "last feedback"):
        tasks.add_column(col)
    for i, t in enumerate(task_list, 1):
        tasks.add_row(str(i), escape(t["title"]), t["status"], str(t["attempts"]),
                      f"{t['last_score']:.2f}" if t.get("last_feedback") else "—",
                      escape(truncate(t.get("last_feedback"), 70)))
    return tasks


def mission(mission_id: str = typer.Argument(..., callback=_mission_id_arg, help="The mission id."),
            events: int = typer.Option(10, "--events", min=0, max=1000, help="How many recent timeline events."),
            json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """A mission's state: status and reason, each role's current step, budget, retries, tasks, recent events, trace."""
    with Api() as api:
        m = api.get(f"/v1/missions/{mission_id}")
        tl = api.get(f"/v1/missions/{mission_id}/timeline")["events"]
        budget = _budget_of(api, m)
    recent = tl[-events:] if events else []
    link = jaeger_url(m["trace_id"]) if m.get("trace_id") else None
    ui = trace_ui_url(m.get("trace_id"))
    if json_out:
        view = {k: v for k, v in m.items() if k not in ("artifacts",)}
        view["artifacts"] = [a["name"] for a in m.get("artifacts", [])]
        emit_json({"mission": view, "step": step_of(m), "roles": roles_of(m), "budget": budget,
                   "timeline": recent, "timeline_total": len(tl), "trace_id": m.get("trace_id"), "jaeger_url": link,
                   "trace_ui_url": ui})
        return
    head = f"mission [bold]{m['mission_id']}[/bold]: {status_markup(m['status'])}"
    if m.get("status_reason"):
        head += f" — {escape(m['status_reason'])}"
    console.print(head)
    console.print(_info_grid(m, budget, link, ui))
    console.print(_roles_table(m))
    if m.get("tasks"):
        console.print(_tasks_table(m["tasks"]))
    if recent:
        console.print(event_table(recent, title=f"last {len(recent)} of {len(tl)} timeline events"))


def event_table(events: list[dict], title: str = "") -> Table:
    table = Table(title=title or None, title_justify="left")
    for col in ("time", "type", "service", "message"):
        table.add_column(col)
    for e in events:
        colour = {"warning": "yellow", "error": "red", "critical": "red"}.get(e.get("level") or "", "")
        msg = escape(truncate(e.get("message"), 120))
        table.add_row(short_time(e["at"]), f"[{colour}]{e['type']}[/{colour}]" if colour else e["type"],
                      e.get("service") or "", msg)
    return table


# ----------------------------------------------------------------------------------------- controls

EXPECT = {"pause": lambda m: m["status"] == "paused" or m["status"] in FINAL,
          "resume": lambda m: m["status"] != "paused",
          "cancel": lambda m: m["status"] in FINAL,
          "approve": lambda m: m["status"] != "awaiting_approval"}
HELP = {"pause": "Hard-pause a live mission: it processes only control messages until resumed.",
        "resume": "Resume a paused mission (from where it was; a result held meanwhile is applied).",
        "cancel": "Cancel a live mission (it ends cancelled).",
        "approve": "Approve a mission that waits at the approval gate after planning."}


def _control_command(action: str):
    def command(mission_id: str = typer.Argument(..., callback=_mission_id_arg, help="The mission id."),
                reason: str = typer.Option("", "--reason", help="Why (kept on the mission's timeline)."),
                wait: bool = typer.Option(False, "--wait",
                                          help="Wait (up to --timeout) until the mission reflects it."),
                timeout: float = typer.Option(15.0, "--timeout", min=0.1, help="Seconds to wait with --wait."),
                json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
        if len(reason) > 500:
            raise typer.BadParameter("at most 500 characters", param_hint="--reason")
        with Api() as api:
            accepted = api.post(f"/v1/missions/{mission_id}/control", {"action": action, "reason": reason},
                                hints={409: f"see its state with `coo mission {mission_id}`"})
            m = None
            if wait:
                deadline = time.monotonic() + timeout
                while True:
                    m = api.get(f"/v1/missions/{mission_id}")
                    if EXPECT[action](m):
                        break
                    if time.monotonic() > deadline:
                        raise CliError(f"{action} of mission {mission_id} accepted, but it is still {m['status']} "
                                       f"after {timeout:.0f}s", f"see `coo mission {mission_id}`")
                    time.sleep(0.2)
        if json_out:
            emit_json({**accepted, "status": m["status"] if m else None})
            return
        console.print(f"{action} requested for mission [bold]{mission_id}[/bold] (control {accepted['control_id']})")
        if m:
            console.print(f"mission {mission_id} is now {status_markup(m['status'])}")

    command.__doc__ = HELP[action]
    command.__name__ = action
    return command


app = typer.Typer()
app.command()(run)
app.command()(missions)
app.command()(mission)
for _action in ("pause", "resume", "cancel", "approve"):
    app.command(name=_action, help=HELP[_action])(_control_command(_action))

"""What happened: `coo logs ID` (timeline and service logs), `coo trace ID` (Jaeger)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from datetime import UTC, datetime

import typer
from rich.markup import escape
from rich.tree import Tree

from coo.cli import audit as audit_log
from coo.cli.client import Api
from coo.cli.links import trace_ui_url
from coo.cli.mission_cmds import FINAL, _mission_id_arg, jaeger_url
from coo.cli.output import CliError, console, emit_json
from coo.cli.sources import jaeger_trace
from coo.cli.util import iso, jaeger_base, short_time

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def _emit_line(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _event_line(e: dict) -> str:
    colour = {"warning": "yellow", "error": "red", "critical": "red"}.get(e.get("level") or "", "cyan")
    attrs = " ".join(f"{k}={v}" for k, v in (e.get("attributes") or {}).items())
    return (f"[dim]{short_time(e['at'])}[/dim]  [{colour}]{e['type']:<20}[/{colour}] "
            f"{escape(e.get('service') or ''):<12} {escape(e.get('message') or '')}"
            + (f"  [dim]{escape(attrs)}[/dim]" if attrs else ""))


def _follow(fetch: Callable[[], Iterable[dict]], key: Callable[[dict], object], show: Callable[[dict], None],
            finished: Callable[[], bool], interval: float, grace: float) -> None:
    """Print what ``fetch`` returns that was not printed yet, until ``finished()`` (then once more after
    ``grace`` seconds, for what was still on its way) or Ctrl-C."""
    seen: set = set()

    def drain() -> None:
        for item in fetch():
            k = key(item)
            if k not in seen:
                seen.add(k)
                show(item)

    try:
        while True:
            done = finished()
            drain()
            if done:
                time.sleep(grace)
                drain()
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return  # Ctrl-C ends a follow cleanly (exit 0)


def _service_logs(mission_id: str, *, follow: bool, interval: float, json_out: bool,
                  finished: Callable[[], bool]) -> None:
    """`coo logs --service-logs`: the mission's lines of the collector's audit log (followed, with --follow)."""
    path = audit_log.audit_log_path()
    q = audit_log.Query(mission_id=mission_id)

    tail = audit_log.Tail(q, path)

    def fetch() -> list[dict]:
        return tail.poll()

    def key(r: dict):
        return (r.get("time"), r.get("service"), r.get("span_id"), r.get("body"),
                json.dumps(r.get("attributes"), sort_keys=True, default=str))

    show_one = _emit_line if json_out else (lambda r: console.print(audit_log.record_markup(r), soft_wrap=True))
    if not follow:
        records, files = audit_log.search(q)
        if json_out:
            emit_json({"mission_id": mission_id, "records": records, "count": len(records),
                       "files": [str(f) for f in files]})
            return
        if not files:
            raise CliError(f"no audit log at {path} (nor rotated copies)",
                           "the collector writes it while the stack runs; COO_STATE_DIR or COO_AUDIT_LOG "
                           "say where")
        for r in records:
            show_one(r)
        if not records:
            console.print(f"no service log lines of mission {mission_id} in {len(files)} audit file(s) "
                          f"under {path.parent}")
        return
    _follow(fetch, key, show_one, finished, interval, grace=3.0)


def logs(mission_id: str = typer.Argument(..., callback=_mission_id_arg, help="The mission id."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new entries until the mission "
                                     "ends (or Ctrl-C)."),
         service_logs: bool = typer.Option(False, "--service-logs", help="The services' (redacted) log lines of the "
                                           "mission from the collector's audit log, instead of the timeline."),
         interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between polls with --follow."),
         json_out: bool = typer.Option(False, "--json",
                                       help="JSON on stdout (with --follow: one object a line).")) -> None:
    """A mission's timeline in order (or, with --service-logs, its service log lines)."""
    with Api() as api:
        m = api.get(f"/v1/missions/{mission_id}")  # a clear 404 for an unknown id, whatever the source

        def finished() -> bool:
            return api.get(f"/v1/missions/{mission_id}")["status"] in FINAL

        if service_logs:
            _service_logs(mission_id, follow=follow, interval=interval, json_out=json_out, finished=finished)
            return

        def fetch_events() -> list[dict]:
            return api.get(f"/v1/missions/{mission_id}/timeline")["events"]

        if not follow:
            events = fetch_events()
            if json_out:
                emit_json({"mission_id": mission_id, "status": m["status"], "events": events, "count": len(events)})
                return
            for e in events:
                console.print(_event_line(e), soft_wrap=True)
            if not events:
                console.print(f"mission {mission_id} has no timeline events")
            return
        show = _emit_line if json_out else (lambda e: console.print(_event_line(e), soft_wrap=True))
        _follow(fetch_events, lambda e: e["event_id"], show, finished, interval, grace=0.5)


# ------------------------------------------------------------------------------------------- trace

def _tag(span: dict, key: str):
    return next((t.get("value") for t in span.get("tags", []) if t.get("key") == key), None)


def span_views(trace: dict) -> list[dict]:
    procs = trace.get("processes", {})
    out = []
    for sp in trace.get("spans", []):
        parent = next((r["spanID"] for r in sp.get("references", []) if r.get("refType") == "CHILD_OF"), None)
        err = _tag(sp, "error") in (True, "true") or _tag(sp, "otel.status_code") == "ERROR"
        attrs = {t["key"]: t.get("value") for t in sp.get("tags", [])
                 if t.get("key") not in ("span.kind", "otel.scope.name", "error", "otel.status_code",
                                         "otel.status_description")}
        out.append({
            "span_id": sp["spanID"], "parent_id": parent,
            "service": procs.get(sp.get("processID"), {}).get("serviceName", "?"),
            "operation": sp.get("operationName", ""), "kind": _tag(sp, "span.kind") or "internal",
            "start": iso(datetime.fromtimestamp(sp.get("startTime", 0) / 1e6, tz=UTC)),
            "start_us": sp.get("startTime", 0), "duration_ms": round(sp.get("duration", 0) / 1000.0, 3),
            "error": bool(err), "status_message": _tag(sp, "otel.status_description") or _tag(sp, "error.type"),
            "attributes": attrs,
        })
    out.sort(key=lambda s: s["start_us"])
    return out


def _span_label(s: dict, orphan: bool = False) -> str:
    label = (f"[bold]{escape(s['operation'])}[/bold]  [cyan]{escape(s['service'])}[/cyan]  "
             f"{s['duration_ms']:.1f} ms")
    if s["error"]:
        label += "  [red bold]✗ error[/red bold]" + (f" [red]{escape(str(s['status_message']))}[/red]"
                                                   if s.get("status_message") else "")
    if orphan:
        label += "  [dim](parent not in the trace)[/dim]"
    return label


def span_tree(trace_id: str, spans: list[dict]) -> Tree:
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict]] = {}
    for s in spans:
        children.setdefault(s["parent_id"] if s["parent_id"] in ids else None, []).append(s)
    services = sorted({s["service"] for s in spans})
    errors = sum(1 for s in spans if s["error"])
    root = Tree(f"trace [bold]{trace_id}[/bold]: {len(spans)} spans, services {', '.join(services)}"
                + (f", [red]{errors} with errors[/red]" if errors else ""))

    def add(node: Tree, s: dict, depth: int = 0) -> None:
        branch = node.add(_span_label(s, orphan=s["parent_id"] is not None and s["parent_id"] not in ids))
        if depth < 200:
            for c in children.get(s["span_id"], []):
                add(branch, c, depth + 1)

    for s in children.get(None, []):
        add(root, s)
    return root


def trace(ref: str = typer.Argument(..., metavar="ID", help="A mission id, or a trace id (32 hex digits)."),
          wait: float = typer.Option(0.0, "--wait", min=0.0, help="Seconds to wait for the trace to reach Jaeger."),
          json_out: bool = typer.Option(False, "--json", help="The spans with their parent ids, as JSON.")) -> None:
    """A mission's trace from Jaeger, as a span tree (service, operation, duration, errors marked)."""
    ref = ref.strip()
    mission_id = None
    if TRACE_ID.match(ref.lower()):
        trace_id = ref.lower()
    else:
        with Api() as api:
            m = api.get(f"/v1/missions/{_mission_id_arg(ref)}")
        mission_id, trace_id = m["mission_id"], m.get("trace_id")
        if not trace_id:
            raise CliError(f"mission {mission_id} has no trace id")
    deadline = time.monotonic() + wait
    data = jaeger_trace(trace_id)
    if data is None and wait > 0:
        with console.status(f"waiting up to {wait:.0f}s for trace {trace_id} in Jaeger", spinner="dots") \
                if not json_out else nullcontext():
            while data is None and time.monotonic() < deadline:
                time.sleep(0.5)
                data = jaeger_trace(trace_id)
    if data is None:
        raise CliError(f"trace {trace_id} is not in Jaeger at {jaeger_base()} (yet)",
                       "spans arrive a few seconds after the work; retry, or use --wait 10")
    spans = span_views(data)
    if json_out:
        emit_json({"trace_id": trace_id, "mission_id": mission_id, "jaeger_url": jaeger_url(trace_id),
                   "trace_ui_url": trace_ui_url(trace_id), "span_count": len(spans),
                   "services": sorted({s["service"] for s in spans}),
                   "errors": sum(1 for s in spans if s["error"]), "spans": spans})
        return
    console.print(span_tree(trace_id, spans))
    console.print(f"Jaeger: {jaeger_url(trace_id)}")
    if ui := trace_ui_url(trace_id):
        console.print(f"trace UI: {ui}")


app = typer.Typer()
app.command()(logs)
app.command()(trace)

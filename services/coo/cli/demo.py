"""The demo mission of `make up`: one catalog goal, followed to the end, and where to look."""

from __future__ import annotations

from coo.cli.client import Api
from coo.cli.links import dashboards_url, trace_ui_search_hint, trace_ui_url
from coo.cli.mission_cmds import jaeger_url, wait_for
from coo.cli.output import CliError, console, emit_json
from coo.stack.components import StackSettings

DEMO_GOAL = "write a FizzBuzz function with tests"


def run_demo(s: StackSettings, *, json_out: bool = False, timeout: float = 300.0) -> dict:
    with Api() as api:
        m = api.post("/v1/missions", {"goal": DEMO_GOAL})
        if not json_out:
            console.print(f"demo mission [bold]{m['mission_id']}[/bold]: {DEMO_GOAL}")
        m = wait_for(api, m["mission_id"], timeout, quiet=json_out)
    if json_out:
        emit_json({"demo": {**{k: m[k] for k in ("mission_id", "status", "cost_usd", "duration_seconds", "trace_id")},
                            "trace_ui_url": trace_ui_url(m["trace_id"], s), "dashboards_url": dashboards_url(s)}})
    else:
        console.print(f"demo mission {m['status']} in {m['duration_seconds']:.1f}s, cost ${m['cost_usd']:.4f}")
        console.print("where to look:")
        console.print(f"  coo mission {m['mission_id']}  ·  coo logs {m['mission_id']}  ·  coo trace {m['mission_id']}")
        console.print(f"  API         {s.url(s.orchestrator_port, '/v1/missions/' + m['mission_id'])}  (and /timeline)")
        if ui := trace_ui_url(m["trace_id"], s):
            console.print(f"  trace UI    {ui}  (search: {trace_ui_search_hint(m['mission_id'])})")
        console.print(f"  Jaeger API  {jaeger_url(m['trace_id'])}")
        console.print(f"  dashboards  {dashboards_url(s)}")
        console.print(f"  Prometheus  {s.url(s.prometheus_port, '/graph?g0.expr=coo_missions_total')}")
        console.print("  alerts      coo alerts")
    if m["status"] != "completed":
        raise CliError(f"the demo mission ended {m['status']}: {m.get('error') or m.get('status_reason')}",
                       f"see `coo mission {m['mission_id']}` and {s.state / 'logs'}")
    return m

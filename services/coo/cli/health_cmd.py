"""`coo health`: every dependency, the configuration and the data directories, checked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from coo.cli.output import console, emit_json
from coo.cli.util import settings


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

    nodes = s.nats_nodes()
    for node in nodes:   # one server, or each node of a cluster (current with its meta leader)
        healthz = "/healthz?js-enabled-only=true" if len(nodes) == 1 else "/healthz"
        add(f"{node.component} + jetstream", _http_check(node.monitor_url + healthz))
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


app = typer.Typer()
app.command()(health)

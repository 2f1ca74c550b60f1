"""`coo alerts`: what is firing (Alertmanager's API v2) and what fired recently (Prometheus's ALERTS),
with each alert's runbook. Debian's Alertmanager has no web UI; this is its view for people."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from coo.cli.output import CliError, console, emit_json
from coo.cli.sources import Prometheus
from coo.cli.util import ago, settings, since_option, validate_since
from coo.stack.components import REPO_ROOT

#: Labels every alert has that the tables show in their own columns.
_SHOWN = {"alertname", "severity", "system"}


def alertmanager_base() -> str:
    s = settings()
    return s.url(s.alertmanager_port)


def runbook_link(annotations: dict) -> str | None:
    """The runbook annotation as something to open: a URL stays; a repository path
    (``docs/operations.md#anchor``) becomes the file's absolute path with its anchor."""
    ref = annotations.get("runbook_url") or annotations.get("runbook")
    if not ref:
        return None
    if "://" in ref:
        return ref
    path, _, anchor = ref.partition("#")
    full = REPO_ROOT / path
    return f"{full}#{anchor}" if anchor and full.exists() else (str(full) if full.exists() else ref)


def firing(base: str, timeout: float = 5.0) -> list[dict]:
    """Alertmanager's current alerts (active, silenced or inhibited), newest first."""
    try:
        resp = httpx.get(f"{base}/api/v2/alerts", timeout=timeout,
                         params={"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"})
        resp.raise_for_status()
        raw = resp.json()
    except httpx.HTTPError as exc:
        raise CliError(f"Alertmanager at {base} does not answer ({type(exc).__name__})",
                       "is the stack up? (`coo status`); COO_ALERTMANAGER_PORT sets its port") from None
    except ValueError:
        raise CliError(f"Alertmanager at {base} did not answer JSON") from None
    out = []
    for a in raw:
        labels = a.get("labels") or {}
        ann = a.get("annotations") or {}
        out.append({
            "alertname": labels.get("alertname", "?"), "severity": labels.get("severity"),
            "state": (a.get("status") or {}).get("state"),
            "labels": {k: v for k, v in labels.items() if k not in _SHOWN},
            "summary": ann.get("summary"), "description": ann.get("description"),
            "runbook": ann.get("runbook_url") or ann.get("runbook"), "runbook_link": runbook_link(ann),
            "starts_at": a.get("startsAt"), "receivers": [r.get("name") for r in a.get("receivers") or []],
            "fingerprint": a.get("fingerprint"),
        })
    return sorted(out, key=lambda a: a["starts_at"] or "", reverse=True)


def recent(prom: Prometheus, window_s: int, now_firing: list[dict]) -> list[dict]:
    """Alerts Prometheus saw firing in the window that Alertmanager no longer has (resolved), with the
    last time each was seen firing (its last ALERTS sample) and its rule's runbook."""
    w = f"{max(window_s, 60)}s"
    try:
        body = httpx.get(prom.base_url + "/api/v1/query", params={"query": f'ALERTS{{alertstate="firing"}}[{w}]'},
                         timeout=prom.timeout).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CliError(f"Prometheus at {prom.base_url} failed: {type(exc).__name__}") from None
    if body.get("status") != "success":
        raise CliError(f"Prometheus refused the ALERTS query: {body.get('error', body)}")
    runbooks = _rule_runbooks(prom)
    current = {(a["alertname"], tuple(sorted(a["labels"].items()))) for a in now_firing}
    out = []
    for series in body["data"]["result"]:
        labels, samples = series.get("metric", {}), series.get("values") or []
        name = labels.get("alertname", "?")
        rest = {k: v for k, v in labels.items() if k not in _SHOWN | {"alertstate", "__name__"}}
        if not samples or (name, tuple(sorted(rest.items()))) in current:
            continue
        ann = runbooks.get(name, {})
        last = datetime.fromtimestamp(float(samples[-1][0]), UTC)
        out.append({"alertname": name, "severity": labels.get("severity"), "labels": rest,
                    "last_firing_at": last.isoformat().replace("+00:00", "Z"),
                    "runbook": ann.get("runbook_url") or ann.get("runbook"), "runbook_link": runbook_link(ann)})
    return sorted(out, key=lambda a: a["last_firing_at"], reverse=True)


def _rule_runbooks(prom: Prometheus) -> dict[str, dict]:
    try:
        body = httpx.get(prom.base_url + "/api/v1/rules", params={"type": "alert"}, timeout=prom.timeout).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {r["name"]: r.get("annotations") or {} for g in body.get("data", {}).get("groups", [])
            for r in g.get("rules", [])}


def _labels_text(labels: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def alerts(since: str = typer.Option("1h", "--since", callback=validate_since,
                                     help="How far back 'recent' goes: 30m, 1h, 2d or an ISO-8601 time."),
           json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Firing alerts (Alertmanager's API v2) and alerts that fired recently (Prometheus), with runbooks."""
    after = since_option(since)
    if after is None:  # cannot happen: --since has a default
        raise typer.BadParameter("a window is needed", param_hint="--since")
    window_s = int((datetime.now(UTC) - after).total_seconds())
    if window_s <= 0:
        raise typer.BadParameter("the window must start in the past", param_hint="--since")
    base = alertmanager_base()
    now = firing(base)
    prom = Prometheus(timeout=5.0)
    note = None
    past: list[dict] | None = None
    if prom.up():
        try:
            past = recent(prom, window_s, now)
        except CliError as exc:
            note = str(exc)
    else:
        note = f"Prometheus at {prom.base_url} is not ready: no recent alerts"
    if json_out:
        emit_json({"alertmanager": base, "firing": now, "recent": past, "since": after.isoformat(),
                   "prometheus": prom.base_url, "note": note})
        return
    if not now:
        console.print(f"no alert is firing (Alertmanager {base})")
    else:
        table = Table(title=f"firing ({len(now)}) — Alertmanager {base}", title_justify="left")
        for col in ("alert", "severity", "state", "since", "labels", "summary", "runbook"):
            table.add_column(col, overflow="fold")
        for a in now:
            colour = "red" if a["severity"] == "critical" else "yellow"
            table.add_row(f"[{colour}]{escape(a['alertname'])}[/{colour}]", a["severity"] or "", a["state"] or "",
                          ago(a["starts_at"]), escape(_labels_text(a["labels"])), escape(a["summary"] or ""),
                          escape(a["runbook_link"] or ""))
        console.print(table)
    if past:
        table = Table(title=f"fired since {since}, resolved now ({len(past)}) — Prometheus", title_justify="left")
        for col in ("alert", "severity", "last firing", "labels", "runbook"):
            table.add_column(col, overflow="fold")
        for a in past:
            table.add_row(escape(a["alertname"]), a["severity"] or "", ago(a["last_firing_at"]),
                          escape(_labels_text(a["labels"])), escape(a["runbook_link"] or ""))
        console.print(table)
    elif past is not None:
        console.print(f"nothing else fired since {since}")
    if note:
        console.print(f"[yellow]{escape(note)}[/yellow]")


app = typer.Typer()
app.command()(alerts)

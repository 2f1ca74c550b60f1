"""`coo audit search`: the collector's audit log, searched."""

from __future__ import annotations

import re

import typer

from coo.cli import audit as audit_log
from coo.cli.output import CliError, console, emit_json
from coo.cli.util import since_option, validate_since

app = typer.Typer(help="The audit log: the collector's redacted service logs (rotated JSON-lines files).",
                  no_args_is_help=True)


def _regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value, re.IGNORECASE)
        return value
    except re.error as exc:
        raise typer.BadParameter(f"not a regular expression: {exc}") from None


@app.command("search")
def audit_search(mission: str | None = typer.Option(None, "--mission", help="Only this mission's lines."),
                 event: str | None = typer.Option(None, "--event", help="The log message contains this text."),
                 since: str | None = typer.Option(None, "--since", callback=validate_since,
                                                  help="Not older: ISO-8601 or 30m, 1h, 2d."),
                 grep: str | None = typer.Option(None, "--grep", callback=_regex, help="A regular expression over "
                                                 "the whole record (case-insensitive)."),
                 limit: int = typer.Option(200, "--limit", min=1, max=100_000, help="The newest N matches."),
                 json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Search the audit log files (the current one and its rotated copies, gzipped or not)."""
    q = audit_log.Query(mission_id=mission, event=event, since=since_option(since),
                        grep=re.compile(grep, re.IGNORECASE) if grep else None, limit=limit)
    path = audit_log.audit_log_path()
    records, files = audit_log.search(q)
    if json_out:
        emit_json({"records": records, "count": len(records), "files": [str(f) for f in files]})
        return
    if not files:
        raise CliError(f"no audit log at {path} (nor rotated copies)",
                       "the collector writes it while the stack runs; COO_STATE_DIR or COO_AUDIT_LOG say where")
    for r in records:
        console.print(audit_log.record_markup(r), soft_wrap=True)
    console.print(f"[dim]{len(records)} line(s) from {len(files)} file(s) under {path.parent}[/dim]")

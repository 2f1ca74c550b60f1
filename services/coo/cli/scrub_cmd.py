"""`coo scrub`: secrets redacted from stdin to stdout."""

from __future__ import annotations

import json
import sys

import typer

from coo.cli.output import err_console

app = typer.Typer()


@app.command()
def scrub(pii: bool = typer.Option(False, "--pii", help="Also redact e-mail, IPv4, phone and SSN-style numbers."),
          json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stderr when done.")) -> None:
    """Redact secrets from stdin to stdout (a pipe: `cat app.log | coo scrub`)."""
    from coo.common.scrub import scrub_stream

    lines = scrub_stream(sys.stdin, sys.stdout, pii=pii)
    if json_out:
        err_console.print_json(json.dumps({"lines": lines}))

"""``coo``: the operator's command line (typer + rich).

Every command has ``--json`` for scripts and a readable default for people; errors are one
clear line on stderr and a non-zero exit (a traceback only with ``--debug``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="coo",
    help="Run missions for teams of LLM agents and see everything they do.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

_state: dict[str, Any] = {"debug": False}


class CliError(Exception):
    """An error the user can act on: printed as one line, exit code ``code``."""

    def __init__(self, message: str, hint: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", envvar="COO_DEBUG",
                                     help="Show tracebacks and debug logs.")) -> None:
    _state["debug"] = debug
    if debug:
        os.environ["COO_DEBUG"] = "1"


@app.command()
def scrub(pii: bool = typer.Option(False, "--pii", help="Also redact e-mail, IPv4, phone and SSN-style numbers."),
          json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stderr when done.")) -> None:
    """Redact secrets from stdin to stdout (a pipe: `cat app.log | coo scrub`)."""
    from coo.common.scrub import scrub_stream

    lines = scrub_stream(sys.stdin, sys.stdout, pii=pii)
    if json_out:
        err_console.print_json(json.dumps({"lines": lines}))


def _register_commands() -> None:
    # Imported here so `coo --help` stays fast and each command group lives in its own module.
    from coo.cli import mission_cmds, stack_cmds

    stack_cmds.register(app)
    mission_cmds.register(app)


def run() -> None:
    _register_commands()
    try:
        app(standalone_mode=False)
    except CliError as exc:
        err_console.print(f"[red]error:[/red] {exc}" + (f"\n[dim]{exc.hint}[/dim]" if exc.hint else ""))
        raise SystemExit(exc.code) from None
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        raise SystemExit(130) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        # usage errors (typer's click) print themselves and carry their own exit code
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}\n[dim]run with --debug for the traceback[/dim]")
        raise SystemExit(1) from None

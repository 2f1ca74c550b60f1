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
# Piped output (scripts, tests) is not cut at 80 columns: tables keep their ids and numbers whole.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 200)

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
    from coo.cli import alerts_cmds, artifacts_cmd, logs_cmds, mission_cmds, ops_cmds, stack_cmds

    stack_cmds.register(app)
    mission_cmds.register(app)
    artifacts_cmd.register(app)
    logs_cmds.register(app)
    ops_cmds.register(app)
    alerts_cmds.register(app)


def print_error(message: str, hint: str = "") -> None:
    """One line on stderr: what was wrong, and what to do."""
    from rich.markup import escape

    line = message.strip().replace("\n", " ")
    if hint:
        line += f" — {hint.strip()}"
    err_console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True, highlight=False)


def run() -> None:
    _register_commands()
    try:
        rv = app(standalone_mode=False)
        # without standalone mode, click returns typer.Exit's code instead of exiting with it
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            raise SystemExit(rv)
    except CliError as exc:
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        print_error(str(exc), exc.hint)
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
        print_error(f"{type(exc).__name__}: {exc}", "run with --debug for the traceback")
        raise SystemExit(1) from None

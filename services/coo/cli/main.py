"""``coo``: the operator's command line (typer + rich).

Every command has ``--json`` for scripts and a readable default for people; errors are one
clear line on stderr and a non-zero exit (a traceback only with ``--debug``).

This module only assembles: each command group lives in its own module (a ``typer.Typer`` named
``app``), added here with ``add_typer`` — without a name, its commands are ``coo``'s own; with one,
a sub-command group (``coo audit …``, ``coo dlq …``). The order of the calls is the order of ``coo --help``.
"""

from __future__ import annotations

import os
from typing import Any

import typer

from coo.cli import (
    alerts_cmds,
    artifacts_cmd,
    audit_cmds,
    budget_cmd,
    dlq_cmds,
    health_cmd,
    logs_cmds,
    metrics_cmd,
    mission_cmds,
    scrub_cmd,
    stack_cmds,
    watch_cmd,
)
from coo.cli.output import CliError, err_console, print_error

app = typer.Typer(
    name="coo",
    help="Run missions for teams of LLM agents and see everything they do.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for group in (scrub_cmd, stack_cmds, mission_cmds, artifacts_cmd, logs_cmds, budget_cmd, metrics_cmd, health_cmd,
              watch_cmd, alerts_cmds):
    app.add_typer(group.app)
app.add_typer(audit_cmds.app, name="audit")
app.add_typer(dlq_cmds.app, name="dlq")

_state: dict[str, Any] = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", envvar="COO_DEBUG",
                                     help="Show tracebacks and debug logs.")) -> None:
    _state["debug"] = debug
    if debug:
        os.environ["COO_DEBUG"] = "1"


def run() -> None:
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
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            raise SystemExit(exit_code) from None
        if _state["debug"]:
            raise
        print_error(f"{type(exc).__name__}: {exc}", "run with --debug for the traceback")
        raise SystemExit(1) from None

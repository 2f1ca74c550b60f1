"""What every command prints with: the consoles, JSON on stdout, and errors the user can act on."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

# Piped output (scripts, tests) is not cut at 80 columns: tables keep their ids and numbers whole.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 200)


class CliError(Exception):
    """An error the user can act on: printed as one line, exit code ``code``."""

    def __init__(self, message: str, hint: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_error(message: str, hint: str = "") -> None:
    """One line on stderr: what was wrong, and what to do."""
    line = message.strip().replace("\n", " ")
    if hint:
        line += f" — {hint.strip()}"
    err_console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True, highlight=False)

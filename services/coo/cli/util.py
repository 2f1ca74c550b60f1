"""Small helpers shared by the commands: time windows, formatting, the stack's addresses."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import overload

import typer

from coo.stack.components import StackSettings

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """``1h``, ``30m``, ``2d``, ``90s``, ``1w`` ago, or an ISO-8601 time (UTC when it has no offset)."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(value)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()])
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither a relative time (30m, 1h, 2d) nor an ISO-8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@overload
def since_option(value: str) -> datetime: ...


@overload
def since_option(value: None) -> None: ...


@overload
def since_option(value: str | None) -> datetime | None: ...


def since_option(value: str | None) -> datetime | None:
    """A typer callback: a bad --since is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def validate_since(value: str | None) -> str | None:
    """A typer callback: keeps the text, but a bad --since is a usage error (exit 2) naming the option."""
    since_option(value)
    return value


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def short_time(value: str | None) -> str:
    """``2026-11-21T12:25:00.544758Z`` -> ``12:25:00.544`` (today) or ``11-20 12:25:00`` (another day)."""
    t = parse_iso(value)
    if t is None:
        return value or "—"
    local = t.astimezone()
    if local.date() == datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    return local.strftime("%m-%d %H:%M:%S")


def ago(value: str | None) -> str:
    t = parse_iso(value)
    if t is None:
        return "—"
    secs = (datetime.now(UTC) - t).total_seconds()
    return f"{duration(secs)} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def truncate(text: str | None, n: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def settings() -> StackSettings:
    return StackSettings()


def jaeger_base(s: StackSettings | None = None) -> str:
    s = s or settings()
    return s.url(s.jaeger_query_port)


def prometheus_base(s: StackSettings | None = None) -> str:
    s = s or settings()
    return s.url(s.prometheus_port)


STATUS_COLOURS = {"completed": "green", "failed": "red", "budget_exceeded": "red", "cancelled": "yellow",
                  "paused": "magenta", "awaiting_approval": "magenta"}


def status_markup(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "cyan")
    return f"[{colour}]{status}[/{colour}]"

"""Reading the collector's audit log: the redacted service logs as OTLP JSON lines, rotated.

The collector's ``file/audit`` exporter writes one ``{"resourceLogs": [...]}`` object a line to
``<state>/logs/coo-audit.jsonl`` (``COO_AUDIT_LOG``); its rotation renames full files to
``coo-audit-<timestamp>.jsonl`` (optionally gzipped). Every log record of every line is flattened
into one dict: ``time``, ``service``, ``level``, ``logger``, ``body``, ``mission_id``, ``trace_id``,
``span_id`` and the remaining ``attributes``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.markup import escape

from coo.stack.components import StackSettings

_LEVELS = {1: "trace", 5: "debug", 9: "info", 13: "warning", 17: "error", 21: "critical"}


def audit_log_path(s: StackSettings | None = None) -> Path:
    env = os.environ.get("COO_AUDIT_LOG")
    if env:
        return Path(env)
    return (s or StackSettings()).state / "logs" / "coo-audit.jsonl"


def audit_files(path: Path | None = None) -> list[Path]:
    """The current file and its rotated backups (``coo-audit*.jsonl*``), oldest first."""
    path = path or audit_log_path()
    stem, suffix = path.stem, path.suffix  # coo-audit, .jsonl
    if not path.parent.is_dir():
        return []
    files = [p for p in path.parent.glob(f"{stem}*{suffix}*") if p.is_file()]

    def key(p: Path) -> tuple[int, float, str]:
        # the live file is always the newest; backups by modification time (their names carry it too)
        try:
            mtime = p.stat().st_mtime
        except OSError:  # rotated away meanwhile
            mtime = 0.0
        return (1 if p == path else 0, mtime, p.name)

    return sorted(files, key=key)


def _value(v: dict):
    if not isinstance(v, dict):
        return v
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        try:
            return int(v["intValue"])
        except (TypeError, ValueError):
            return v["intValue"]
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {x["key"]: _value(x.get("value", {})) for x in v["kvlistValue"].get("values", [])}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def _attrs(items: list | None) -> dict:
    return {a.get("key"): _value(a.get("value", {})) for a in items or []}


def _time(rec: dict) -> datetime | None:
    for k in ("timeUnixNano", "observedTimeUnixNano"):
        ns = rec.get(k)
        if ns and str(ns) != "0":
            try:
                return datetime.fromtimestamp(int(ns) / 1e9, tz=UTC)
            except (TypeError, ValueError, OverflowError):
                continue
    return None


def records_of_line(line: str) -> Iterator[dict]:
    try:
        doc = json.loads(line)
    except ValueError:
        return
    for rl in doc.get("resourceLogs", []) if isinstance(doc, dict) else []:
        resource = _attrs(rl.get("resource", {}).get("attributes"))
        for sl in rl.get("scopeLogs", []):
            scope = (sl.get("scope") or {}).get("name", "")
            for rec in sl.get("logRecords", []):
                attrs = _attrs(rec.get("attributes"))
                t = _time(rec)
                body = _value(rec.get("body", {}))
                out = {
                    "time": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t else None,
                    "service": attrs.pop("service", None) or resource.get("service.name"),
                    "level": (attrs.pop("level", None) or rec.get("severityText")
                              or _LEVELS.get(rec.get("severityNumber", 0), "")).lower(),
                    "logger": attrs.pop("logger", None) or scope,
                    "body": body if isinstance(body, str) else json.dumps(body, default=str),
                    "mission_id": attrs.pop("mission_id", None) or resource.get("mission_id"),
                    "trace_id": attrs.pop("trace_id", None) or rec.get("traceId") or None,
                    "span_id": attrs.pop("span_id", None) or rec.get("spanId") or None,
                    "attributes": attrs,
                }
                yield out


def _open(path: Path):
    if path.suffix == ".gz" or path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


@dataclass
class Query:
    mission_id: str | None = None
    event: str | None = None          # substring of the log message (case-insensitive)
    since: datetime | None = None
    grep: re.Pattern | None = None    # over the record as JSON
    limit: int | None = None          # the newest N matches

    def matches(self, rec: dict) -> bool:
        if self.mission_id and rec.get("mission_id") != self.mission_id:
            return False
        if self.event and self.event.lower() not in (rec.get("body") or "").lower():
            return False
        if self.since:
            t = rec.get("time")
            if not t or datetime.fromisoformat(t) < self.since:
                return False
        return not self.grep or bool(self.grep.search(json.dumps(rec, default=str, ensure_ascii=False)))


def search(q: Query, files: list[Path] | None = None) -> tuple[list[dict], list[Path]]:
    """Matching records in time order (files oldest first); with ``limit``, the newest ``limit``."""
    files = audit_files() if files is None else files
    out: deque[dict] | list[dict] = deque(maxlen=q.limit) if q.limit else []
    for path in files:
        if q.since:
            try:
                if datetime.fromtimestamp(path.stat().st_mtime, tz=UTC) < q.since:
                    continue  # nothing in a file last written before the window
            except OSError:
                continue
        try:
            with _open(path) as fh:
                for line in fh:
                    if q.mission_id and q.mission_id not in line:
                        continue  # cheap pre-filter before parsing
                    for rec in records_of_line(line):
                        if q.matches(rec):
                            out.append(rec)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
    records = list(out)
    records.sort(key=lambda r: r.get("time") or "")
    return records, files


def record_markup(rec: dict) -> str:
    """:func:`format_record` as rich markup, coloured by level."""
    colour = {"warning": "yellow", "error": "red", "critical": "red"}.get(rec.get("level") or "", "")
    line = escape(format_record(rec))
    return f"[{colour}]{line}[/{colour}]" if colour else line


def format_record(rec: dict) -> str:
    """One readable line (no markup)."""
    from coo.cli.util import short_time

    attrs = " ".join(f"{k}={v}" for k, v in rec.get("attributes", {}).items()
                     if k not in ("mission_id",) and v not in (None, ""))
    return (f"{short_time(rec.get('time'))}  {(rec.get('level') or '').upper():<7} "
            f"{rec.get('service') or '?':<12} {rec.get('body') or ''}" + (f"  {attrs}" if attrs else ""))


class Tail:
    """Follows the audit log: each :meth:`poll` returns the matching records of the lines written since
    the last one (the first poll reads everything). A rotation shows as the live file shrinking (read
    again from its start) and a new backup file (read once; records seen before are for the caller to
    drop, by key)."""

    def __init__(self, q: Query, path: Path | None = None) -> None:
        self.q = q
        self.path = path or audit_log_path()
        self._offsets: dict[Path, int] = {}

    def poll(self) -> list[dict]:
        out: list[dict] = []
        for f in audit_files(self.path):
            try:
                size = f.stat().st_size
            except OSError:
                continue
            start = self._offsets.get(f, 0)
            if f.name.endswith(".gz"):
                if f in self._offsets:
                    continue
                records, _ = search(Query(self.q.mission_id, self.q.event, self.q.since, self.q.grep), [f])
                out += records
                self._offsets[f] = size
                continue
            if size < start:
                start = 0  # truncated or replaced by a new live file
            if size == start:
                continue
            try:
                with open(f, "rb") as fh:
                    fh.seek(start)
                    chunk = fh.read(size - start)
            except OSError:
                continue
            complete = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
            self._offsets[f] = start + complete
            for line in chunk[:complete].decode("utf-8", errors="replace").splitlines():
                if self.q.mission_id and self.q.mission_id not in line:
                    continue
                out += [r for r in records_of_line(line) if self.q.matches(r)]
        out.sort(key=lambda r: r.get("time") or "")
        return out

"""Figures of the reliability suite: every test records what it measured, the conftest prints them
as one table at the end of the run and writes them to docs/reliability.md.

A test gets a :class:`Recorder` from the ``figures`` fixture and calls ``figures.add(...)`` as soon
as a number is known, *before* asserting on it, so a failing run still shows its figures::

    figures.add("faults", "missions lost", lost, target="0", ok=lost == 0)

Rows of tests that did not run this time are kept from the previous docs/reliability.md (with
their own date and machine), so running one file refreshes its rows only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "reliability.md"
_JSON_MARK = "<!-- figures-json"


@dataclass
class Figure:
    area: str
    name: str
    value: str
    target: str = ""
    ok: bool | None = None          # None: informative, no pass/fail
    note: str = ""
    nodeid: str = ""
    command: str = ""
    date: str = ""
    machine: str = ""

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "NO", None: "-"}[self.ok]


FIGURES: list[Figure] = []
RAN: set[str] = set()            # node ids of the tests that ran this session


def machine() -> str:
    """``nproc``, memory and Python version of this machine, e.g. ``2 cpu, 23.5 GiB, Python 3.11.7``."""
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(line.split()[1] for line in fh if line.startswith("MemTotal:")))
        mem = f", {kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} cpu{mem}, Python {platform.python_version()}"


def command_for(nodeid: str) -> str:
    return f"COO_RELIABILITY=1 .venv/bin/pytest '{nodeid}'"


def fmt(value: float | int | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 100):
        return f"{int(value)}{unit}"
    return f"{value:.{digits}f}{unit}"


class Recorder:
    """Figures of one test (the ``figures`` fixture)."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        RAN.add(nodeid)

    def add(self, area: str, name: str, value, *, target: str = "", ok: bool | None = None,
            note: str = "") -> Figure:
        fig = Figure(area=area, name=name, value=str(value), target=target, ok=ok, note=note,
                     nodeid=self.nodeid, command=command_for(self.nodeid))
        # one row per (test, figure): a figure recorded again replaces the first
        for i, old in enumerate(FIGURES):
            if old.nodeid == fig.nodeid and old.area == area and old.name == name:
                FIGURES[i] = fig
                break
        else:
            FIGURES.append(fig)
        return fig


# ------------------------------------------------------------------------- output
def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def terminal_lines(figs: list[Figure]) -> list[str]:
    rows = [("area", "figure", "value", "target", "ok")]
    rows += [(f.area, f.name, f.value, f.target, f.verdict) for f in figs]
    widths = [min(60, max(len(r[i]) for r in rows)) for i in range(5)]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _previous() -> list[Figure]:
    if not DOC.exists():
        return []
    text = DOC.read_text()
    m = re.search(re.escape(_JSON_MARK) + r"\n(.*?)\n-->", text, re.S)
    if not m:
        return []
    try:
        return [Figure(**row) for row in json.loads(m.group(1))]
    except (ValueError, TypeError):
        return []


AREA_TITLES = {
    "faults": "Faults: SIGKILL of every service and of NATS under concurrent missions",
    "cluster": "A NATS cluster of three (R3) losing a node under concurrent missions",
    "load": "Load: rising submission rates until backpressure",
    "bad input": "Bad input: bus, DLQ advisories, REST API, CLI",
    "sandbox": "Sandbox attacks (through the real sandbox service over NATS)",
    "secrets": "Secret leaks — canaries through every path, searched in every sink",
    "scrubbing": "Scrubbing — a generated corpus of secrets and look-alikes through every scrubber",
    "access": "Access control on NATS",
    "suite": "The suite itself",
}


def write_doc(figs: list[Figure]) -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    here = machine()
    for f in figs:
        f.date, f.machine = f.date or stamp, f.machine or here
    kept = [f for f in _previous() if f.nodeid not in RAN]
    rows = kept + figs
    order = list(AREA_TITLES)
    rows.sort(key=lambda f: (order.index(f.area) if f.area in order else len(order), f.area))
    failed = sum(1 for f in rows if f.ok is False)
    lines = [
        "# Reliability figures",
        "",
        "Written by `make test-reliability` (`COO_RELIABILITY=1 .venv/bin/pytest tests/reliability`), which CI runs.",
        "Every row was measured on the real thing: a real nats-server, the five services as processes, code in",
        "the real bubblewrap sandbox, and for secret leaks the whole embedded stack (collector, Jaeger,",
        "Prometheus). Each row says how to reproduce it, when and on what machine it was measured.",
        "`ok`: yes = meets its target, NO = does not, - = informative.",
        "",
        f"Last run: {stamp} on {here}; {len(rows)} figures, {failed} off target.",
        "",
    ]
    area = None
    for f in rows:
        if f.area != area:
            area = f.area
            lines += ["", f"## {AREA_TITLES.get(area, area)}", "",
                      "| figure | value | target | ok | note | reproduce | date | machine |",
                      "|---|---|---|---|---|---|---|---|"]
        lines.append("| " + " | ".join(_cell(x) for x in (
            f.name, f.value, f.target, f.verdict, f.note, f"`{f.command}`", f.date, f.machine)) + " |")
    lines += ["", _JSON_MARK, json.dumps([asdict(f) for f in rows], indent=0), "-->", ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines))
    return DOC

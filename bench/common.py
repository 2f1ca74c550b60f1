"""What the benchmarks share: results, figures, percentiles, a traced provider, a NATS server."""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Config:
    smoke: bool = False
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    def n(self, full: int, smoke: int) -> int:
        """A count: ``full`` for a real run, ``smoke`` for ``--smoke``."""
        return smoke if self.smoke else full


@dataclass
class Figure:
    """One headline figure: ``value`` against ``baseline`` (both in ``unit``), and their ratio.

    ``ratio`` is what the goal is about; ``higher_is_better`` says which way is good, ``goal`` is
    a threshold on the ratio (or on ``value`` when ``goal_on`` is "value")."""

    name: str
    value: float
    baseline: float | None
    unit: str
    ratio: float | None
    ratio_label: str = ""
    baseline_label: str = ""
    goal: float | None = None
    goal_on: str = "ratio"        # "ratio" | "value"
    higher_is_better: bool = True
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        x = self.ratio if self.goal_on == "ratio" else self.value
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return False
        return x >= self.goal if self.higher_is_better else x <= self.goal

    def goal_text(self) -> str:
        if self.goal is None:
            return ""
        op = ">=" if self.higher_is_better else "<="
        what = "ratio" if self.goal_on == "ratio" else "value"
        return f"{what} {op} {fmt(self.goal)}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.met
        d["goal_text"] = self.goal_text()
        return d


@dataclass
class Result:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)   # absolute numbers, per phase
    series: dict[str, Any] = field(default_factory=dict)    # raw samples for the plots
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        fig = Figure(*args, **kwargs)
        self.figures.append(fig)
        return fig

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "seconds": round(self.seconds, 2),
            "skipped": self.skipped, "notes": self.notes, "details": self.details, "series": self.series,
            "figures": [f.as_dict() for f in self.figures],
        }


def fmt(x: float | None, digits: int = 3) -> str:
    """A short human number: 3 significant digits, thousands separated."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.{digits}g}"


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of ``values``; nan when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return xs[int(k)]
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out: list[float] = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start


@contextlib.contextmanager
def nats_server(work_dir: Path) -> Iterator[Any]:
    """A fresh ``nats-server -js`` on a free loopback port, removed afterwards."""
    from tests.natsserver import NatsServer

    data = Path(tempfile.mkdtemp(prefix="nats-", dir=work_dir))
    server = NatsServer(data_dir=data).start()
    try:
        yield server
    finally:
        server.cleanup()


class CountingExporter:
    """An exporter that keeps nothing: it counts, so a run can prove every hop (or log line) was
    exported. Spans by default; ``success`` is what ``export`` answers (the log signal's own
    ``LogRecordExportResult.SUCCESS`` for logs)."""

    def __init__(self, success=None) -> None:
        if success is None:
            from opentelemetry.sdk.trace.export import SpanExportResult

            success = SpanExportResult.SUCCESS
        self.success = success
        self.exported = 0

    def export(self, items):
        self.exported += len(items)
        return self.success

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def install_tracing(service: str = "bench"):
    """The production tracing pipeline (see ``coo.common.telemetry.setup_telemetry``): an SDK
    TracerProvider with the mission-id baggage processor and a BatchSpanProcessor, exporting to
    a counting exporter instead of OTLP. Every span is sampled (the default sampler)."""
    from opentelemetry import trace
    from opentelemetry.processor.baggage import BaggageSpanProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = CountingExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BaggageSpanProcessor(lambda key: key == "mission.id"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider, exporter


def machine() -> dict[str, Any]:
    """What the run ran on."""
    import os
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu or platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }

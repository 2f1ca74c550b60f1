"""Logging and telemetry overhead.

1. Events per second of COO's structlog pipeline (``coo.common.telemetry.configure_logging``:
   context, trace ids, JSON, the secret scrubber, and each line exported as an OTel log record,
   batched, to a no-op exporter) against stdlib ``logging`` with a JSON formatter writing the same
   events to the same kind of sink (``/dev/null``). Also the pipeline without the OTel export, to
   show what each part costs. Chunks alternate between the variants; figures are medians.
2. Telemetry on whole missions, an A/B: the real services (mockllm answering at once, code run in
   bubblewrap) in four identical stacks side by side, each its own nats-server, taking turns:
   ``off`` (``OTEL_SDK_DISABLED=true``: JSON logs and metrics only, the baseline), ``on`` (traces
   and logs over OTLP/gRPC to a local collector, public OpenTelemetry APIs only: what the services
   run), ``no bus spans`` (``on`` with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=coo_bus``) and ``no
   log export`` (``on`` with ``OTEL_LOGS_EXPORTER=none``). Missions one at a time, then batches with
   8 in flight; the figure is each mission's own wall time (server-side created → finished).
   ``on`` / ``off`` is what telemetry adds; ``on`` / ``no bus spans`` (``no log export``) is the
   most any faster way of making bus spans (log records) could save, since it would still cost
   something. The rule (issue 15): a fast path comes back only if it saves at least 1 % of mission
   wall time and uses public APIs; when dropping the work entirely saves less, no fast path can.
   ``--smoke`` runs only ``off`` and ``on``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import time
from datetime import UTC, datetime

from bench import stack as stack_mod
from bench.common import Config, CountingExporter, Result, median, ratio

TITLE = "Logging and telemetry overhead"


# ------------------------------------------------------------------------ the events
def events(n: int, seed: int = 7) -> list[tuple[str, str, str, dict]]:
    """(logger, level, event, fields): what the services log, 3 % with a secret in a value."""
    r = random.Random(seed)

    def hexid(k: int) -> str:
        return "".join(r.choices("0123456789abcdef", k=k))

    out = []
    for _ in range(n):
        kind = r.random()
        if kind < 0.35:
            item = ("coo.agent", "info", "llm call finished",
                    {"model": "mock-large", "role": r.choice(["coo", "engineer", "qa"]), "mission_id": hexid(32),
                     "task_id": f"t{r.randint(0, 4)}", "input_tokens": r.randint(50, 9000),
                     "output_tokens": r.randint(10, 2000), "duration_ms": round(r.uniform(1, 900), 2),
                     "cost_usd": round(r.uniform(0, 0.05), 6)})
        elif kind < 0.6:
            item = ("coo.orchestrator", "info", "status changed",
                    {"mission_id": hexid(32), "from_status": "executing", "to_status": "reviewing",
                     "attempt": r.randint(1, 3), "pending_work": r.randint(0, 8)})
        elif kind < 0.8:
            item = ("coo.sandbox", "info", "sandbox run executed",
                    {"run_id": f"{hexid(32)}.t0.run.a1", "outcome": "ok", "exit_code": 0,
                     "duration_seconds": round(r.uniform(0.1, 2), 3), "backend": "bubblewrap"})
        elif kind < 0.97:
            item = ("coo.bus", "warning", "handler failed; message will be redelivered",
                    {"subject": "coo.tasks.engineer", "error": "TimeoutError: budget did not answer",
                     "attempt": r.randint(1, 5), "delay": 0.5,
                     "headers": {"Nats-Msg-Id": hexid(32), "Coo-Type": "coo.v1.AgentTask"}})
        else:
            item = ("coo.agent", "error", "LLM provider refused the request",
                    {"status": 401, "error": f"invalid key sk-proj-{hexid(40)} for model mock-large",
                     "request": {"Authorization": f"Bearer {hexid(40)}", "model": "mock-large"}})
        out.append(item)
    return out


# -------------------------------------------------------------------- the variants
class _JsonFormatter(logging.Formatter):
    """What a service without COO's pipeline would write: one JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
               "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        return json.dumps(out, default=str)


def _stdlib(sink, evs) -> float:
    handler = logging.StreamHandler(sink)
    handler.setFormatter(_JsonFormatter())
    loggers = {}
    for name in {e[0] for e in evs}:
        lg = logging.getLogger(f"bench.stdlib.{name}")
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
        loggers[name] = lg
    levels = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
    start = time.perf_counter()
    for name, level, event, fields in evs:
        loggers[name].log(levels[level], event, extra={"fields": fields})
    return time.perf_counter() - start


def _structlog(evs, provider) -> float:
    import structlog

    from coo.common.telemetry import configure_logging

    configure_logging("bench", debug=False, logger_provider=provider)
    loggers = {name: structlog.get_logger(name) for name in {e[0] for e in evs}}
    start = time.perf_counter()
    for name, level, event, fields in evs:
        getattr(loggers[name], level)(event, **fields)
    return time.perf_counter() - start


def _events_per_second(cfg: Config, result: Result) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExportResult
    from opentelemetry.sdk.trace import TracerProvider

    from coo.common.telemetry import batch_log_processor

    n = cfg.n(20_000, 1_000)
    rounds = cfg.n(5, 1)
    evs = events(n)
    exporter = CountingExporter(LogRecordExportResult.SUCCESS)
    provider = LoggerProvider()
    provider.add_log_record_processor(batch_log_processor(exporter))   # what setup_telemetry installs
    tracer = TracerProvider().get_tracer("bench")
    saved = sys.stdout
    rates: dict[str, list[float]] = {"stdlib": [], "structlog": [], "structlog+otel": []}
    with open(os.devnull, "w") as sink, contextlib.ExitStack() as restore:
        restore.callback(setattr, sys, "stdout", saved)
        sys.stdout = sink          # configure_logging writes to the sys.stdout of the moment
        with trace.use_span(tracer.start_span("bench"), end_on_exit=True):   # logs carry trace ids
            _structlog(evs[:200], provider)                                   # warm-up
            _stdlib(sink, evs[:200])
            for i in range(rounds):
                order = ["stdlib", "structlog", "structlog+otel"]
                for variant in (order if i % 2 == 0 else order[::-1]):
                    if variant == "stdlib":
                        seconds = _stdlib(sink, evs)
                    else:
                        seconds = _structlog(evs, provider if variant == "structlog+otel" else None)
                    rates[variant].append(n / seconds)
        provider.force_flush()
    std, plain, full = (median(rates[k]) for k in ("stdlib", "structlog", "structlog+otel"))
    result.add("log events/s: structlog pipeline + OTel export", full, std, "events/s", ratio(full, std),
               "x stdlib JSON", "stdlib logging + JSON formatter")
    result.add("log events/s: structlog pipeline, no OTel export", plain, std, "events/s", ratio(plain, std),
               "x stdlib JSON", "stdlib logging + JSON formatter")
    result.details["events_per_second"] = {k: [round(x) for x in v] for k, v in rates.items()}
    emitted = len(evs[:200]) + n * rounds          # the warm-up and the "+ OTel export" chunks
    result.details["otel_log_records_exported"] = exporter.exported
    result.details["otel_log_records_emitted"] = emitted
    result.notes.append(f"logging: {n:,} events per chunk, {rounds} chunks per variant; "
                        f"{exporter.exported:,} of {emitted:,} OTel log records exported (no-op exporter; "
                        f"the rest dropped by the batch processor's bounded queue, "
                        f"OTEL_BLRP_MAX_QUEUE_SIZE, under this burst)")
    provider.shutdown()


# --------------------------------------------------------------- whole missions
OFF, ON, NO_BUS, NO_LOGS = "off", "on", "no bus spans", "no log export"
FAST_PATH_THRESHOLD = 1.01          # a fast path must save at least 1 % of mission wall time
IN_FLIGHT = 8


def _env(variant: str, endpoint: str) -> dict[str, str]:
    if variant == OFF:
        return {"OTEL_SDK_DISABLED": "true"}
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    if variant == NO_BUS:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "coo_bus"
    elif variant == NO_LOGS:
        env["OTEL_LOGS_EXPORTER"] = "none"
    return env


def _turns(variants: list[str], i: int) -> list[str]:
    """Round ``i``'s order: rotated, and reversed every other round, so no variant always goes first."""
    k = i % len(variants)
    order = variants[k:] + variants[:k]
    return order if (i // len(variants)) % 2 == 0 else order[::-1]


def _paired(samples: dict[str, list[float]], a: str, b: str) -> float:
    """The median of round-by-round ratios ``a / b`` (rounds run back to back)."""
    return median([x / y for x, y in zip(samples[a], samples[b]) if y])


def _missions(cfg: Config, result: Result) -> None:
    why = stack_mod.missing()
    if why:
        result.notes.append(f"telemetry cost on missions skipped: {why}")
        return
    variants = [OFF, ON] if cfg.smoke else [OFF, ON, NO_BUS, NO_LOGS]
    one, batch, batches = cfg.n(60, 1), cfg.n(16, IN_FLIGHT), cfg.n(8, 1)
    alone: dict[str, list[float]] = {v: [] for v in variants}
    loaded: dict[str, list[float]] = {v: [] for v in variants}
    per_batch: dict[str, list[float]] = {v: [] for v in variants}   # each batch's median mission s
    walls: dict[str, list[float]] = {v: [] for v in variants}
    bad: set[str] = set()
    with stack_mod.otlp_endpoint(cfg.work_dir) as (endpoint, what), contextlib.ExitStack() as running:
        stacks = {v: running.enter_context(stack_mod.Stack(cfg.work_dir, env=_env(v, endpoint))) for v in variants}
        for s in stacks.values():
            s.run(2, 2)                                                # warm-up: first-call costs
        for i in range(one):                                           # one mission each, in turn
            for v in _turns(variants, i):
                out = stacks[v].run(1, 1, first=i)
                alone[v].append(out["missions"][0]["duration_seconds"])
                bad |= set(out["statuses"]) - {"completed"}
        for i in range(batches):                                       # then batches, in turn
            for v in _turns(variants, i):
                out = stacks[v].run(batch, IN_FLIGHT, first=i * batch)
                walls[v].append(out["wall_seconds"])
                loaded[v] += [m["duration_seconds"] for m in out["missions"]]
                per_batch[v].append(median([m["duration_seconds"] for m in out["missions"]]))
                bad |= set(out["statuses"]) - {"completed"}

    # Ratios are medians of paired ratios: round i (batch i) of one variant against round i of the
    # other, run back to back, so a slow spell of the machine hits both sides of a pair alike.
    for label, samples in (("one at a time", alone), (f"{IN_FLIGHT} at a time", per_batch)):
        m = {v: median(samples[v]) for v in variants}
        on_off = _paired(samples, ON, OFF)
        result.add(f"mission wall time added by telemetry, {label}", (on_off - 1) * 100, m[OFF], "%", on_off,
                   "x telemetry off", "median mission s, OTEL_SDK_DISABLED", goal=1.05, higher_is_better=False)
        for variant, what_for in ((NO_BUS, "bus spans"), (NO_LOGS, "OTel log export")):
            if variant not in m:
                continue
            saved = _paired(samples, ON, variant)
            result.add(f"most a fast path for {what_for} could save, {label}", (saved - 1) * 100, m[variant], "%",
                       saved, f"x {variant}", f"median mission s, {variant}", goal=FAST_PATH_THRESHOLD,
                       higher_is_better=False,
                       note="met: even dropping this work saves < 1 % of mission wall time, so no fast path "
                            "for it is warranted")
    result.details["missions"] = {
        "telemetry_on": what, "variants": variants, "one_at_a_time_seconds": alone,
        f"{IN_FLIGHT}_in_flight_seconds": loaded, "batch_wall_seconds": walls,
        "batch_median_seconds": per_batch,
        "batch": {"missions": batch, "in_flight": IN_FLIGHT}, "non_completed_statuses": sorted(bad),
        "medians": {"one_at_a_time": {v: round(median(alone[v]), 4) for v in variants},
                    f"{IN_FLIGHT}_in_flight": {v: round(median(loaded[v]), 4) for v in variants}},
    }
    result.series["mission_seconds"] = alone          # bench.plots: the off/on box plot
    result.notes.append(
        f"variants {', '.join(variants)}: identical stacks side by side taking turns ({one} missions one at a "
        f"time and {batches} batches of {batch} with {IN_FLIGHT} in flight each), so the machine's other load "
        f"hits all alike; telemetry exported over OTLP/gRPC to {what}. A fast path for a part of telemetry "
        f"comes back only if it saves >= 1 % of mission wall time (and uses public APIs); the 'most a fast "
        f"path could save' figures drop that part entirely, an upper bound on any faster way of doing it")


def run(cfg: Config) -> Result:
    result = Result("telemetry", TITLE)
    _events_per_second(cfg, result)
    _missions(cfg, result)
    return result

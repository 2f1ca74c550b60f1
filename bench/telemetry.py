"""Logging and telemetry overhead.

1. Events per second of COO's structlog pipeline (``coo.common.telemetry.configure_logging``:
   context, trace ids, JSON, the secret scrubber, and each line exported as an OTel log record,
   batched, to a no-op exporter) against stdlib ``logging`` with a JSON formatter writing the same
   events to the same kind of sink (``/dev/null``). Also the pipeline without the OTel export, to
   show what each part costs. Chunks alternate between the variants; figures are medians.
2. The cost of all telemetry on whole missions: the real services (mockllm answering at once)
   with telemetry on (traces and logs over OTLP/gRPC to a local collector) against an identical
   stack with ``OTEL_SDK_DISABLED=true``. Both stacks run side by side (each its own nats-server)
   and take turns: missions one at a time, then batches with four in flight; the figure is each
   mission's own wall time (server-side created → finished) either way, the batches' wall time a
   detail (the runner starts the next mission when a mission's final timeline event arrives).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from datetime import datetime, timezone

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
    for i in range(n):
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
        out = {"timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
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
    sink = open(os.devnull, "w")
    saved = sys.stdout
    rates: dict[str, list[float]] = {"stdlib": [], "structlog": [], "structlog+otel": []}
    try:
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
    finally:
        sys.stdout = saved
        sink.close()
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
def _missions(cfg: Config, result: Result) -> None:
    why = stack_mod.missing()
    if why:
        result.notes.append(f"telemetry cost on missions skipped: {why}")
        return
    one, batch, conc, batches = cfg.n(30, 2), cfg.n(12, 3), 4, cfg.n(6, 2)
    durations: dict[str, list[float]] = {"on": [], "off": []}
    walls: dict[str, list[float]] = {"on": [], "off": []}
    loaded: dict[str, list[float]] = {"on": [], "off": []}     # each mission's own wall time, 4 in flight
    bad: set[str] = set()
    with stack_mod.otlp_endpoint(cfg.work_dir) as (endpoint, what), \
            stack_mod.Stack(cfg.work_dir, env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) as on, \
            stack_mod.Stack(cfg.work_dir, env={"OTEL_SDK_DISABLED": "true"}) as off:
        stacks = {"on": on, "off": off}
        for s in stacks.values():
            s.run(2, 2)                                               # warm-up: first-call costs
        for i in range(one):                                          # one mission each, in turn
            for variant in (("on", "off") if i % 2 == 0 else ("off", "on")):
                out = stacks[variant].run(1, 1, first=i)
                durations[variant].append(out["missions"][0]["duration_seconds"])
                bad |= set(out["statuses"]) - {"completed"}
        for i in range(batches):                                      # then batches, in turn
            for variant in (("on", "off") if i % 2 == 0 else ("off", "on")):
                out = stacks[variant].run(batch, conc, first=i * batch)
                walls[variant].append(out["wall_seconds"])
                loaded[variant] += [m["duration_seconds"] for m in out["missions"]]
                bad |= set(out["statuses"]) - {"completed"}
    on_s, off_s = median(durations["on"]), median(durations["off"])
    lon, loff = median(loaded["on"]), median(loaded["off"])
    result.add("mission wall time added by telemetry, one at a time", (on_s / off_s - 1) * 100, off_s, "%",
               ratio(on_s, off_s), "x telemetry off", "median mission s, OTEL_SDK_DISABLED", goal=1.05,
               higher_is_better=False)
    result.add(f"mission wall time added by telemetry, {conc} at a time", (lon / loff - 1) * 100, loff, "%",
               ratio(lon, loff), "x telemetry off", f"median mission s with {conc} in flight, OTEL_SDK_DISABLED",
               goal=1.05, higher_is_better=False)
    result.details["missions"] = {
        "telemetry_on": what, "one_at_a_time_seconds": durations, "batch_wall_seconds": walls,
        f"{conc}_in_flight_seconds": loaded,
        "batch": {"missions": batch, "concurrency": conc}, "non_completed_statuses": sorted(bad),
    }
    result.series["mission_seconds"] = durations
    result.notes.append(f"telemetry on = traces and logs exported over OTLP/gRPC to {what}; off = "
                        f"OTEL_SDK_DISABLED=true (JSON logs and metrics stay); both stacks run side by side and "
                        f"take turns mission by mission ({one} each) and batch by batch ({batches} each), so "
                        f"the machine's other load hits both alike")


def run(cfg: Config) -> Result:
    result = Result("telemetry", TITLE)
    _events_per_second(cfg, result)
    _missions(cfg, result)
    return result

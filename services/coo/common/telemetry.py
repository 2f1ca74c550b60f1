"""One call per service: traces, logs and metrics wired the same way everywhere.

``setup_telemetry("budget")`` gives

* an OTel tracer provider and logger provider exporting OTLP to the collector
  (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SDK_DISABLED`` and ``OTEL_TRACES_EXPORTER`` /
  ``OTEL_LOGS_EXPORTER`` = ``none`` honoured);
* structlog rendering JSON lines (ISO-8601 UTC timestamp, level, logger, service, trace_id,
  span_id, mission_id when bound) after the secret scrubber, each line also exported as an
  OTel log record; ``COO_DEBUG=1`` switches to DEBUG and a console renderer;
* the prometheus-client default registry, which each service serves on ``/metrics``.

Public APIs only, so an SDK release cannot break a service: the SDK's tracer provider and batch
processors, log records through ``Logger.emit``, structlog's own ``TimeStamper`` and
``JSONRenderer`` (with orjson as its serializer). With no collector reachable the service keeps
running and says so once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlparse

import orjson
import structlog
from opentelemetry import trace

# The logs signal is still in development upstream: its API and SDK live in the ``_logs`` packages,
# which are its documented entry points (only their public, exported names are used here).
from opentelemetry._logs import Logger, SeverityNumber, set_logger_provider
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from coo import __version__
from coo.common.scrub import structlog_processor as scrub_processor

_SEVERITY = {
    "debug": SeverityNumber.DEBUG,
    "info": SeverityNumber.INFO,
    "warning": SeverityNumber.WARN,
    "warn": SeverityNumber.WARN,
    "error": SeverityNumber.ERROR,
    "exception": SeverityNumber.ERROR,
    "critical": SeverityNumber.FATAL,
}

log = structlog.get_logger("coo.telemetry")


def sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def debug_enabled() -> bool:
    return os.environ.get("COO_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def otlp_endpoint() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")


def otlp_protocol() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip().lower()


def collector_reachable(endpoint: str | None = None, timeout: float = 0.3) -> bool:
    """A TCP connect to the OTLP endpoint: cheap, and enough to tell "nobody listens"."""
    url = urlparse(endpoint or otlp_endpoint())
    port = url.port or (4318 if otlp_protocol().startswith("http") else 4317)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class _Reachability:
    """Says once that the collector is unreachable, and once that it is back."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._down = False
        self._lock = threading.Lock()

    def failed(self) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        log.warning("collector unreachable; telemetry is dropped until it is back",
                    signal=self._what, endpoint=otlp_endpoint())

    def said_down(self) -> None:
        """The collector's absence was announced another way: the first failure stays quiet."""
        with self._lock:
            self._down = True

    def ok(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.info("collector reachable again", signal=self._what, endpoint=otlp_endpoint())


_REACHABILITY = _Reachability("traces and logs")  # one voice for every exporter of the process


class _QuietSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self._state = _REACHABILITY

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        (self._state.ok if result is SpanExportResult.SUCCESS else self._state.failed)()
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _QuietLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self._state = _REACHABILITY

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        result = self.inner.export(batch)
        (self._state.ok if result is LogRecordExportResult.SUCCESS else self._state.failed)()
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves LogRecordExporter.shutdown unannotated

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _otlp_exporter(signal: str) -> Any:
    """The OTLP exporter of ``signal`` ("traces" or "logs") for ``OTEL_EXPORTER_OTLP_PROTOCOL`` (grpc,
    or http/protobuf), found as the SDK's own configuration finds it: by its entry point (the log
    exporters' modules are not public yet)."""
    kind = "otlp_proto_http" if otlp_protocol().startswith("http") else "otlp_proto_grpc"
    (entry,) = entry_points(group=f"opentelemetry_{signal}_exporter", name=kind)
    return entry.load()()


def exporter_off(signal: str) -> bool:
    """``OTEL_TRACES_EXPORTER`` / ``OTEL_LOGS_EXPORTER`` = ``none``: that signal is not exported."""
    return os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower() == "none"


def _resource(service: str) -> Resource:
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME wins over our default.
    attrs: dict[str, Any] = {
        "service.namespace": "coo",
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
    }
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = service
    return Resource.create(attrs)


# ---------------------------------------------------------------- structlog processors

def _add_trace_context(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


@dataclass
class _StaticFields:
    fields: dict[str, Any]

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        for key, value in self.fields.items():
            event.setdefault(key, value)
        return event


_PLAIN = (str, bool, int, float)
# the record's body and timestamp, and structlog's ProcessorFormatter meta keys (a stdlib line's
# LogRecord, whose repr holds the unscrubbed message)
_NOT_ATTRIBUTES = frozenset(("event", "timestamp", "_record", "_from_structlog"))
_EXPORTING = threading.local()


def _otel_value(value: Any) -> Any:
    return value if isinstance(value, _PLAIN) else str(value)


def _timestamp_ns(value: Any) -> int | None:
    """The JSON line's ISO timestamp as the record's time (to the microsecond, the same instant)."""
    if type(value) is not str:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    # integer arithmetic: a float of seconds since 1970 loses the microseconds' last digit
    return (int(moment.timestamp()) * 1_000_000 + moment.microsecond) * 1000


def batch_log_processor(exporter: LogRecordExporter, **kwargs: Any) -> BatchLogRecordProcessor:
    """The batch log processor the services put on their logger provider (``kwargs`` and the
    ``OTEL_BLRP_*`` variables as for ``BatchLogRecordProcessor``)."""
    return BatchLogRecordProcessor(exporter, **kwargs)


@dataclass
class _ExportToOtel:
    """Sends each (already scrubbed) event to the OTel logger provider, through ``Logger.emit``.

    Body: the event; severity from the level; time: the line's timestamp; trace and span ids
    from the current span; attributes: every other field (the line's JSON fields, including
    level, logger, service, trace_id/span_id and mission_id); resource from the provider, scope
    from the logger's name.
    """

    provider: LoggerProvider
    _loggers: dict[str, Logger] = field(default_factory=dict)

    def _logger(self, name: str) -> Logger:
        otel_logger = self._loggers.get(name)
        if otel_logger is None:
            otel_logger = self._loggers[name] = self.provider.get_logger(name)
        return otel_logger

    def __call__(self, _logger: WrappedLogger, method_name: str, event: EventDict) -> EventDict:
        # A warning the SDK logs while a record is being made (e.g. an attribute truncated to
        # OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT) comes back here through stdlib logging:
        # it gets its JSON line, not a record of its own, which would log the warning again.
        if getattr(_EXPORTING, "busy", False):
            return event
        _EXPORTING.busy = True
        try:
            self._export(method_name, event)
        finally:
            _EXPORTING.busy = False
        return event

    def _export(self, method_name: str, event: EventDict) -> None:
        name = event.get("logger", "coo")
        level = event.get("level", method_name)
        self._logger(name if type(name) is str else str(name)).emit(
            timestamp=_timestamp_ns(event.get("timestamp")),
            severity_number=_SEVERITY.get(level, SeverityNumber.INFO), severity_text=level.upper(),
            body=str(event.get("event", "")),
            attributes={k: _otel_value(v) for k, v in event.items() if v is not None and k not in _NOT_ATTRIBUTES})


def _logger_name_from_record(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    record = event.get("_record")
    if record is not None:
        event.setdefault("logger", record.name)
    return event


@dataclass
class Telemetry:
    service: str
    tracer_provider: TracerProvider | None
    logger_provider: LoggerProvider | None
    enabled: bool
    exporters: list[_QuietSpanExporter | _QuietLogExporter] = field(default_factory=list)   # the OTLP exporters we own
    in_process: bool = False                         # tests: an in-memory exporter shared by all
    debug: bool = False                              # COO_DEBUG
    debug_log: Path | None = None                    # COO_DEBUG's rotated JSON log file

    def shutdown(self) -> None:
        """Flush and stop exporters (called on graceful shutdown).

        With no collector listening, the exporters are stopped first so the final flush does
        not sit in OTLP retries; the spans it holds would be dropped anyway.
        """
        if self.in_process:
            if self.tracer_provider is not None:
                self.tracer_provider.force_flush(1000)
            return
        if self.exporters and not collector_reachable():
            for exporter in self.exporters:
                with contextlib.suppress(Exception):
                    exporter.inner.shutdown()
        for provider in (self.tracer_provider, self.logger_provider):
            if provider is None:
                continue
            with contextlib.suppress(Exception):     # shutdown must never raise
                provider.force_flush(5000)
                provider.shutdown()


def _dumps(obj: Any, default: Any = None, **_kw: Any) -> str:
    """orjson as structlog's JSON serializer (structlog passes its ``__structlog__``/repr fallback
    as ``default``); what orjson cannot hold (an integer beyond 64 bits) goes through ``json``."""
    try:
        return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:                   # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, default=default)


_render_json = structlog.processors.JSONRenderer(serializer=_dumps)
#: The last processor: the event dict to the line written (JSONRenderer's str, or the console's)
_Renderer = Callable[[WrappedLogger, str, EventDict], str | bytes]


def debug_log_path(service: str) -> Path:
    """COO_DEBUG's log file: ``<COO_DATA_DIR>/logs/<service>-debug.log``."""
    return Path(os.environ.get("COO_DATA_DIR") or "var") / "logs" / f"{service}-debug.log"


class _DebugFile:
    """Every log line of a COO_DEBUG service, as JSON, in a file rotated by the standard library's
    ``RotatingFileHandler`` (``COO_DEBUG_LOG_MAX_BYTES``, default 10 MiB; ``COO_DEBUG_LOG_BACKUPS``,
    default 3): what the console shows readably, kept searchable."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=int(os.environ.get("COO_DEBUG_LOG_MAX_BYTES") or 10 << 20),
            backupCount=int(os.environ.get("COO_DEBUG_LOG_BACKUPS") or 3), encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, line: str) -> None:
        self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.DEBUG, "levelname": "DEBUG"}))

    def tee(self, renderer: _Renderer) -> _Renderer:
        def render(logger: WrappedLogger, name: str, event: EventDict) -> str | bytes:
            # before the console renderer, which may take fields out; a str (_dumps decodes orjson's bytes)
            line = _render_json(logger, name, event)
            self.write(line if isinstance(line, str) else line.decode())
            return renderer(logger, name, event)
        return render


def configure_logging(service: str, *, debug: bool | None = None,
                      logger_provider: LoggerProvider | None = None) -> Path | None:
    """structlog (and stdlib logging of libraries) → scrubber → JSON line on stdout (+ OTel logs).

    The scrubber runs on what callers and the context give (the event, its fields, bound
    context variables, formatted tracebacks) before the fields this pipeline adds itself: the
    logger's name, the timestamp, the service and the trace/span ids are ours and hold no
    secret (about half the scrubbing time of a line went to them). A caller's own ``logger`` or
    ``trace_id`` field is kept (setdefault) and so was scrubbed with the rest.

    With ``debug`` (``COO_DEBUG``) the level is DEBUG, the console renderer readable, and every
    line also goes, as JSON, to a rotated file (:func:`debug_log_path`), whose path is returned.
    """
    debug = debug_enabled() if debug is None else debug
    level = logging.DEBUG if debug else logging.INFO
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        scrub_processor,
        # ours from here on: not scrubbed (see above)
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _StaticFields({"service": service}),
        _add_trace_context,
    ]
    if logger_provider is not None:
        shared.append(_ExportToOtel(logger_provider))
    renderer: _Renderer = structlog.dev.ConsoleRenderer(colors=False) if debug else _render_json
    debug_file = None
    if debug:
        try:
            debug_file = _DebugFile(debug_log_path(service))
            renderer = debug_file.tee(renderer)
        except OSError as exc:
            print(f"COO_DEBUG: no debug log file at {debug_log_path(service)}: {exc}", file=sys.stderr)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedWriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries log through stdlib logging: render those lines the same way.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_logger_name_from_record, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if debug else logging.WARNING)
    # The OTLP exporters log every failed attempt; _QuietSpanExporter says it once instead.
    for noisy in ("opentelemetry.exporter.otlp.proto.grpc.exporter", "opentelemetry.exporter.otlp.proto.http"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    return debug_file.path if debug_file else None


def get_logger(name: str, **initial: Any) -> FilteringBoundLogger:
    """A structlog logger carrying its name; lazy, so it may be created at import time."""
    logger: FilteringBoundLogger = structlog.get_logger(name, **initial)   # the wrapper class configured
    return logger


class _NamedWriteLogger(structlog.WriteLogger):
    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    """Like structlog.WriteLoggerFactory, keeping the name given to get_logger(name)."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "coo")


def _add_logger_name(logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    event.setdefault("logger", getattr(logger, "name", None) or "coo")
    return event


_installed: Telemetry | None = None


def setup_telemetry(service: str, *, span_exporter: SpanExporter | None = None,
                    debug: bool | None = None) -> Telemetry:
    """Configure traces, logs and metrics for ``service``. Idempotent per process.

    ``span_exporter`` replaces OTLP (tests pass an in-memory exporter) and is processed
    synchronously so spans are visible at once.
    """
    global _installed  # noqa: PLW0603 - one telemetry setup per process, by design
    if _installed is not None:
        return _installed
    enabled = not sdk_disabled()
    tracer_provider = logger_provider = None
    owned: list[_QuietSpanExporter | _QuietLogExporter] = []
    if enabled:
        resource = _resource(service)
        tracer_provider = TracerProvider(resource=resource)
        # mission.id travels as baggage; every span started under it carries it as an attribute.
        tracer_provider.add_span_processor(BaggageSpanProcessor(lambda key: key == "mission.id"))
        if span_exporter is not None:
            tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        else:
            if not exporter_off("traces"):
                traces_out = _QuietSpanExporter(_otlp_exporter("traces"))
                owned.append(traces_out)
                tracer_provider.add_span_processor(BatchSpanProcessor(traces_out))
            if not exporter_off("logs"):
                logs_out = _QuietLogExporter(_otlp_exporter("logs"))
                owned.append(logs_out)
                logger_provider = LoggerProvider(resource=resource)
                logger_provider.add_log_record_processor(batch_log_processor(logs_out))
                set_logger_provider(logger_provider)
        trace.set_tracer_provider(tracer_provider)
    debug = debug_enabled() if debug is None else debug
    debug_log = configure_logging(service, debug=debug, logger_provider=logger_provider)
    _installed = Telemetry(service, tracer_provider, logger_provider, enabled, owned,
                           in_process=span_exporter is not None, debug=debug, debug_log=debug_log)
    if not enabled:
        log.info("OpenTelemetry SDK disabled (OTEL_SDK_DISABLED=true); metrics and logs only")
    elif span_exporter is None and not collector_reachable():
        _installed_state_warn_once()
    _install_crash_hook(service)
    return _installed


def telemetry_installed() -> bool:
    """Whether :func:`setup_telemetry` ran in this process (logging configured, exporters set)."""
    return _installed is not None


def _installed_state_warn_once() -> None:
    _REACHABILITY.said_down()  # already said: the exporters' first failure stays quiet
    log.warning("collector unreachable at start-up; the service runs without exporting telemetry until it is up",
                endpoint=otlp_endpoint())


def _install_crash_hook(service: str) -> None:
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        structlog.get_logger("coo.crash").critical(
            "unhandled exception; the service is crashing", service=service,
            exc_info=(exc_type, exc, tb))
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def trace_exemplar() -> dict[str, str] | None:
    """An exemplar for prometheus-client observations: the current trace id, never a label."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}

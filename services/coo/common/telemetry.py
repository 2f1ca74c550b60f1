"""One call per service: traces, logs and metrics wired the same way everywhere.

``setup_telemetry("budget")`` gives

* an OTel tracer provider and logger provider exporting OTLP to the collector
  (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SDK_DISABLED`` honoured);
* structlog rendering JSON lines (ISO-8601 UTC timestamp, level, logger, service, trace_id,
  span_id, mission_id when bound) after the secret scrubber, each line also exported as an
  OTel log record; ``COO_DEBUG=1`` switches to DEBUG and a console renderer;
* the prometheus-client default registry, which each service serves on ``/metrics``.

With no collector reachable the service keeps running and says so once.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import structlog
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber, set_logger_provider
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

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

    def ok(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.info("collector reachable again", signal=self._what, endpoint=otlp_endpoint())


_REACHABILITY = _Reachability("traces and logs")  # one voice for every exporter of the process


class _QuietSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self._state = _REACHABILITY

    def export(self, spans):
        result = self._inner.export(spans)
        (self._state.ok if result is SpanExportResult.SUCCESS else self._state.failed)()
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _QuietLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter) -> None:
        self._inner = inner
        self._state = _REACHABILITY

    def export(self, batch):
        result = self._inner.export(batch)
        (self._state.ok if result is LogRecordExportResult.SUCCESS else self._state.failed)()
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _otlp_exporters() -> tuple[SpanExporter, LogRecordExporter]:
    if otlp_protocol().startswith("http"):
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(), OTLPLogExporter()


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

def _add_trace_context(_logger, _name, event: dict) -> dict:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


@dataclass
class _StaticFields:
    fields: dict[str, Any]

    def __call__(self, _logger, _name, event: dict) -> dict:
        for key, value in self.fields.items():
            event.setdefault(key, value)
        return event


def _otel_value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


@dataclass
class _ExportToOtel:
    """Sends each (already scrubbed) event to the OTel logger provider as a log record."""

    provider: LoggerProvider
    _loggers: dict[str, Any] = field(default_factory=dict)

    def __call__(self, _logger, method_name: str, event: dict) -> dict:
        name = event.get("logger", "coo")
        otel_logger = self._loggers.get(name)
        if otel_logger is None:
            otel_logger = self._loggers[name] = self.provider.get_logger(name)
        level = event.get("level", method_name)
        attributes = {k: _otel_value(v) for k, v in event.items() if k not in ("event", "timestamp") and v is not None}
        otel_logger.emit(
            severity_number=_SEVERITY.get(level, SeverityNumber.INFO),
            severity_text=level.upper(),
            body=str(event.get("event", "")),
            attributes=attributes,
        )
        return event


def _logger_name_from_record(_logger, _name, event: dict) -> dict:
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
    exporters: list = field(default_factory=list)   # the OTLP exporters we own
    in_process: bool = False                         # tests: an in-memory exporter shared by all

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
                try:
                    exporter._inner.shutdown()
                except Exception:  # noqa: BLE001
                    pass
        for provider in (self.tracer_provider, self.logger_provider):
            if provider is None:
                continue
            try:
                provider.force_flush(5000)
                provider.shutdown()
            except Exception:  # noqa: BLE001 - shutdown must never raise
                pass


def configure_logging(service: str, *, debug: bool | None = None, logger_provider: LoggerProvider | None = None) -> None:
    """structlog (and stdlib logging of libraries) → scrubber → JSON line on stdout (+ OTel logs)."""
    debug = debug_enabled() if debug is None else debug
    level = logging.DEBUG if debug else logging.INFO
    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _StaticFields({"service": service}),
        _add_trace_context,
        structlog.processors.format_exc_info,
        scrub_processor,
    ]
    if logger_provider is not None:
        shared.append(_ExportToOtel(logger_provider))
    renderer = structlog.dev.ConsoleRenderer(colors=False) if debug else structlog.processors.JSONRenderer()
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


def get_logger(name: str, **initial: Any):
    """A structlog logger carrying its name; lazy, so it may be created at import time."""
    return structlog.get_logger(name, **initial)


class _NamedWriteLogger(structlog.WriteLogger):
    def __init__(self, file, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    """Like structlog.WriteLoggerFactory, keeping the name given to get_logger(name)."""

    def __init__(self, file) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "coo")


def _add_logger_name(logger, _name, event: dict) -> dict:
    event.setdefault("logger", getattr(logger, "name", None) or "coo")
    return event


_installed: Telemetry | None = None


def setup_telemetry(service: str, *, span_exporter: SpanExporter | None = None,
                    debug: bool | None = None) -> Telemetry:
    """Configure traces, logs and metrics for ``service``. Idempotent per process.

    ``span_exporter`` replaces OTLP (tests pass an in-memory exporter) and is processed
    synchronously so spans are visible at once.
    """
    global _installed
    if _installed is not None:
        return _installed
    enabled = not sdk_disabled()
    tracer_provider = logger_provider = None
    owned: list = []
    if enabled:
        resource = _resource(service)
        tracer_provider = TracerProvider(resource=resource)
        # mission.id travels as baggage; every span started under it carries it as an attribute.
        tracer_provider.add_span_processor(BaggageSpanProcessor(lambda key: key == "mission.id"))
        if span_exporter is not None:
            tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        else:
            span_out, log_out = _otlp_exporters()
            owned = [_QuietSpanExporter(span_out), _QuietLogExporter(log_out)]
            tracer_provider.add_span_processor(BatchSpanProcessor(owned[0]))
            logger_provider = LoggerProvider(resource=resource)
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(owned[1]))
            set_logger_provider(logger_provider)
        trace.set_tracer_provider(tracer_provider)
    configure_logging(service, debug=debug, logger_provider=logger_provider)
    _installed = Telemetry(service, tracer_provider, logger_provider, enabled, owned,
                           in_process=span_exporter is not None)
    if not enabled:
        log.info("OpenTelemetry SDK disabled (OTEL_SDK_DISABLED=true); metrics and logs only")
    elif span_exporter is None and not collector_reachable():
        _installed_state_warn_once()
    _install_crash_hook(service)
    return _installed


def _installed_state_warn_once() -> None:
    _REACHABILITY._down = True  # already said: the exporters' first failure stays quiet
    log.warning("collector unreachable at start-up; the service runs without exporting telemetry until it is up",
                endpoint=otlp_endpoint())


def _install_crash_hook(service: str) -> None:
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
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

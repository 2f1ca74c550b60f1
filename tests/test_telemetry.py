"""The logging pipeline of coo.common.telemetry: every line a scrubbed JSON line on stdout with
timestamp, level, logger, service, trace_id/span_id and mission_id, and the same line exported as
an OTel log record (trace/span ids, severity, attributes, the service resource) to a real
in-memory exporter, through ``Logger.emit`` and the batch processor the services use."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import datetime

import pytest
import structlog
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from coo.common import scrub as scrub_mod
from coo.common import telemetry
from coo.common.scrub import SECRET_MARKER, scrub_text, structlog_processor

SECRET = "sk-proj-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF"  # a fake key, made for these tests


@pytest.fixture
def pipeline(monkeypatch):
    """configure_logging with stdout captured; gives (configure, lines); restores the test config."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()

    def configure(provider: LoggerProvider | None) -> None:
        # here, not at set-up: pytest puts its own sys.stdout back when the test starts
        monkeypatch.setattr(sys, "stdout", out)
        telemetry.configure_logging("svc-under-test", debug=False, logger_provider=provider)

    def lines() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]

    try:
        yield configure, lines
    finally:
        structlog.configure(**saved_config)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.contextvars.clear_contextvars()


def _provider(batch: bool = True) -> tuple[LoggerProvider, InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=telemetry._resource("svc-under-test"))
    if batch:
        provider.add_log_record_processor(telemetry.batch_log_processor(exporter))
    else:
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, exporter


def _log_in_a_span(name: str = "coo.test") -> tuple[int, int]:
    tracer = TracerProvider().get_tracer("test")
    structlog.contextvars.bind_contextvars(mission_id="m-123")
    try:
        with tracer.start_as_current_span("work") as span:
            structlog.get_logger(name).warning(
                f"calling with {SECRET}", model="mock-large", api_key="hunter2", attempt=2,
                detail={"authorization": "Bearer abc", "note": f"key {SECRET}"}, nothing=None)
            ctx = span.get_span_context()
    finally:
        structlog.contextvars.unbind_contextvars("mission_id")
    return ctx.trace_id, ctx.span_id


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "simple"])
def test_a_line_is_json_on_stdout_and_an_otel_record_both_scrubbed(pipeline, batch):
    configure, lines = pipeline
    provider, exporter = _provider(batch)
    configure(provider)
    trace_id, span_id = _log_in_a_span()
    provider.force_flush()

    (line,) = lines()
    assert SECRET not in json.dumps(line) and "hunter2" not in json.dumps(line)
    assert line["event"] == "calling with [REDACTED:openai_key]"
    assert line["api_key"] == SECRET_MARKER and line["detail"]["authorization"] == SECRET_MARKER
    assert line["level"] == "warning" and line["logger"] == "coo.test" and line["service"] == "svc-under-test"
    assert line["trace_id"] == format(trace_id, "032x") and line["span_id"] == format(span_id, "016x")
    assert line["mission_id"] == "m-123" and line["attempt"] == 2 and "nothing" in line
    assert line["timestamp"].endswith("Z")

    (data,) = exporter.get_finished_logs()
    rec = data.log_record
    assert rec.body == "calling with [REDACTED:openai_key]"
    assert rec.severity_number == SeverityNumber.WARN and rec.severity_text == "WARNING"
    assert rec.trace_id == trace_id and rec.span_id == span_id and rec.trace_flags.sampled
    attrs = dict(rec.attributes)
    assert attrs["mission_id"] == "m-123" and attrs["service"] == "svc-under-test" and attrs["logger"] == "coo.test"
    assert attrs["trace_id"] == line["trace_id"] and attrs["span_id"] == line["span_id"]
    assert attrs["api_key"] == SECRET_MARKER and attrs["attempt"] == 2 and attrs["model"] == "mock-large"
    assert "nothing" not in attrs and "event" not in attrs and "timestamp" not in attrs
    assert SECRET not in str(attrs) and "hunter2" not in str(attrs) and "Bearer abc" not in str(attrs)
    assert data.resource.attributes["service.name"] == "svc-under-test"
    assert data.resource.attributes["service.namespace"] == "coo"
    assert data.instrumentation_scope.name == "coo.test"
    # the record's time is the line's timestamp (to the microsecond); observed a moment later
    line_ns = int(datetime.fromisoformat(line["timestamp"]).timestamp() * 1_000_000) * 1000
    assert abs(rec.timestamp - line_ns) <= 1000 and rec.observed_timestamp >= rec.timestamp


def test_another_processor_on_the_provider_still_gets_every_record(pipeline):
    configure, _ = pipeline
    provider, batch = _provider()
    other = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(other))
    configure(provider)
    _log_in_a_span()
    provider.force_flush()
    assert len(batch.get_finished_logs()) == 1 and len(other.get_finished_logs()) == 1


def test_attribute_limits_apply(pipeline, monkeypatch):
    monkeypatch.setenv("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    configure, lines = pipeline
    provider, exporter = _provider()
    configure(provider)
    structlog.get_logger("coo.limits").info("long", note="0123456789")
    provider.force_flush()
    (data,) = exporter.get_finished_logs()     # the SDK's truncation warning: a line, not a record
    assert data.log_record.attributes["note"] == "01234"
    *warnings, first = lines()      # the warnings come out while the line is being exported
    assert first["note"] == "0123456789"
    assert warnings and all("truncating" in w["event"] for w in warnings)


def test_stdlib_records_take_the_same_way(pipeline):
    configure, lines = pipeline
    provider, exporter = _provider()
    configure(provider)
    logging.getLogger("some.library").warning("connecting with password=%s", "hunter2")
    provider.force_flush()
    (line,) = lines()
    assert line["logger"] == "some.library" and line["service"] == "svc-under-test"
    assert line["event"] == "connecting with password=[REDACTED:secret]"
    (data,) = exporter.get_finished_logs()
    assert data.log_record.body == line["event"] and data.instrumentation_scope.name == "some.library"
    assert set(data.log_record.attributes) == {"logger", "level", "service"}


def test_a_stdlib_records_own_repr_never_reaches_the_otel_record(pipeline):
    """structlog's ProcessorFormatter meta keys stay out: the LogRecord's repr holds the message
    before scrubbing."""
    configure, _ = pipeline
    provider, exporter = _provider()
    configure(provider)
    logging.getLogger("some.library").warning("connecting with password=hunter2")   # no %-args: in the repr
    provider.force_flush()
    (data,) = exporter.get_finished_logs()
    assert "_record" not in data.log_record.attributes and "_from_structlog" not in data.log_record.attributes
    assert "hunter2" not in str(dict(data.log_record.attributes)) and "hunter2" not in str(data.log_record.body)


def test_a_callers_own_logger_or_trace_id_field_is_scrubbed(pipeline):
    configure, lines = pipeline
    configure(None)
    structlog.get_logger("coo.x").info("odd", logger=f"key {SECRET}", trace_id=f"token={SECRET}")
    (line,) = lines()
    assert SECRET not in json.dumps(line)
    assert line["logger"] == "key [REDACTED:openai_key]" and line["trace_id"] == "token=[REDACTED:secret]"


@pytest.mark.parametrize("pii", [False, True])
def test_the_fields_the_pipeline_adds_itself_hold_nothing_to_scrub(pii):
    """Why they are added after the scrubber: scrubbing them never changed a thing."""
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    values = [stamper(None, "info", {})["timestamp"] for _ in range(50)]
    values += ["2026-11-21T14:33:57Z", "2026-01-02T03:04:05.000001Z", "0af7651916cd43dd8448eb211c80319c",
               "b7ad6b7169203331", "ffffffffffffffffffffffffffffffff", "0000000000000001"]
    values += ["orchestrator", "agent", "budget", "sandbox", "mockllm", "coo-tests", "coo.orchestrator",
               "coo.agent", "coo.sandbox", "coo.budget.ledger", "coo.bus", "coo.service", "coo.telemetry",
               "coo.crash", "uvicorn.error", "opentelemetry.sdk._shared_internal", "info", "warning", "critical"]
    for value in values:
        assert scrub_text(value, pii=pii) == value


@pytest.mark.parametrize(("stamp", "ns"), [
    ("2023-11-14T22:13:20Z", 1_700_000_000_000_000_000),
    ("2023-11-14T22:13:20.123456Z", 1_700_000_000_123_456_000),
    ("2023-11-14T22:13:20.000001Z", 1_700_000_000_000_001_000),
    ("2027-01-15T08:00:59.999999+00:00", 1_800_000_059_999_999_000),
    ("2023-11-14T22:13:20", None), ("yesterday", None), (None, None), (1.5, None),
])
def test_the_records_time_is_the_lines_timestamp(stamp, ns):
    assert telemetry._timestamp_ns(stamp) == ns


def test_lines_are_rendered_by_structlogs_json_renderer_with_orjson(pipeline):
    configure, lines = pipeline
    configure(None)

    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    structlog.get_logger("coo.json").info("shapes", big=2**70, odd=Odd(), ids={1: "one"}, text="é\n")
    (line,) = lines()
    assert line["big"] == 2**70 and line["odd"] == "<odd>" and line["text"] == "é\n"
    assert line["ids"] == {"1": "one"}
    assert telemetry._render_json(None, "info", {"a": 1}) == '{"a":1}'       # orjson's compact form


def test_scrubbers_memory_of_clean_values_never_holds_a_secret(monkeypatch):
    monkeypatch.setattr(scrub_mod, "_CLEAN", (set(), set()))
    for _ in range(3):
        event = structlog_processor(None, "info", {"event": "status changed", "error": f"bad key {SECRET}",
                                                   "password": "status changed", "long": "x" * 300})  # fake
        assert event["error"] == "bad key [REDACTED:openai_key]" and event["password"] == SECRET_MARKER
        assert event["event"] == "status changed" and event["long"] == "x" * 300
    clean = scrub_mod._CLEAN[scrub_mod.PII_FROM_ENV]
    assert "status changed" in clean
    assert not any(SECRET in value for value in clean) and "x" * 300 not in clean


def test_scrubbers_memory_is_per_pii_setting_and_bounded(monkeypatch):
    monkeypatch.setattr(scrub_mod, "_CLEAN", (set(), set()))
    monkeypatch.setattr(scrub_mod, "_CLEAN_MAX", 10)
    monkeypatch.setattr(scrub_mod, "PII_FROM_ENV", False)
    assert structlog_processor(None, "info", {"event": "from 10.1.2.3"})["event"] == "from 10.1.2.3"
    monkeypatch.setattr(scrub_mod, "PII_FROM_ENV", True)
    assert structlog_processor(None, "info", {"event": "from 10.1.2.3"})["event"] == "from [REDACTED:ipv4]"
    for i in range(50):
        structlog_processor(None, "info", {"event": f"line {i}"})
    assert all(len(memory) <= 10 for memory in scrub_mod._CLEAN)


@pytest.mark.parametrize(("protocol", "package"), [("grpc", "grpc"), ("http/protobuf", "http")])
def test_the_otlp_exporters_are_found_by_their_entry_points(monkeypatch, protocol, package):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    spans_out, logs_out = telemetry._otlp_exporter("traces"), telemetry._otlp_exporter("logs")
    try:
        assert type(spans_out).__name__ == "OTLPSpanExporter" and type(logs_out).__name__ == "OTLPLogExporter"
        assert all(f"otlp.proto.{package}" in type(e).__module__ for e in (spans_out, logs_out))
    finally:
        spans_out.shutdown()
        logs_out.shutdown()


def test_a_signal_is_switched_off_by_its_standard_variable(monkeypatch):
    monkeypatch.delenv("OTEL_LOGS_EXPORTER", raising=False)
    assert not telemetry.exporter_off("logs")
    for value, off in (("none", True), (" NONE ", True), ("otlp", False)):
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", value)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
        assert telemetry.exporter_off("logs") is off and telemetry.exporter_off("traces") is off

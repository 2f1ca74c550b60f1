"""The logging pipeline of coo.common.telemetry: every line a scrubbed JSON line on stdout with
timestamp, level, logger, service, trace_id/span_id and mission_id, and the same line exported as
an OTel log record (trace/span ids, severity, attributes, the service resource) to a real
in-memory exporter, through the lean path the services use and through ``Logger.emit``."""

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
from opentelemetry.sdk.resources import Resource
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


def _provider(lean: bool) -> tuple[LoggerProvider, InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=telemetry._resource("svc-under-test"))
    if lean:
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


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "logger-emit"])
def test_a_line_is_json_on_stdout_and_an_otel_record_both_scrubbed(pipeline, lean):
    configure, lines = pipeline
    provider, exporter = _provider(lean)
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
    if lean:
        assert not rec.context  # no reference to the emitting context is kept in the queue


def test_lean_and_logger_emit_records_are_the_same(pipeline):
    configure, _ = pipeline
    got = {}
    for lean in (True, False):
        provider, exporter = _provider(lean)
        configure(provider)
        _log_in_a_span("coo.same")
        provider.force_flush()
        (data,) = exporter.get_finished_logs()
        rec = data.log_record
        attrs = dict(rec.attributes)
        attrs.pop("trace_id"), attrs.pop("span_id")
        got[lean] = (rec.body, rec.severity_number, rec.severity_text, attrs, rec.event_name,
                     dict(data.resource.attributes), data.instrumentation_scope, data.dropped_attributes)
    assert got[True] == got[False]


def test_another_processor_on_the_provider_still_gets_every_record(pipeline):
    configure, _ = pipeline
    provider, batch = _provider(lean=True)
    other = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(other))
    configure(provider)
    _log_in_a_span()
    provider.force_flush()
    assert len(batch.get_finished_logs()) == 1 and len(other.get_finished_logs()) == 1


def test_attribute_limits_still_apply_on_the_lean_path(pipeline, monkeypatch):
    monkeypatch.setenv("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    configure, lines = pipeline
    provider, exporter = _provider(lean=True)
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
    provider, exporter = _provider(lean=True)
    configure(provider)
    logging.getLogger("some.library").warning("connecting with password=%s", "hunter2")
    provider.force_flush()
    (line,) = lines()
    assert line["logger"] == "some.library" and line["service"] == "svc-under-test"
    assert line["event"] == "connecting with password=[REDACTED:secret]"
    (data,) = exporter.get_finished_logs()
    assert data.log_record.body == line["event"] and data.instrumentation_scope.name == "some.library"


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
    stamper = telemetry._TimeStamper()
    values = [stamper(None, "info", {})["timestamp"] for _ in range(50)]
    values += ["2026-11-21T14:33:57Z", "2026-01-02T03:04:05.000001Z", "0af7651916cd43dd8448eb211c80319c",
               "b7ad6b7169203331", "ffffffffffffffffffffffffffffffff", "0000000000000001"]
    values += ["orchestrator", "agent", "budget", "sandbox", "mockllm", "coo-tests", "coo.orchestrator",
               "coo.agent", "coo.sandbox", "coo.budget.ledger", "coo.bus", "coo.service", "coo.telemetry",
               "coo.crash", "uvicorn.error", "opentelemetry.sdk._shared_internal", "info", "warning", "critical"]
    for value in values:
        assert scrub_text(value, pii=pii) == value


def test_time_stamps_are_written_as_structlog_writes_them(monkeypatch):
    reference = structlog.processors.TimeStamper(fmt="iso", utc=True)
    for ns in (1_700_000_000_000_000_000, 1_700_000_000_123_456_789, 1_700_000_000_000_001_000,
               1_800_000_059_999_999_999):
        monkeypatch.setattr(telemetry, "time_ns", lambda ns=ns: ns)
        stamper = telemetry._TimeStamper()
        stamp = stamper(None, "info", {})["timestamp"]
        moment = datetime.fromtimestamp(ns // 1000 / 1e6, tz=datetime.now().astimezone().tzinfo)
        with monkeypatch.context() as m:
            m.setattr("structlog.processors.datetime.datetime", _Frozen(moment))
            expected = reference.__class__(fmt="iso", utc=True)(None, "info", {})["timestamp"]
        assert stamp == expected
        assert stamper.last == (stamp, ns)
        assert telemetry._timestamp_ns(stamp) == ns // 1000 * 1000


class _Frozen:
    """A datetime class whose now() is fixed (for structlog's TimeStamper)."""

    def __init__(self, moment: datetime) -> None:
        self._moment = moment

    def now(self, tz=None):
        return self._moment.astimezone(tz)


def test_resource_hash_is_computed_once_and_unchanged():
    res = telemetry._resource("svc-under-test")
    plain = Resource(res.attributes, res.schema_url)
    assert hash(res) == hash(plain) and res == plain
    assert res.__dict__["_coo_hash"] == hash(plain)
    assert {res: 1}[plain] == 1


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

"""The bus's tracing (coo.common.bus_tracing): the SDK's own spans, context through
``opentelemetry.propagate`` over NATS headers, and a switch that turns the spans off but keeps a
mission in one trace."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from coo.common import bus_tracing
from coo.common.bus import extract_trace_context, inject_trace_context
from coo.common.bus_tracing import BusTracing

MISSION = "0f3c9a2b7d5e4c1a8b6f9e0d1c2b3a4f"
ATTRS = bus_tracing.process_attributes("coo.tasks.engineer", "coo.tasks.{role}")


def _provider(**kwargs) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "spans-test"}), **kwargs)
    provider.add_span_processor(BaggageSpanProcessor(lambda key: key == "mission.id"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _mission() -> context.Context:
    return baggage.set_baggage("mission.id", MISSION, context.Context())


def test_bus_spans_are_the_sdks_spans_with_the_messaging_attributes():
    provider, exporter = _provider()
    span = BusTracing(provider).consumer("process coo.tasks.{role}", _mission(), ATTRS)
    span.end()
    (exported,) = exporter.get_finished_spans()
    assert isinstance(exported, ReadableSpan) and exported.kind is SpanKind.CONSUMER
    assert exported.instrumentation_scope.name == "coo.bus"
    assert dict(exported.attributes) == {**ATTRS, "mission.id": MISSION}
    assert ATTRS == {"messaging.system": "nats", "messaging.operation.type": "process",
                     "messaging.operation.name": "process", "messaging.destination.name": "coo.tasks.engineer",
                     "messaging.destination.template": "coo.tasks.{role}"}


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(ALWAYS_OFF), TraceIdRatioBased(0.0)])
def test_the_providers_sampler_decides(sampler):
    provider, exporter = _provider(sampler=sampler)
    span = BusTracing(provider).producer("send x", context.Context(), ATTRS)
    assert not span.is_recording()
    span.end()
    assert exporter.get_finished_spans() == ()


def test_an_unsampled_parent_makes_an_unsampled_child():
    provider, exporter = _provider()
    remote = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    span = BusTracing(provider).producer("s", trace.set_span_in_context(NonRecordingSpan(remote)), ATTRS)
    span.end()
    assert not span.get_span_context().trace_flags.sampled and exporter.get_finished_spans() == ()
    headers: dict[str, str] = {}
    inject_trace_context(headers, span, None)
    assert headers["traceparent"].endswith("-00")            # the decision travels on


def test_without_an_sdk_provider_the_baggage_still_travels():
    span = BusTracing(trace.NoOpTracerProvider()).producer("s", context.Context(), ATTRS)
    assert not span.is_recording()
    headers: dict[str, str] = {}
    inject_trace_context(headers, span, _mission())
    assert "traceparent" not in headers and headers["baggage"] == f"mission.id={MISSION}"


def test_headers_carry_what_the_global_propagator_writes():
    provider, _ = _provider()
    span = BusTracing(provider).producer("send x", _mission(), ATTRS)
    headers: dict[str, str] = {"Nats-Msg-Id": "m-1"}
    inject_trace_context(headers, span, _mission())
    expected: dict[str, str] = {}
    propagate.inject(expected, context=trace.set_span_in_context(span, _mission()))
    assert headers == {"Nats-Msg-Id": "m-1", **expected}
    got = extract_trace_context(headers)
    assert trace.get_current_span(got).get_span_context().span_id == span.get_span_context().span_id
    assert baggage.get_baggage("mission.id", got) == MISSION
    assert extract_trace_context(None) == context.Context() == extract_trace_context({})


def _hop(tracing: BusTracing, provider: TracerProvider) -> None:
    """A publish, then a consume whose handler starts a span of its own."""
    with provider.get_tracer("orchestrator").start_as_current_span("invoke_workflow coo.mission"):
        parent = baggage.set_baggage("mission.id", MISSION)
        producer = tracing.producer("send x", parent, ATTRS)
        headers: dict[str, str] = {}
        inject_trace_context(headers, producer, parent)
        producer.end()
    received = extract_trace_context(headers)
    consumer = tracing.consumer("process x", received, ATTRS)
    token = context.attach(trace.set_span_in_context(consumer, received))
    try:
        with provider.get_tracer("agent").start_as_current_span("invoke_agent engineer"):
            pass
    finally:
        context.detach(token)
        consumer.end()


def test_a_consumer_span_is_the_parent_of_what_the_handler_starts():
    provider, exporter = _provider()
    _hop(BusTracing(provider), provider)
    root, = (s for s in exporter.get_finished_spans() if s.name.startswith("invoke_workflow"))
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    send, process, child = by_name["send x"], by_name["process x"], by_name["invoke_agent engineer"]
    assert send.parent.span_id == root.context.span_id
    assert process.parent.span_id == send.context.span_id
    assert child.parent.span_id == process.context.span_id
    assert {s.context.trace_id for s in (root, send, child, process)} == {root.context.trace_id}
    assert all(s.attributes["mission.id"] == MISSION for s in (send, child, process))


def test_switched_off_no_bus_span_and_still_one_trace(monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "fastapi, coo_bus")
    assert bus_tracing.instrumentation_disabled()
    provider, exporter = _provider()
    tracing = BusTracing(provider)
    assert not tracing.enabled
    _hop(tracing, provider)
    root, child = exporter.get_finished_spans()              # no bus span in between
    assert [s.name for s in (root, child)] == ["invoke_workflow coo.mission", "invoke_agent engineer"]
    assert child.parent.span_id == root.context.span_id and child.context.trace_id == root.context.trace_id
    assert child.attributes["mission.id"] == MISSION


def test_the_switch_reads_contribs_variable(monkeypatch):
    for value, off in (("", False), ("fastapi", False), ("coo_bus", True), ("*", True)):
        monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", value)
        assert bus_tracing.instrumentation_disabled() is off
        assert BusTracing(trace.NoOpTracerProvider()).enabled is not off


def test_without_a_provider_the_global_one_is_used(spans):
    span = BusTracing().producer("send global", context.Context(), ATTRS)
    span.end()
    (exported,) = [s for s in spans.get_finished_spans() if s.name == "send global"]
    assert exported.resource.attributes["service.name"] == trace.get_tracer_provider().resource.attributes[
        "service.name"]

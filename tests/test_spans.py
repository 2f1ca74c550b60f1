"""Lean bus spans export exactly what the SDK's spans export, through the same pipeline."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from coo.common.bus import extract_trace_context, inject_trace_context
from coo.common.spans import LeanSpan, LeanTracer

MISSION = "0f3c9a2b7d5e4c1a8b6f9e0d1c2b3a4f"
ATTRS = {"messaging.system": "nats", "messaging.destination.name": "coo.tasks.engineer",
         "messaging.message.body.size": 2048}


def _provider(**kwargs) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "spans-test"}), **kwargs)
    provider.add_span_processor(BaggageSpanProcessor(lambda key: key == "mission.id"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _exercise(tracer, parent) -> None:
    """What a bus hop and its handler may do to a span."""
    span = tracer.start_span("process coo.tasks.engineer", context=parent, kind=SpanKind.CONSUMER,
                             attributes=dict(ATTRS))
    span.set_attribute("messaging.nats.delivered_count", 3)
    span.set_attribute("coo.tags", ["a", "b"])
    span.set_attribute("coo.bad", {"not": "allowed"})        # invalid: dropped by both
    span.set_attributes({"coo.flag": True, "coo.ratio": 0.5})
    try:
        raise ValueError("boom")
    except ValueError as exc:
        span.record_exception(exc, attributes={"coo.where": "handler"})
    span.add_event("retry", {"delay": 1.5})
    span.set_status(StatusCode.ERROR, "terminated")
    span.update_name("process coo.tasks.{role}")
    span.end()
    span.set_attribute("after.end", "ignored")
    span.end()                                               # a second end exports nothing more


def _comparable(span) -> dict:
    return {
        "name": span.name, "kind": span.kind, "attributes": dict(span.attributes),
        "dropped_attributes": span.dropped_attributes, "dropped_events": span.dropped_events,
        "events": [(e.name, {k: v for k, v in e.attributes.items() if k != "exception.stacktrace"})
                   for e in span.events],
        "status": (span.status.status_code, span.status.description),
        "parent": span.parent, "trace_id": span.context.trace_id, "flags": span.context.trace_flags,
        "resource": dict(span.resource.attributes), "scope": span.instrumentation_scope.name,
        "timed": span.start_time <= span.end_time,
    }


def test_lean_span_exports_what_the_sdk_span_exports():
    provider, exporter = _provider()
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = trace.set_span_in_context(NonRecordingSpan(remote), baggage.set_baggage("mission.id", MISSION))

    _exercise(provider.get_tracer("coo.bus"), parent)
    _exercise(LeanTracer("coo.bus", provider), parent)

    sdk_span, lean_span = exporter.get_finished_spans()
    assert isinstance(lean_span, LeanSpan)
    assert _comparable(lean_span) == _comparable(sdk_span)
    assert lean_span.attributes["mission.id"] == MISSION    # the baggage processor saw on_start
    assert lean_span.parent == remote and lean_span.context.span_id != sdk_span.context.span_id
    # the real OTLP encoding takes it as it takes the SDK's span
    encoded = encode_spans([sdk_span, lean_span])
    a, b = (s for r in encoded.resource_spans for ss in r.scope_spans for s in ss.spans)
    assert (a.name, a.kind, len(a.attributes), len(a.events)) == (b.name, b.kind, len(b.attributes), len(b.events))


def test_limits_drop_and_count_like_the_sdk():
    limits = SpanLimits(max_span_attributes=4, max_events=1, max_span_attribute_length=5)
    provider, exporter = _provider(span_limits=limits)
    for tracer in (provider.get_tracer("t"), LeanTracer("t", provider)):
        span = tracer.start_span("s", attributes={"a": "1", "b": "2"})
        for i in range(5):
            span.set_attribute(f"k{i}", "a long value")
        span.add_event("one")
        span.add_event("two")
        span.end()
    sdk_span, lean_span = exporter.get_finished_spans()
    assert {**_comparable(lean_span), "trace_id": 0} == {**_comparable(sdk_span), "trace_id": 0}  # two roots
    assert lean_span.dropped_attributes == 3 and lean_span.dropped_events == 1
    assert all(len(v) <= 5 for v in lean_span.attributes.values())


def test_root_span_gets_a_new_trace_and_a_sampled_random_flag():
    provider, exporter = _provider()
    LeanTracer("t", provider).start_span("root", context=context.Context()).end()
    sdk = provider.get_tracer("t").start_span("root", context=context.Context())
    sdk.end()
    lean_span, sdk_span = exporter.get_finished_spans()
    assert lean_span.parent is None and lean_span.context.is_valid
    assert lean_span.context.trace_flags == sdk_span.context.trace_flags


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(ALWAYS_OFF), TraceIdRatioBased(0.0)])
def test_the_providers_sampler_decides(sampler):
    provider, exporter = _provider(sampler=sampler)
    span = LeanTracer("t", provider).start_span("s", context=context.Context(), attributes=dict(ATTRS))
    assert not span.is_recording() and not isinstance(span, LeanSpan)
    span.end()
    assert exporter.get_finished_spans() == ()


def test_an_unsampled_parent_makes_an_unsampled_child():
    provider, exporter = _provider()
    remote = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    span = LeanTracer("t", provider).start_span("s", context=trace.set_span_in_context(NonRecordingSpan(remote)))
    span.end()
    assert not span.get_span_context().trace_flags.sampled and exporter.get_finished_spans() == ()
    headers: dict[str, str] = {}
    inject_trace_context(headers, span, None)
    assert headers["traceparent"].endswith("-00")            # the decision travels on


def test_without_an_sdk_provider_the_api_decides():
    tracer = LeanTracer("t", trace.NoOpTracerProvider())
    span = tracer.start_span("s", context=context.Context(), kind=SpanKind.PRODUCER, attributes=dict(ATTRS))
    assert not span.is_recording()
    headers: dict[str, str] = {}
    inject_trace_context(headers, span, baggage.set_baggage("mission.id", MISSION, context.Context()))
    assert "traceparent" not in headers and headers["baggage"] == f"mission.id={MISSION}"


def test_a_consumer_span_is_the_parent_of_what_the_handler_starts():
    provider, exporter = _provider()
    lean = LeanTracer("coo.bus", provider)
    producer = lean.start_span("send x", kind=SpanKind.PRODUCER,
                               context=baggage.set_baggage("mission.id", MISSION, context.Context()))
    headers: dict[str, str] = {}
    inject_trace_context(headers, producer, baggage.set_baggage("mission.id", MISSION, context.Context()))
    producer.end()
    parent = extract_trace_context(headers)
    consumer = lean.start_span("process x", context=parent, kind=SpanKind.CONSUMER)
    token = context.attach(trace.set_span_in_context(consumer, parent))
    try:
        with provider.get_tracer("agent").start_as_current_span("invoke_agent engineer"):
            trace.get_current_span().set_attribute("coo.role", "engineer")
    finally:
        context.detach(token)
        consumer.end()
    send, child, process = exporter.get_finished_spans()
    assert process.parent.span_id == send.context.span_id
    assert child.parent.span_id == process.context.span_id
    assert {s.context.trace_id for s in (send, child, process)} == {send.context.trace_id}
    assert all(s.attributes["mission.id"] == MISSION for s in (send, child, process))


def test_without_a_provider_the_global_one_is_used(spans):
    lean = LeanTracer("coo.bus")                      # the tests' global provider: setup_telemetry's
    span = lean.start_span("send x", kind=SpanKind.PRODUCER, context=context.Context(), attributes=dict(ATTRS))
    span.end()
    assert isinstance(span, LeanSpan)
    (exported,) = [s for s in spans.get_finished_spans() if s.name == "send x"]
    assert exported.resource.attributes["service.name"] == trace.get_tracer_provider().resource.attributes[
        "service.name"]

"""Tracing of the NATS bus, in the style of opentelemetry-python-contrib's messaging instrumentations.

* a span builder, :class:`BusTracing`: a PRODUCER span per publish or request, a CONSUMER span per
  delivery or served request, named and attributed after the messaging semantic conventions
  (``send <subject template>``, ``process <subject template>``, ``messaging.system=nats``, ...);
* the W3C trace context and baggage carried in the NATS headers by ``opentelemetry.propagate``
  (the global propagator: ``traceparent``, ``tracestate``, ``baggage`` by default) through a
  :class:`~opentelemetry.propagators.textmap.Setter`/``Getter`` over the headers dict;
* a switch: ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` naming ``coo_bus`` (the variable contrib's
  instrumentations honour), or ``BusTracing(enabled=False)``. Switched off, the bus makes no span
  but still carries the caller's context, so a mission stays one trace and ``mission.id`` still
  travels as baggage.

Only the OpenTelemetry API is used: the tracer is whatever the tracer provider gives.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind
from opentelemetry.util.types import AttributeValue

from coo import __version__

# Messaging attributes, semantic conventions v1.41. The opentelemetry-semantic-conventions package
# has them only in its private ``_incubating`` package (messaging is not stable yet), so they are
# spelled here; stable ones (``error.type``) come from ``opentelemetry.semconv.attributes``.
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_DESTINATION_TEMPLATE = "messaging.destination.template"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"   # the durable consumer
MESSAGING_MESSAGE_BODY_SIZE = "messaging.message.body.size"
NATS_DELIVERED_COUNT = "messaging.nats.delivered_count"   # ours: which delivery of the message this is
NATS = "nats"
SEND = "send"
PROCESS = "process"

INSTRUMENTATION_NAME = "coo_bus"
DISABLED_VARIABLE = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"


def instrumentation_disabled() -> bool:
    """Whether ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names ``coo_bus`` (or is ``*``)."""
    names = {n.strip() for n in os.environ.get(DISABLED_VARIABLE, "").split(",")}
    return INSTRUMENTATION_NAME in names or "*" in names


class HeadersSetter(Setter[MutableMapping[str, str]]):
    """Writes a propagator's fields into the headers of a NATS message (a str → str dict)."""

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key] = value


class HeadersGetter(Getter[Mapping[str, str] | None]):
    """Reads a propagator's fields from the headers of a NATS message (None: no headers)."""

    def get(self, carrier: Mapping[str, str] | None, key: str) -> list[str] | None:
        value = carrier.get(key) if carrier else None
        return [value] if value is not None else None

    def keys(self, carrier: Mapping[str, str] | None) -> list[str]:
        return list(carrier) if carrier else []


SETTER = HeadersSetter()
GETTER = HeadersGetter()


def inject(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """The context's trace and baggage into ``headers`` (None: the current context)."""
    propagate.inject(headers, context=context, setter=SETTER)


def extract(headers: Mapping[str, str] | None) -> Context:
    """The producer's context from ``headers`` (an empty context when they carry none)."""
    return propagate.extract(headers, context=Context(), getter=GETTER)


def inject_trace_context(headers: MutableMapping[str, str], span: Span, parent: Context | None) -> None:
    """``headers`` get the context of ``parent`` (None: the current one) with ``span`` set in it."""
    inject(headers, trace.set_span_in_context(span, parent))


def send_attributes(subject: str, template: str | None) -> dict[str, str]:
    """The fixed attributes of a PRODUCER span on ``subject`` (no template: request/reply)."""
    return _attributes(SEND, subject, template)


def process_attributes(subject: str, template: str | None) -> dict[str, str]:
    """The fixed attributes of a CONSUMER span on ``subject``."""
    return _attributes(PROCESS, subject, template)


def _attributes(operation: str, subject: str, template: str | None) -> dict[str, str]:
    attributes = {MESSAGING_SYSTEM: NATS, MESSAGING_OPERATION_TYPE: operation,
                  MESSAGING_OPERATION_NAME: operation, MESSAGING_DESTINATION_NAME: subject}
    if template is not None:
        attributes[MESSAGING_DESTINATION_TEMPLATE] = template
    return attributes


class BusTracing:
    """The span builder of the bus: one per :class:`~coo.common.bus.Bus`.

    ``tracer_provider`` None follows the global provider; ``enabled`` None reads the switch."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None, *, enabled: bool | None = None) -> None:
        self.enabled = not instrumentation_disabled() if enabled is None else enabled
        self.tracer = trace.get_tracer("coo.bus", __version__, tracer_provider)

    def start(self, name: str, kind: SpanKind, parent: Context | None,
              attributes: Mapping[str, AttributeValue]) -> Span:
        """A started span, child of ``parent`` (None: the current context). Switched off, a
        non-recording stand-in for the parent span (so context passed on is the parent's)."""
        if not self.enabled:
            return NonRecordingSpan(trace.get_current_span(parent).get_span_context())
        return self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)

    def producer(self, name: str, parent: Context | None, attributes: Mapping[str, AttributeValue]) -> Span:
        return self.start(name, SpanKind.PRODUCER, parent, attributes)

    def consumer(self, name: str, parent: Context | None, attributes: Mapping[str, AttributeValue]) -> Span:
        return self.start(name, SpanKind.CONSUMER, parent, attributes)

"""Lean spans for the bus's hot path: the OTel SDK's data and pipeline, less of its per-span cost.

Every message crosses the bus twice (a PRODUCER and a CONSUMER span), and the SDK's general
``Tracer.start_span`` + ``Span.end`` takes ~15 µs a span here: a lock, a bounded and validated
copy of the attributes, two bounded lists, tracer self-metrics and, at the end, a second
``ReadableSpan`` built from the first. A bus span needs none of that: its attributes are a
fixed set of strings and integers built once per subject, it has no links and rarely an event.

:class:`LeanTracer` starts :class:`LeanSpan` objects that go through the same pipeline as the
SDK's spans: the provider's sampler decides, its id generator makes the ids, its span
processors see ``on_start``/``_on_ending``/``on_end`` (so the baggage processor still stamps
``mission.id`` and the batch processor exports them with the OTLP exporter), and the span *is*
the ``ReadableSpan`` the processors get, with the provider's resource and an instrumentation
scope. Attributes set later (by a handler) are validated and bounded like the SDK's.

When the global provider is not the SDK's (``OTEL_SDK_DISABLED``, tests with a proxy), the
tracer falls back to the API's tracer: same calls, same result as plain OTel.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping
from time import time_ns
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

# (sampled, random trace id) -> flags: made once, as the SDK's Tracer.start_span would make them
_FLAGS = {(sampled, random): TraceFlags((TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
                                        | (TraceFlags.RANDOM_TRACE_ID if random else 0))
          for sampled in (False, True) for random in (False, True)}
_UNSET = Status(StatusCode.UNSET)


class LeanSpan(trace_api.Span, ReadableSpan):
    """A recording span: the API's verbs over a ``ReadableSpan`` it hands to the processors.

    Its attributes start as a plain dict (the bus's fixed, valid ones); the first value that is
    not a plain string within limits turns them into the SDK's ``BoundedAttributes``, so from
    then on values are cleaned and counted exactly as on an SDK span. Events use the SDK's
    bounded containers too."""

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind,
                 attributes: dict, tracer: "LeanTracer", start_time: int) -> None:
        # ReadableSpan's fields, set directly (its __init__ would make a Resource when given none)
        self._name = name
        self._context = context
        self._kind = kind
        self._parent = parent
        self._start_time = start_time
        self._end_time: int | None = None
        self._attributes: dict | BoundedAttributes = attributes
        self._events: BoundedList | tuple = ()
        self._links = ()
        self._status = _UNSET
        self._resource = tracer.resource
        self._instrumentation_scope = tracer.scope
        self._instrumentation_info = None
        self._tracer = tracer

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end_time is not None:
            return
        attributes = self._attributes
        if type(attributes) is dict:
            if (type(value) is str and type(key) is str and key and self._tracer.plain_strings
                    and (key in attributes or len(attributes) < self._tracer.max_attributes)):
                attributes[key] = value
                return
            limits = self._tracer.limits
            attributes = self._attributes = BoundedAttributes(
                limits.max_span_attributes, attributes, immutable=False,
                max_value_len=limits.max_span_attribute_length)
        attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is not None:
            return
        limits = self._tracer.limits
        if not self._events:
            self._events = BoundedList(limits.max_events)
        self._events.append(Event(name, BoundedAttributes(limits.max_event_attributes, attributes,
                                                          max_value_len=limits.max_attribute_length),
                                  timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """Bus spans carry no links (the API lets a span ignore them)."""

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: an OK status is final; a description only goes with ERROR."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            self._status = status
        else:
            self._status = Status(status, description if status is StatusCode.ERROR else None)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """The SDK's exception event: type, message, stack trace, escaped."""
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        event: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        if type(self._attributes) is not dict:
            self._attributes._immutable = True  # noqa: SLF001 - as the SDK's Span.end
        processor = self._tracer.processor
        processor._on_ending(self)  # noqa: SLF001 - what the SDK's Span.end does
        processor.on_end(self)

    def __repr__(self) -> str:
        return f'LeanSpan(name="{self._name}", context={self._context})'


class LeanTracer:
    """``start_span`` for bus spans: :class:`LeanSpan` under an SDK provider, the API otherwise.

    ``tracer_provider`` None follows the global provider (set once at start-up, but tests and
    ``OTEL_SDK_DISABLED`` may leave the proxy or a no-op one in place)."""

    def __init__(self, name: str, tracer_provider: trace_api.TracerProvider | None = None) -> None:
        self._name = name
        self._fixed = tracer_provider
        self._lock = threading.Lock()
        self._provider: Any = None
        self._api_tracer: trace_api.Tracer | None = None
        self._sdk: sdk_trace.Tracer | None = None

    def _provider_now(self) -> trace_api.TracerProvider:
        return self._fixed if self._fixed is not None else trace_api.get_tracer_provider()

    def _current(self) -> None:
        provider = self._provider_now()
        with self._lock:
            if provider is self._provider:
                return
            self._api_tracer = provider.get_tracer(self._name)
            sdk = self._api_tracer if isinstance(self._api_tracer, sdk_trace.Tracer) else None
            if sdk is not None and not sdk._is_enabled():  # noqa: SLF001 - a disabled tracer makes no spans
                sdk = None
            self._sdk = sdk
            if sdk is not None:
                self.resource = sdk.resource
                self.scope = sdk._instrumentation_scope      # noqa: SLF001
                self.limits = limits = sdk._span_limits      # noqa: SLF001
                self.plain_strings = limits.max_span_attribute_length is None
                self.max_attributes = limits.max_span_attributes if limits.max_span_attributes is not None \
                    else float("inf")
                self.processor = sdk.span_processor
                self.sampler = sdk.sampler
                self.ids = sdk.id_generator
            self._provider = provider

    def start_span(self, name: str, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
                   attributes: Mapping[str, Any] | None = None) -> trace_api.Span:
        """A span with a copy of ``attributes`` (strings and integers made by the bus: already
        valid), its parent taken from ``context`` (None: the current context)."""
        if self._provider is not self._provider_now():
            self._current()
        sdk = self._sdk
        if sdk is None:
            return self._api_tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        parent = trace_api.get_current_span(context).get_span_context()
        if parent.is_valid:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        else:
            parent = None
            trace_id = self.ids.generate_trace_id()
            random_trace_id = self.ids.is_trace_id_random()
        sampling = self.sampler.should_sample(context, trace_id, name, kind, attributes or {}, ())
        decision = sampling.decision
        span_context = SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False,
                                   trace_flags=_FLAGS[decision.is_sampled(), bool(random_trace_id)],
                                   trace_state=sampling.trace_state)
        if not decision.is_recording():
            return trace_api.NonRecordingSpan(span_context)
        span = LeanSpan(name, span_context, parent, kind, dict(sampling.attributes), self, time_ns())
        self.processor.on_start(span, parent_context=context)
        return span


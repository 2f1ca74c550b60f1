"""The bus: protobuf messages over NATS JetStream, traced and measured at every hop.

Every service talks to NATS through this module and nothing else:

* ``Bus.connect`` reconnects forever and logs errors, disconnects and reconnects;
* ``Bus.ensure_topology`` declares the streams, consumers and KV buckets of ``topology``;
* ``Bus.publish`` sends a protobuf message with ``Nats-Msg-Id`` (dedup), its type and the
  W3C trace context (``traceparent``, ``baggage``) in the headers, as a PRODUCER span;
* ``Bus.consume`` runs a handler for each message of a durable pull consumer inside a
  CONSUMER span whose parent is the producer's context; the handler's outcome decides
  ack, nak with delay, or term. Undecodable bytes, an unknown type or an oversized payload
  are terminated with a reason, and the server's advisory lands in the dead-letter stream;
* ``Bus.serve`` / ``Bus.request`` are request/reply over ``nats.micro`` (discovery and stats).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import nats.micro
import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.kv import KeyValue
from nats.micro.request import Request
from opentelemetry import baggage, context, trace
from opentelemetry.context.context import Context
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Span, Status, StatusCode
from prometheus_client.metrics import MetricWrapperBase
from structlog.typing import FilteringBoundLogger

from coo.common import bus_tracing, metrics, topology
from coo.common.bus_tracing import (
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_MESSAGE_BODY_SIZE,
    MESSAGING_MESSAGE_ID,
    NATS_DELIVERED_COUNT,
)
from coo.common.config import CommonSettings
from coo.common.declare import declare
from coo.common.retry import Policy
from coo.common.scrub import scrub_text
from coo.common.telemetry import debug_enabled, get_logger

log = get_logger("coo.bus")
_DEBUG = debug_enabled()   # COO_DEBUG: a DEBUG line per message published, received and settled
_HAND_BACK_DELAY = 0.001  # seconds: what a stopping service hands back is redelivered at once

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_TYPE = "Coo-Type"
HEADER_MISSION = "Coo-Mission-Id"
MISSION_BAGGAGE_KEY = "mission.id"

M = TypeVar("M", bound=Message)
_W = TypeVar("_W", bound=MetricWrapperBase)

#: A stream without a leader answers no publish for a moment (a NATS cluster electing one after a
#: node was lost: seconds). The publish is tried again under the same message id, so a first try
#: that did land is dropped by the stream as a duplicate; past the deadline the error goes to the
#: caller (a handler's message is then redelivered). Kept under the work consumers' ack wait (30 s).
_PUBLISH_RETRY = Policy("publish", retry_on=(nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
                                             nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError),
                        attempts=None, deadline=20.0, initial=0.25, maximum=4.0)
#: A consumer whose fetch failed (a lost connection, a consumer moving to a new leader) rebinds
#: after this policy's wait, longer with each failure in a row.
_REBIND = Policy("consume", attempts=None, initial=0.2, maximum=5.0)


class InvalidMessage(Exception):
    """Raised by a handler (or the decoder) for input that can never succeed: it is terminated
    to the dead-letter queue with this reason instead of being retried."""


class Retry(Exception):
    """Raised by a handler to ask for a redelivery after ``delay`` seconds."""

    def __init__(self, reason: str, delay: float = 1.0) -> None:
        super().__init__(reason)
        self.delay = delay


class ServiceError(Exception):
    """A request/reply endpoint answered with an error."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


def type_name(message_or_class: Message | type[Message]) -> str:
    return message_or_class.DESCRIPTOR.full_name


def decode(headers: Mapping[str, str] | None, data: bytes, accepted: Mapping[str, type[M]]) -> M:
    """Decode bytes into one of the accepted protobuf types named by the ``Coo-Type`` header."""
    name = (headers or {}).get(HEADER_TYPE)
    if name is None:
        if len(accepted) != 1:
            raise InvalidMessage("missing Coo-Type header")
        cls = next(iter(accepted.values()))
    else:
        named = accepted.get(name)
        if named is None:
            raise InvalidMessage(f"unknown message type {name!r}")
        cls = named
    message = cls()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidMessage(f"undecodable {cls.DESCRIPTOR.full_name}: {exc}") from None
    return message


def _mission_context(mission_id: str | None) -> context.Context | None:
    if not mission_id:
        return None
    return baggage.set_baggage(MISSION_BAGGAGE_KEY, mission_id)


# ---------------------------------------------------------------- trace context
# The bus's spans, attribute names and header carrier live in coo.common.bus_tracing; these two
# are kept here for callers that pass trace context by hand.

def inject_trace_context(headers: dict[str, str], span: trace.Span, parent: Context | None) -> None:
    """``propagate.inject`` into NATS headers: the context of ``parent`` (None: the current one)
    with ``span`` set in it."""
    bus_tracing.inject_trace_context(headers, span, parent)


def extract_trace_context(headers: Mapping[str, str] | None) -> Context:
    """``propagate.extract`` from NATS headers."""
    return bus_tracing.extract(headers)


def _bind_mission(mission_id: object) -> Mapping[str, contextvars.Token[Any]] | None:
    """structlog's ``mission_id`` for the handler's log lines; the tokens to reset, or None."""
    if not mission_id:
        return None
    return structlog.contextvars.bind_contextvars(mission_id=mission_id)


def _unbind_mission(tokens: Mapping[str, contextvars.Token[Any]] | None) -> None:
    if tokens is not None:
        structlog.contextvars.reset_contextvars(**tokens)


_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def _metric(metric: _W, *labels: str) -> _W:
    """``metric.labels(*labels)``, looked up once (labels are bounded: templates, outcomes)."""
    key = (metric, labels)
    child: _W | None = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


@dataclass(frozen=True)
class _Route:
    """What every message on one subject shares: its template, span names and fixed attributes."""

    template: str
    send_name: str
    process_name: str
    send_attributes: dict[str, str]      # JetStream publish (the message id and body size are added)
    process_attributes: dict[str, str]   # JetStream consume (same)
    request_name: str                    # request/reply spans are named after the subject itself
    serve_name: str
    request_attributes: dict[str, str]   # request/reply, client side
    serve_attributes: dict[str, str]     # request/reply, endpoint side


_routes: dict[str, _Route] = {}
_MAX_ROUTES = 4096


def _route(subject: str) -> _Route:
    route = _routes.get(subject)
    if route is None:
        template = topology.subject_template(subject)
        if len(_routes) >= _MAX_ROUTES:     # subjects carry mission ids: keep the cache bounded
            _routes.clear()
        route = _routes[subject] = _Route(
            template, f"send {template}", f"process {template}",
            bus_tracing.send_attributes(subject, template), bus_tracing.process_attributes(subject, template),
            f"send {subject}", f"process {subject}",
            bus_tracing.send_attributes(subject, None), bus_tracing.process_attributes(subject, None),
        )
    return route


_accepted_by_class: dict[type[Message], Any] = {}   # a class -> {its type name: it}


def _accepting(cls: type[M]) -> Mapping[str, type[M]]:
    accepted: Mapping[str, type[M]] | None = _accepted_by_class.get(cls)
    if accepted is None:
        accepted = _accepted_by_class[cls] = {type_name(cls): cls}
    return accepted


@dataclass
class Delivery:
    """One JetStream delivery and the verbs a handler may use on it."""

    msg: Msg
    subject: str
    template: str
    client: NATS | None = None     # the connection that fetched it: a terminate with a reason goes through it
    settled: bool = False

    @property
    def headers(self) -> Mapping[str, str]:
        return self.msg.headers or {}

    @property
    def num_delivered(self) -> int:
        return self.msg.metadata.num_delivered

    @property
    def stream_seq(self) -> int:
        return self.msg.metadata.sequence.stream

    @property
    def msg_id(self) -> str | None:
        return self.headers.get(HEADER_MSG_ID)

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.nak(delay=delay)

    async def term(self, reason: str) -> None:
        """Terminate with a reason (nats-server >= 2.11 carries it in the advisory)."""
        if not self.settled:
            self.settled = True
            reason = scrub_text(" ".join(reason.split()))[:256]  # reasons quote input: never a secret in the DLQ
            if self.client is None:       # no connection at hand: a terminate without its reason
                await self.msg.term()
                return
            await self.client.publish(self.msg.reply, b"+TERM " + reason.encode())

    async def in_progress(self) -> None:
        await self.msg.in_progress()


Handler = Callable[[Any, Delivery], Awaitable[None]]
#: A request/reply endpoint's function: the decoded request -> the reply message.
_Endpoint = Callable[[Any], Awaitable[Message]]
#: What nats.micro calls with each request (run as a task: a coroutine).
_RequestHandler = Callable[[Request], Coroutine[Any, Any, None]]


def _num_delivered(msg: Msg) -> int:
    """``msg.metadata.num_delivered`` without building the whole metadata (a datetime and three
    dataclasses per message): read from a v1 ack subject
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``;
    any other form is left to the library."""
    tokens = msg.reply.split(".") if msg.reply else []
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK" and tokens[4].isdigit():
        return int(tokens[4])
    return msg.metadata.num_delivered


_BUSY_FETCH_SECONDS = 0.05


def _retry_delay(num_delivered: int) -> float:
    delay: float = min(30.0, 0.5 * (2 ** max(0, num_delivered - 1)))   # (int ** int: typeshed says Any)
    return delay


class Bus:
    def __init__(self, nc: NATS, service: str, settings: CommonSettings, *,
                 tracer_provider: trace.TracerProvider | None = None, closing: asyncio.Event | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.settings = settings
        self._tracing = bus_tracing.BusTracing(tracer_provider)   # None: the global provider
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._micro: list[nats.micro.service.Service] = []
        self._closing = closing or asyncio.Event()   # set by close(): a disconnect then is expected
        self._requests: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ connection
    @classmethod
    async def connect(cls, service: str, settings: CommonSettings | None = None, *,
                      servers: list[str] | None = None, connect_timeout: float = 5.0,
                      tracer_provider: trace.TracerProvider | None = None) -> Bus:
        settings = settings or CommonSettings()
        blog = log.bind(service=service)

        async def error_cb(exc: Exception) -> None:
            blog.warning("nats error", error=str(exc) or type(exc).__name__)

        closing = asyncio.Event()  # set by close(): a disconnect then is expected, not news

        async def disconnected_cb() -> None:
            if not closing.is_set():
                blog.warning("nats disconnected; reconnecting")

        async def reconnected_cb() -> None:
            blog.info("nats reconnected", server=str(nc.connected_url.netloc if nc.connected_url else ""))

        async def closed_cb() -> None:
            blog.debug("nats connection closed")

        options: dict[str, Any] = {}
        if settings.nats_user:
            options["user"] = settings.nats_user
            options["password"] = settings.nats_password.get_secret_value() if settings.nats_password else ""
            # The only inbox this user's permissions allow: replies to its requests land there.
            options["inbox_prefix"] = topology.inbox_prefix(settings.nats_user)
        nc = await nats.connect(
            servers=servers or settings.nats_servers(), name=service,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=connect_timeout,
            # a server that hangs (a paused process, a stalled machine) keeps its socket open: pings
            # find it out in interval x (outstanding + 1) and the client moves to another server
            ping_interval=settings.nats_ping_interval_seconds,
            max_outstanding_pings=settings.nats_max_outstanding_pings,
            allow_reconnect=True, error_cb=error_cb, disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb, closed_cb=closed_cb, **options,
        )
        return cls(nc, service, settings, tracer_provider=tracer_provider, closing=closing)

    async def close(self) -> None:
        """Stop consumers and endpoints, let in-flight handlers finish, drain the connection."""
        self._stop.set()
        self._closing.set()
        for svc in self._micro:
            with contextlib.suppress(Exception):
                await svc.stop()
        if self._tasks or self._requests:
            await asyncio.gather(*self._tasks, *self._requests, return_exceptions=True)
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - a drain that fails still ends in a closed connection
                await self.nc.close()

    @property
    def micro_services(self) -> tuple[nats.micro.service.Service, ...]:
        """The request/reply services this connection serves (``serve``), e.g. for their stats."""
        return tuple(self._micro)

    async def debug_state(self) -> dict[str, Any]:
        """What this connection holds, for the debug dump at start: the server, the durable
        consumers it pulls (with what is pending on them) and the request/reply services it serves."""
        state: dict[str, Any] = {"server": str(self.nc.connected_url.netloc if self.nc.connected_url else ""),
                                 "client_id": self.nc.client_id, "consumers": {},
                                 "services": [svc.info().name for svc in self._micro]}
        specs = topology.consumers()
        for task in self._tasks:
            name = task.get_name().removeprefix("consume:")
            spec = specs.get(name)
            if spec is None:
                continue
            try:
                info = await self.js.consumer_info(spec.stream, name)
                state["consumers"][name] = {
                    "stream": spec.stream, "filter": spec.config.filter_subject, "pending": info.num_pending,
                    "ack_pending": info.num_ack_pending, "redelivered": info.num_redelivered,
                    "ack_wait_seconds": info.config.ack_wait, "max_deliver": info.config.max_deliver}
            except Exception as exc:  # noqa: BLE001 - a dump never fails a start
                state["consumers"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        return state

    # -------------------------------------------------------------------- topology
    async def ensure_topology(self) -> None:
        """Declare the topology: with a service's own NATS user only its own part (and wait for
        the streams it uses but does not own), else all of it (see ``coo.common.declare``)."""
        await declare(self.js, self.settings)

    async def kv(self, bucket: str) -> KeyValue:
        return await self.js.key_value(bucket)

    # --------------------------------------------------------------------- publish
    async def publish(self, subject: str, message: Message, *, msg_id: str | None = None,
                      mission_id: str | None = None, timeout: float = 5.0) -> PubAck:
        """Publish to JetStream and wait for the stream's ack. ``msg_id`` makes retries idempotent."""
        route = _route(subject)
        msg_id = msg_id or uuid.uuid4().hex
        data = message.SerializeToString()
        parent = _mission_context(mission_id)
        span = self._tracing.producer(
            route.send_name, parent,
            {**route.send_attributes, MESSAGING_MESSAGE_ID: msg_id, MESSAGING_MESSAGE_BODY_SIZE: len(data)})
        # A fresh dict per message: js.publish may add headers to the one it is given.
        headers = {HEADER_MSG_ID: msg_id, HEADER_TYPE: type_name(message)}
        if mission_id:
            headers[HEADER_MISSION] = mission_id
        inject_trace_context(headers, span, parent)
        try:
            ack = await _PUBLISH_RETRY.call(self._publish_once, subject, data, headers, timeout)
            if ack.duplicate:
                span.set_attribute("coo.messaging.duplicate", True)
            if _DEBUG:
                log.debug("message published", subject=subject, msg_id=msg_id, type=headers[HEADER_TYPE],
                          bytes=len(data), stream=ack.stream, stream_seq=ack.seq, duplicate=bool(ack.duplicate),
                          mission_id=mission_id)
            _metric(metrics.BUS_MESSAGES, route.template, "published").inc()
            return ack
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            _metric(metrics.BUS_MESSAGES, route.template, "publish_error").inc()
            raise
        finally:
            span.end()

    async def _publish_once(self, subject: str, data: bytes, headers: dict[str, str], timeout: float) -> PubAck:
        return await self.js.publish(subject, data, headers=dict(headers), timeout=timeout)

    # --------------------------------------------------------------------- consume
    def consume(self, consumer: str, handler: Handler, accepted: list[type[Message]], *,
                concurrency: int = 8, fetch_timeout: float = 1.0) -> asyncio.Task[None]:
        """Start a pull loop on a durable consumer of ``topology``; returns its task."""
        spec = topology.consumers()[consumer]
        accepted_map = {type_name(cls): cls for cls in accepted}
        metrics.BUS_REDELIVERIES.labels(topology.subject_template(spec.subject))  # exported from 0
        task = asyncio.create_task(
            self._consume_loop(spec, handler, accepted_map, concurrency, fetch_timeout),
            name=f"consume:{consumer}",
        )
        self._tasks.append(task)
        return task

    async def _consume_loop(self, spec: topology.ConsumerSpec, handler: Handler,
                            accepted: Mapping[str, type[Message]], concurrency: int, fetch_timeout: float) -> None:
        clog = log.bind(consumer=spec.name)
        slots = asyncio.Semaphore(concurrency)
        inflight: set[asyncio.Task[None]] = set()

        def finished(done: asyncio.Task[None]) -> None:
            inflight.discard(done)
            slots.release()

        sub = None
        failures = 0
        while not self._stop.is_set():
            try:
                if sub is None:
                    sub = await self.js.pull_subscribe_bind(spec.name, stream=spec.stream)
                await slots.acquire()      # a free handler slot first: what is fetched starts at once
                slots.release()
                free = concurrency - len(inflight)
                try:
                    # nats-py's fetch(n > 1) waits for the rest of its batch until a status or its
                    # deadline, and a pull request it made after a timed-out one stays open on the
                    # server after returning early: the next message landed on that stale request
                    # and waited up to the fetch timeout (measured: 4 in 40 idle deliveries
                    # 0.1-0.9 s late). So an idle consumer asks for one message at a time (a batch
                    # of one ends with its message), and a busy one for a batch with a short
                    # deadline, which bounds that wait to _BUSY_FETCH_SECONDS while handlers run.
                    if inflight and free > 1:
                        msgs = await sub.fetch(free, timeout=_BUSY_FETCH_SECONDS)
                    else:
                        msgs = await sub.fetch(1, timeout=fetch_timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    failures = 0
                    continue
                failures = 0
                for msg in msgs:
                    await slots.acquire()
                    t = asyncio.create_task(self._handle(msg, handler, accepted, spec.name))
                    inflight.add(t)
                    t.add_done_callback(finished)
            except asyncio.CancelledError:
                break
            except Exception as exc:  # noqa: BLE001 - a consumer loop never dies of one error
                failures += 1
                clog.warning("consumer fetch failed; rebinding", error=str(exc) or type(exc).__name__,
                             failures=failures)
                if sub is not None:
                    with contextlib.suppress(Exception):  # gone with its connection already: nothing to undo
                        await sub.unsubscribe()
                sub = None
                await asyncio.sleep(_REBIND.delay(failures))
        if inflight:
            await self._hand_back(inflight, clog)
        if sub is not None:
            with contextlib.suppress(Exception):  # gone with its connection already: nothing to undo
                await sub.unsubscribe()

    async def _hand_back(self, inflight: set[asyncio.Task[None]], clog: FilteringBoundLogger) -> None:
        """Stopping: handlers in flight get the grace period to finish; what they still hold then is
        handed back (their tasks cancelled, each message nak'd without delay, see :meth:`_settle`)."""
        grace = self.settings.shutdown_grace_seconds
        clog.info("stopping: no new messages; waiting for handlers in flight", in_flight=len(inflight),
                  grace_seconds=grace)
        _done, pending = await asyncio.wait(set(inflight), timeout=grace) if grace > 0 else (set(), set(inflight))
        if pending:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            clog.warning("stopping: messages still in hand after the grace period handed back for redelivery",
                         handed_back=len(pending), grace_seconds=grace)

    async def _handle(self, msg: Msg, handler: Handler, accepted: Mapping[str, type[Message]],
                      consumer: str = "") -> None:
        """One delivery inside a CONSUMER span whose parent is the producer's context."""
        subject = msg.subject
        route = _route(subject)
        headers = msg.headers or {}
        parent = extract_trace_context(headers)
        span = self._tracing.consumer(
            route.process_name, parent,
            {**route.process_attributes, MESSAGING_MESSAGE_ID: headers.get(HEADER_MSG_ID, ""),
             MESSAGING_MESSAGE_BODY_SIZE: len(msg.data),
             **({MESSAGING_CONSUMER_GROUP_NAME: consumer} if consumer else {})})
        token = context.attach(trace.set_span_in_context(span, parent))
        bound = _bind_mission(headers.get(HEADER_MISSION))
        started = time.perf_counter()
        outcome = "ack"
        if _DEBUG:
            log.debug("message received", subject=subject, msg_id=headers.get(HEADER_MSG_ID, ""),
                      type=headers.get(HEADER_TYPE, ""), bytes=len(msg.data), delivered=_num_delivered(msg))
        try:
            delivery = Delivery(msg, subject, route.template, self.nc)
            outcome = await self._settle(msg, delivery, headers, handler, accepted, span)
        finally:
            if _DEBUG:
                log.debug("message settled", subject=subject, msg_id=headers.get(HEADER_MSG_ID, ""), outcome=outcome,
                          seconds=round(time.perf_counter() - started, 6))
            _unbind_mission(bound)
            context.detach(token)
            span.end()
            _metric(metrics.BUS_MESSAGES, route.template, outcome).inc()
            _metric(metrics.BUS_PROCESS_SECONDS, route.template).observe(time.perf_counter() - started)

    async def _settle(self, msg: Msg, delivery: Delivery, headers: Mapping[str, str], handler: Handler,
                      accepted: Mapping[str, type[Message]], span: Span) -> str:
        """Run the handler; ack, nak with delay, or terminate. Returns the outcome."""
        subject = delivery.subject
        try:
            delivered = _num_delivered(msg)
            if delivered > 1:
                _metric(metrics.BUS_REDELIVERIES, delivery.template).inc()
                span.set_attribute(NATS_DELIVERED_COUNT, delivered)
            if len(msg.data) > self.settings.max_payload_bytes:
                raise InvalidMessage(f"oversized payload: {len(msg.data)} bytes > "
                                     f"{self.settings.max_payload_bytes}")
            message = decode(headers, msg.data, accepted)
            await handler(message, delivery)
            await delivery.ack()
            return "ack"
        except InvalidMessage as exc:
            span.set_status(Status(StatusCode.ERROR, "terminated"))
            span.set_attribute(ERROR_TYPE, "InvalidMessage")
            log.warning("message terminated to the dead-letter queue", subject=subject,
                        reason=str(exc), stream_seq=delivery.stream_seq)
            await delivery.term(str(exc))
            return "term"
        except Retry as exc:
            log.info("message redelivery requested", subject=subject, reason=str(exc), delay=exc.delay)
            await delivery.nak(exc.delay)
            return "nak"
        except asyncio.CancelledError:
            # The service is stopping and this handler outlived its grace period: hand the message
            # back now (a nak without delay), so JetStream redelivers it at once instead of after
            # its ack wait. The handler is idempotent: a redelivery may find its work half done.
            span.set_status(Status(StatusCode.ERROR, "handed back: the service stopped"))
            span.set_attribute(ERROR_TYPE, "shutdown")
            log.warning("service stopping: message handed back for redelivery", subject=subject,
                        stream_seq=delivery.stream_seq, attempt=delivery.num_delivered)
            with contextlib.suppress(Exception):
                # an explicit (tiny) delay: a bare NAK takes the consumer's backoff (60 s for tasks)
                await delivery.nak(_HAND_BACK_DELAY)
            return "nak"
        except Exception as exc:  # noqa: BLE001 - never crash the consumer
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            delay = _retry_delay(delivery.num_delivered)
            log.error("handler failed; message will be redelivered", subject=subject,
                      error=f"{type(exc).__name__}: {exc}", attempt=delivery.num_delivered, delay=delay)
            with contextlib.suppress(Exception):      # ack wait expiry redelivers anyway
                await delivery.nak(delay)
            return "nak"

    # ------------------------------------------------------------ request / reply
    async def serve(self, name: str, endpoints: Mapping[str, tuple[type[Message], _Endpoint]],
                    *, version: str = "0.1.0", description: str = "") -> nats.micro.service.Service:
        """Expose request/reply endpoints with ``nats.micro`` (one queue group: replicas share load).

        ``endpoints`` maps a subject to (request type, async handler returning the reply message).
        """
        # nats.micro's own default group, named: replicas of any version share requests
        group = nats.micro.service.DEFAULT_QUEUE_GROUP
        svc = await nats.micro.add_service(self.nc, name=name, version=version, description=description,
                                           queue_group=group)
        for subject, (request_cls, fn) in endpoints.items():
            await svc.add_endpoint(name=subject.rsplit(".", 1)[-1], subject=subject,
                                   handler=self._concurrent(self._endpoint_handler(subject, request_cls, fn, group)))
        self._micro.append(svc)
        return svc

    def _concurrent(self, handle: _RequestHandler, limit: int = 64) -> _RequestHandler:
        """nats.micro awaits each request before reading the next: run them as tasks instead,
        bounded, so one slow request does not stall the endpoint."""
        slots = asyncio.Semaphore(limit)

        def finished(task: asyncio.Task[None]) -> None:
            self._requests.discard(task)
            slots.release()

        async def spawn(req: Request) -> None:
            await slots.acquire()
            task = asyncio.create_task(handle(req))
            self._requests.add(task)
            task.add_done_callback(finished)

        return spawn

    def _endpoint_handler(self, subject: str, request_cls: type[Message], fn: _Endpoint,
                          group: str) -> _RequestHandler:
        accepted = _accepting(request_cls)
        route = _route(subject)

        async def handle(req: Request) -> None:
            """One request inside a CONSUMER span whose parent is the requester's context."""
            headers = req.headers or {}
            parent = extract_trace_context(headers)
            span = self._tracing.consumer(route.serve_name, parent,
                                          {**route.serve_attributes, MESSAGING_CONSUMER_GROUP_NAME: group})
            token = context.attach(trace.set_span_in_context(span, parent))
            outcome = "ok"
            try:
                bound = _bind_mission(baggage.get_baggage(MISSION_BAGGAGE_KEY, parent))
                try:
                    outcome = await self._answer(req, headers, accepted, fn, span, subject)
                finally:
                    _unbind_mission(bound)
            finally:
                context.detach(token)
                span.end()          # the reply is only queued for the flusher: this does not delay it
                _metric(metrics.BUS_REQUESTS, subject, "served", outcome).inc()

        return handle

    @staticmethod
    async def _answer(req: Request, headers: Mapping[str, str], accepted: Mapping[str, type[Message]],
                      fn: _Endpoint, span: Span, subject: str) -> str:
        """Decode, call the endpoint's function, respond (or respond with an error). Returns the outcome."""
        try:
            request = decode(headers, req.data, accepted)
            reply = await fn(request)
            await req.respond(reply.SerializeToString())     # one reply type per endpoint: no header needed
            return "ok"
        except InvalidMessage as exc:
            span.set_status(Status(StatusCode.ERROR, "invalid request"))
            log.warning("invalid request", subject=subject, reason=str(exc))
            await req.respond_error("400", str(exc))
            return "invalid"
        except Exception as exc:  # noqa: BLE001 - a handler's bug answers 500, it never kills the service
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            log.error("request handler failed", subject=subject, error=f"{type(exc).__name__}: {exc}")
            await req.respond_error("500", f"{type(exc).__name__}")
            return "error"

    async def request(self, subject: str, message: Message, reply_cls: type[M], *,
                      mission_id: str | None = None, timeout: float = 5.0) -> M:
        """Request/reply inside a PRODUCER span; a service error raises :class:`ServiceError`."""
        route = _route(subject)
        parent = _mission_context(mission_id)
        if parent is None:
            parent = context.get_current()
        span = self._tracing.producer(route.request_name, parent, route.request_attributes)
        headers = {HEADER_TYPE: type_name(message)}       # the mission travels in the baggage
        inject_trace_context(headers, span, parent)
        outcome = "ok"
        try:
            resp = await self.nc.request(subject, message.SerializeToString(), timeout=timeout, headers=headers)
            rh = resp.headers or {}
            if "Nats-Service-Error-Code" in rh:
                outcome = "error"
                raise ServiceError(rh["Nats-Service-Error-Code"], rh.get("Nats-Service-Error", ""))
            return decode(rh, resp.data, _accepting(reply_cls))
        except Exception as exc:
            if outcome == "ok":
                outcome = type(exc).__name__
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()
            _metric(metrics.BUS_REQUESTS, subject, "sent", outcome if outcome in ("ok", "error") else "failed").inc()

    # --------------------------------------------------------------- dead letters
    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters: the advisories captured in the DLQ stream, newest last."""
        info = await self.js.stream_info(topology.STREAM_DLQ)
        out: list[dict[str, Any]] = []
        last, first = info.state.last_seq, info.state.first_seq
        seq = last
        while seq >= first and seq > 0 and len(out) < limit:
            try:
                raw = await self.js.get_msg(topology.STREAM_DLQ, seq)
            except nats.js.errors.NotFoundError:
                seq -= 1
                continue
            out.append(_dead_letter_view(seq, raw.subject, raw.data))
            seq -= 1
        out.reverse()
        return out

    async def dead_letter(self, dlq_seq: int) -> dict[str, Any]:
        raw = await self.js.get_msg(topology.STREAM_DLQ, dlq_seq)
        return _dead_letter_view(dlq_seq, raw.subject, raw.data)

    async def replay(self, dlq_seq: int) -> dict[str, Any]:
        """Publish the original message again (fresh message id) and drop the dead letter."""
        entry = await self.dead_letter(dlq_seq)
        if entry["stream"] not in topology.WORK_STREAMS or entry["stream_seq"] <= 0:
            # only work messages are replayed: a forged advisory must not republish, say, a ledger entry
            raise LookupError(f"dead letter {dlq_seq} does not point at a work message")
        original = await self.js.get_msg(entry["stream"], entry["stream_seq"])
        if original.subject is None:    # a stored message always has one (nats-py types it optional)
            raise LookupError(f"dead letter {dlq_seq}: the original message has no subject")
        headers = dict(original.headers or {})
        headers[HEADER_MSG_ID] = f"{headers.get(HEADER_MSG_ID, 'msg')}-replay-{dlq_seq}"
        await self.js.publish(original.subject, original.data or b"", headers=headers)
        await self.js.delete_msg(topology.STREAM_DLQ, dlq_seq)
        metrics.BUS_MESSAGES.labels(topology.subject_template(original.subject), "replayed").inc()
        log.info("dead letter replayed", dlq_id=dlq_seq, subject=original.subject,
                 mission_id=headers.get(HEADER_MISSION))
        return {**entry, "subject": original.subject, "replayed": True}

    async def dlq_size(self) -> int:
        info = await self.js.stream_info(topology.STREAM_DLQ)
        return info.state.messages


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def _dead_letter_view(dlq_seq: int, advisory_subject: str | None, data: bytes | None) -> dict[str, Any]:
    """A DLQ entry from a captured advisory; anything may have been published on those subjects,
    so every field is coerced and the reason scrubbed."""
    try:
        adv = json.loads(data or b"{}")
    except ValueError:
        adv = {}
    if not isinstance(adv, dict):
        adv = {}
    terminated = advisory_subject is not None and advisory_subject.startswith(topology.ADVISORY_TERMINATED)
    kind = "terminated" if terminated else "max_deliveries"
    reason = adv.get("reason") or ("max deliveries reached" if kind == "max_deliveries" else "terminated")
    return {
        "dlq_id": dlq_seq,
        "kind": kind,
        "stream": str(adv.get("stream", ""))[:64],
        "consumer": str(adv.get("consumer", ""))[:64],
        "stream_seq": _int(adv.get("stream_seq", 0)),
        "deliveries": _int(adv.get("deliveries", 0)),
        "reason": scrub_text(str(reason))[:500],
        "at": str(adv.get("timestamp", ""))[:64],
    }

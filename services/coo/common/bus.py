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
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
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
from nats.js.kv import KeyValue
from nats.micro.request import Request
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from coo.common import metrics, topology
from coo.common.config import CommonSettings
from coo.common.telemetry import get_logger

log = get_logger("coo.bus")

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_TYPE = "Coo-Type"
HEADER_MISSION = "Coo-Mission-Id"
MISSION_BAGGAGE_KEY = "mission.id"

M = TypeVar("M", bound=Message)


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
        cls = accepted.get(name)
        if cls is None:
            raise InvalidMessage(f"unknown message type {name!r}")
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


@dataclass
class Delivery:
    """One JetStream delivery and the verbs a handler may use on it."""

    msg: Msg
    subject: str
    template: str
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
            reason = " ".join(reason.split())[:256]
            await self.msg._client.publish(self.msg.reply, b"+TERM " + reason.encode())

    async def in_progress(self) -> None:
        await self.msg.in_progress()


Handler = Callable[[Any, Delivery], Awaitable[None]]


def _retry_delay(num_delivered: int) -> float:
    return min(30.0, 0.5 * (2 ** max(0, num_delivered - 1)))


class Bus:
    def __init__(self, nc: NATS, service: str, settings: CommonSettings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.settings = settings
        self._tracer = trace.get_tracer("coo.bus")
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._micro: list[nats.micro.Service] = []
        self._closing = asyncio.Event()
        self._requests: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ connection
    @classmethod
    async def connect(cls, service: str, settings: CommonSettings | None = None, *,
                      servers: list[str] | None = None, connect_timeout: float = 5.0) -> "Bus":
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
        nc = await nats.connect(
            servers=servers or settings.nats_servers(), name=service,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=connect_timeout,
            allow_reconnect=True, error_cb=error_cb, disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb, closed_cb=closed_cb, **options,
        )
        bus = cls(nc, service, settings)
        bus._closing = closing
        return bus

    async def close(self) -> None:
        """Stop consumers and endpoints, let in-flight handlers finish, drain the connection."""
        self._stop.set()
        self._closing.set()
        for svc in self._micro:
            try:
                await svc.stop()
            except Exception:  # noqa: BLE001
                pass
        if self._tasks or self._requests:
            await asyncio.gather(*self._tasks, *self._requests, return_exceptions=True)
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001
                await self.nc.close()

    # -------------------------------------------------------------------- topology
    async def ensure_topology(self) -> None:
        for config in topology.streams(self.settings):
            await self._ensure_stream(config)
        for spec in topology.consumers().values():
            await self.js.add_consumer(spec.stream, config=spec.config)
        for config in topology.buckets():
            await self._ensure_bucket(config)

    async def _ensure_stream(self, config) -> None:
        try:
            await self.js.add_stream(config=config)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(config=config)

    async def _ensure_bucket(self, config) -> None:
        try:
            await self.js.create_key_value(config=config)
        except nats.js.errors.BadRequestError:
            await self.js.key_value(config.bucket)

    async def kv(self, bucket: str) -> KeyValue:
        return await self.js.key_value(bucket)

    # --------------------------------------------------------------------- publish
    def _headers(self, message: Message, msg_id: str, mission_id: str | None, ctx) -> dict[str, str]:
        headers = {HEADER_MSG_ID: msg_id, HEADER_TYPE: type_name(message)}
        if mission_id:
            headers[HEADER_MISSION] = mission_id
        propagate.inject(headers, context=ctx)
        return headers

    async def publish(self, subject: str, message: Message, *, msg_id: str | None = None,
                      mission_id: str | None = None, timeout: float = 5.0):
        """Publish to JetStream and wait for the stream's ack. ``msg_id`` makes retries idempotent."""
        template = topology.subject_template(subject)
        msg_id = msg_id or uuid.uuid4().hex
        parent = _mission_context(mission_id)
        span = self._tracer.start_span(
            f"send {template}", context=parent, kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats", "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": subject, "messaging.destination.template": template,
                "messaging.message.id": msg_id,
            },
        )
        ctx = trace.set_span_in_context(span, parent)
        data = message.SerializeToString()
        span.set_attribute("messaging.message.body.size", len(data))
        try:
            ack = await self.js.publish(subject, data, headers=self._headers(message, msg_id, mission_id, ctx),
                                        timeout=timeout)
            if ack.duplicate:
                span.set_attribute("coo.messaging.duplicate", True)
            metrics.BUS_MESSAGES.labels(template, "published").inc()
            return ack
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            metrics.BUS_MESSAGES.labels(template, "publish_error").inc()
            raise
        finally:
            span.end()

    # --------------------------------------------------------------------- consume
    def consume(self, consumer: str, handler: Handler, accepted: list[type[Message]], *,
                concurrency: int = 8, fetch_timeout: float = 1.0) -> asyncio.Task:
        """Start a pull loop on a durable consumer of ``topology``; returns its task."""
        spec = topology.consumers()[consumer]
        accepted_map = {type_name(cls): cls for cls in accepted}
        metrics.BUS_REDELIVERIES.labels(topology.subject_template(spec.config.filter_subject))  # exported from 0
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
        inflight: set[asyncio.Task] = set()
        sub = None
        failures = 0
        while not self._stop.is_set():
            try:
                if sub is None:
                    sub = await self.js.pull_subscribe_bind(spec.name, stream=spec.stream)
                free = max(1, concurrency - len(inflight))
                try:
                    msgs = await sub.fetch(free, timeout=fetch_timeout)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    failures = 0
                    continue
                failures = 0
                for msg in msgs:
                    await slots.acquire()
                    t = asyncio.create_task(self._handle(msg, handler, accepted))
                    inflight.add(t)
                    t.add_done_callback(lambda done: (inflight.discard(done), slots.release()))
            except asyncio.CancelledError:
                break
            except Exception as exc:  # noqa: BLE001 - a consumer loop never dies of one error
                failures += 1
                clog.warning("consumer fetch failed; rebinding", error=str(exc) or type(exc).__name__,
                             failures=failures)
                if sub is not None:
                    try:
                        await sub.unsubscribe()
                    except Exception:  # noqa: BLE001
                        pass
                sub = None
                await asyncio.sleep(min(5.0, 0.2 * failures))
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001
                pass

    async def _handle(self, msg: Msg, handler: Handler, accepted: Mapping[str, type[Message]]) -> None:
        subject = msg.subject
        template = topology.subject_template(subject)
        headers = msg.headers or {}
        parent = propagate.extract(headers)
        mission_id = headers.get(HEADER_MISSION)
        delivery = Delivery(msg, subject, template)
        span = self._tracer.start_span(
            f"process {template}", context=parent, kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats", "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": subject, "messaging.destination.template": template,
                "messaging.message.id": headers.get(HEADER_MSG_ID, ""),
                "messaging.message.body.size": len(msg.data),
            },
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        started = time.perf_counter()
        outcome = "ack"
        try:
            with structlog.contextvars.bound_contextvars(mission_id=mission_id) if mission_id else contextlib.nullcontext():
                try:
                    if msg.metadata.num_delivered > 1:
                        metrics.BUS_REDELIVERIES.labels(template).inc()
                        span.set_attribute("messaging.nats.delivered_count", msg.metadata.num_delivered)
                    if len(msg.data) > self.settings.max_payload_bytes:
                        raise InvalidMessage(f"oversized payload: {len(msg.data)} bytes > "
                                             f"{self.settings.max_payload_bytes}")
                    message = decode(headers, msg.data, accepted)
                    await handler(message, delivery)
                    await delivery.ack()
                except InvalidMessage as exc:
                    outcome = "term"
                    span.set_status(Status(StatusCode.ERROR, "terminated"))
                    span.set_attribute("error.type", "InvalidMessage")
                    log.warning("message terminated to the dead-letter queue", subject=subject,
                                reason=str(exc), stream_seq=delivery.stream_seq)
                    await delivery.term(str(exc))
                except Retry as exc:
                    outcome = "nak"
                    log.info("message redelivery requested", subject=subject, reason=str(exc), delay=exc.delay)
                    await delivery.nak(exc.delay)
                except Exception as exc:  # noqa: BLE001 - never crash the consumer
                    outcome = "nak"
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.set_attribute("error.type", type(exc).__qualname__)
                    delay = _retry_delay(delivery.num_delivered)
                    log.error("handler failed; message will be redelivered", subject=subject,
                              error=f"{type(exc).__name__}: {exc}", attempt=delivery.num_delivered, delay=delay)
                    try:
                        await delivery.nak(delay)
                    except Exception:  # noqa: BLE001 - ack wait expiry redelivers anyway
                        pass
        finally:
            context.detach(token)
            span.end()
            metrics.BUS_MESSAGES.labels(template, outcome).inc()
            metrics.BUS_PROCESS_SECONDS.labels(template).observe(time.perf_counter() - started)

    # ------------------------------------------------------------ request / reply
    async def serve(self, name: str, endpoints: Mapping[str, tuple[type[Message], Callable[[Any], Awaitable[Message]]]],
                    *, version: str = "0.1.0", description: str = "") -> nats.micro.Service:
        """Expose request/reply endpoints with ``nats.micro`` (one queue group: replicas share load).

        ``endpoints`` maps a subject to (request type, async handler returning the reply message).
        """
        svc = await nats.micro.add_service(self.nc, name=name, version=version, description=description)
        for subject, (request_cls, fn) in endpoints.items():
            await svc.add_endpoint(name=subject.rsplit(".", 1)[-1], subject=subject,
                                   handler=self._concurrent(self._endpoint_handler(subject, request_cls, fn)))
        self._micro.append(svc)
        return svc

    def _concurrent(self, handle, limit: int = 64):
        """nats.micro awaits each request before reading the next: run them as tasks instead,
        bounded, so one slow request does not stall the endpoint."""
        slots = asyncio.Semaphore(limit)

        async def spawn(req: Request) -> None:
            await slots.acquire()
            task = asyncio.create_task(handle(req))
            self._requests.add(task)
            task.add_done_callback(lambda t: (self._requests.discard(t), slots.release()))

        return spawn

    def _endpoint_handler(self, subject: str, request_cls: type[Message], fn):
        accepted = {type_name(request_cls): request_cls}

        async def handle(req: Request) -> None:
            headers = req.headers or {}
            parent = propagate.extract(headers)
            span = self._tracer.start_span(
                f"process {subject}", context=parent, kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "nats", "messaging.operation.type": "process",
                            "messaging.operation.name": "process", "messaging.destination.name": subject},
            )
            token = context.attach(trace.set_span_in_context(span, parent))
            outcome = "ok"
            try:
                mission_id = headers.get(HEADER_MISSION)
                with structlog.contextvars.bound_contextvars(mission_id=mission_id) if mission_id else contextlib.nullcontext():
                    try:
                        request = decode(headers, req.data, accepted)
                        reply = await fn(request)
                        await req.respond(reply.SerializeToString(), headers={HEADER_TYPE: type_name(reply)})
                    except InvalidMessage as exc:
                        outcome = "invalid"
                        span.set_status(Status(StatusCode.ERROR, "invalid request"))
                        log.warning("invalid request", subject=subject, reason=str(exc))
                        await req.respond_error("400", str(exc))
                    except Exception as exc:  # noqa: BLE001
                        outcome = "error"
                        span.record_exception(exc)
                        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                        log.error("request handler failed", subject=subject, error=f"{type(exc).__name__}: {exc}")
                        await req.respond_error("500", f"{type(exc).__name__}")
            finally:
                context.detach(token)
                span.end()
                metrics.BUS_REQUESTS.labels(subject, "served", outcome).inc()

        return handle

    async def request(self, subject: str, message: Message, reply_cls: type[M], *,
                      mission_id: str | None = None, timeout: float = 5.0) -> M:
        parent = _mission_context(mission_id)
        if parent is None:
            parent = context.get_current()
        span = self._tracer.start_span(
            f"send {subject}", context=parent, kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.operation.type": "send",
                        "messaging.operation.name": "send", "messaging.destination.name": subject},
        )
        ctx = trace.set_span_in_context(span, parent)
        headers = {HEADER_TYPE: type_name(message)}
        if mission_id:
            headers[HEADER_MISSION] = mission_id
        propagate.inject(headers, context=ctx)
        outcome = "ok"
        try:
            resp = await self.nc.request(subject, message.SerializeToString(), timeout=timeout, headers=headers)
            rh = resp.headers or {}
            if "Nats-Service-Error-Code" in rh:
                outcome = "error"
                raise ServiceError(rh["Nats-Service-Error-Code"], rh.get("Nats-Service-Error", ""))
            return decode(rh, resp.data, {type_name(reply_cls): reply_cls})
        except Exception as exc:
            if outcome == "ok":
                outcome = type(exc).__name__
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()
            metrics.BUS_REQUESTS.labels(subject, "sent", outcome if outcome in ("ok", "error") else "failed").inc()

    # --------------------------------------------------------------- dead letters
    async def dead_letters(self, limit: int = 100) -> list[dict]:
        """The newest dead letters: the advisories captured in the DLQ stream, newest last."""
        info = await self.js.stream_info(topology.STREAM_DLQ)
        out: list[dict] = []
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

    async def dead_letter(self, dlq_seq: int) -> dict:
        raw = await self.js.get_msg(topology.STREAM_DLQ, dlq_seq)
        return _dead_letter_view(dlq_seq, raw.subject, raw.data)

    async def replay(self, dlq_seq: int) -> dict:
        """Publish the original message again (fresh message id) and drop the dead letter."""
        entry = await self.dead_letter(dlq_seq)
        original = await self.js.get_msg(entry["stream"], entry["stream_seq"])
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


def _dead_letter_view(dlq_seq: int, advisory_subject: str, data: bytes | None) -> dict:
    try:
        adv = json.loads(data or b"{}")
    except ValueError:
        adv = {}
    kind = "terminated" if advisory_subject.startswith(topology.ADVISORY_TERMINATED) else "max_deliveries"
    return {
        "dlq_id": dlq_seq,
        "kind": kind,
        "stream": adv.get("stream", ""),
        "consumer": adv.get("consumer", ""),
        "stream_seq": adv.get("stream_seq", 0),
        "deliveries": adv.get("deliveries", 0),
        "reason": adv.get("reason") or ("max deliveries reached" if kind == "max_deliveries" else "terminated"),
        "at": adv.get("timestamp", ""),
    }

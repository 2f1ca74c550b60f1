"""The bus against a real nats-server: tracing across a hop, dedup, dead letters, request/reply."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from opentelemetry.trace import SpanKind

from coo.common import topology
from coo.common.bus import HEADER_MSG_ID, Bus, InvalidMessage, ServiceError
from coo.common.config import CommonSettings


@pytest.fixture
async def bus(nats_server):
    settings = CommonSettings(nats_url=nats_server.url, max_payload_bytes=2048)
    b = await Bus.connect("test", settings)
    await b.ensure_topology()
    try:
        yield b
    finally:
        await b.close()


async def _wait_for(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def _dead_letters(bus, n, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        letters = await bus.dead_letters()
        if len(letters) >= n or asyncio.get_running_loop().time() > deadline:
            return letters
        await asyncio.sleep(0.05)


async def test_topology_is_idempotent(bus):
    await bus.ensure_topology()  # a second service starting must not fail
    names = {s.config.name for s in [await bus.js.stream_info(n) for n in (
        topology.STREAM_TASKS, topology.STREAM_DLQ, topology.STREAM_TIMELINE)]}
    assert names == {topology.STREAM_TASKS, topology.STREAM_DLQ, topology.STREAM_TIMELINE}
    kv = await bus.kv(topology.BUCKET_MISSIONS)
    await kv.put("k", b"v")


async def test_hop_is_one_trace_with_producer_parent(bus, spans):
    got: list[tuple[str, dict]] = []

    async def handler(message, delivery):
        got.append((message.value, dict(delivery.headers)))

    bus.consume("orchestrator-control", handler, [StringValue])
    subject = topology.control_subject("m-1")
    await bus.publish(subject, StringValue(value="hello"), msg_id="id-1", mission_id="m-1")
    await _wait_for(lambda: got)

    value, headers = got[0]
    assert value == "hello"
    assert headers[HEADER_MSG_ID] == "id-1"
    assert headers["traceparent"].startswith("00-")
    assert "mission.id=m-1" in headers["baggage"]

    await _wait_for(lambda: any(s.kind == SpanKind.CONSUMER for s in spans.get_finished_spans()))
    finished = spans.get_finished_spans()
    producer = next(s for s in finished if s.kind == SpanKind.PRODUCER)
    consumer = next(s for s in finished if s.kind == SpanKind.CONSUMER)
    assert producer.name == "send coo.control.{mission_id}"
    assert consumer.name == "process coo.control.{mission_id}"
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.context.trace_id == producer.context.trace_id
    for span in (producer, consumer):
        assert span.attributes["messaging.system"] == "nats"
        assert span.attributes["messaging.destination.name"] == subject
        assert span.attributes["messaging.message.id"] == "id-1"
        assert span.attributes["mission.id"] == "m-1"


async def test_a_message_after_an_idle_spell_is_handled_at_once(bus):
    """After a fetch timed out on an idle consumer, nats-py's fetch(n > 1) left the next pull
    request open on the server once it had returned a message; the message after that landed on
    the stale request and the fetch waiting for "the rest of its batch" held it until that
    request expired (up to the fetch timeout: 0.1-0.9 s late on 4 in 40 idle deliveries)."""
    handled: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def handler(message, delivery):
        handled[message.value] = loop.time()

    fetch_timeout = 2.0
    start = loop.time()
    bus.consume("orchestrator-control", handler, [StringValue], fetch_timeout=fetch_timeout)
    subject = topology.control_subject("m-idle")
    await asyncio.sleep(fetch_timeout + 0.3)        # the first fetch timed out; a second one waits
    for value in ("a", "b", "c"):
        sent = loop.time()
        await bus.publish(subject, StringValue(value=value), msg_id=f"idle-{value}")
        await _wait_for(lambda value=value: value in handled, timeout=10)
        assert handled[value] - sent < 0.7, f"{value} waited {handled[value] - sent:.2f} s " \
                                            f"({handled[value] - start:.2f} s after the consumer started)"
        await asyncio.sleep(0.3)


async def test_duplicate_msg_id_is_delivered_once(bus):
    got: list[str] = []

    async def handler(message, delivery):
        got.append(message.value)

    subject = topology.control_subject("m-2")
    first = await bus.publish(subject, StringValue(value="once"), msg_id="same")
    second = await bus.publish(subject, StringValue(value="once"), msg_id="same")
    assert not first.duplicate and second.duplicate
    bus.consume("orchestrator-control", handler, [StringValue])
    await _wait_for(lambda: got)
    await asyncio.sleep(0.3)
    assert got == ["once"]


async def test_poison_message_lands_in_dlq_and_consumer_keeps_serving(bus):
    got: list[str] = []

    async def handler(message, delivery):
        got.append(message.value)

    bus.consume("orchestrator-control", handler, [StringValue])
    subject = topology.control_subject("m-3")
    await bus.js.publish(subject, b"\xff\xff\xff\xff garbage",
                         headers={"Coo-Type": "google.protobuf.StringValue", HEADER_MSG_ID: "poison"})
    await bus.js.publish(subject, b"x", headers={"Coo-Type": "coo.v1.NoSuchThing", HEADER_MSG_ID: "unknown"})
    await bus.js.publish(subject, b"y" * 3000, headers={"Coo-Type": "google.protobuf.StringValue",
                                                       HEADER_MSG_ID: "big"})
    await bus.publish(subject, StringValue(value="after"), msg_id="good")
    await _wait_for(lambda: got == ["after"])

    letters = await _dead_letters(bus, 3)
    reasons = [entry["reason"] for entry in letters]
    assert len(letters) == 3, letters
    assert any(r.startswith("undecodable google.protobuf.StringValue") for r in reasons), reasons
    assert any("unknown message type 'coo.v1.NoSuchThing'" in r for r in reasons), reasons
    assert any(r.startswith("oversized payload") for r in reasons), reasons
    assert all(e["kind"] == "terminated" and e["stream"] == topology.STREAM_CONTROL for e in letters)
    assert await bus.dlq_size() == 3


async def test_handler_error_is_retried_then_dead_lettered_and_replayed(bus):
    attempts: list[int] = []
    fail = {"on": True}

    async def handler(message, delivery):
        attempts.append(delivery.num_delivered)
        if fail["on"]:
            raise RuntimeError("transient")

    # a consumer with few deliveries and no backoff, so the test is quick
    spec = topology.consumers()["orchestrator-control"]
    spec.config.max_deliver = 2
    spec.config.backoff = None
    spec.config.ack_wait = 1
    await bus.js.add_consumer(spec.stream, config=spec.config)
    try:
        bus.consume("orchestrator-control", handler, [StringValue])
        await bus.publish(topology.control_subject("m-4"), StringValue(value="retry me"), msg_id="r1")
        letters = await _dead_letters(bus, 1, timeout=15)
        assert attempts[:2] == [1, 2]
        assert letters[0]["kind"] == "max_deliveries" and letters[0]["deliveries"] == 2

        fail["on"] = False
        before = len(attempts)
        replayed = await bus.replay(letters[0]["dlq_id"])
        assert replayed["replayed"] and replayed["subject"] == topology.control_subject("m-4")
        await _wait_for(lambda: len(attempts) > before)
        assert await bus.dlq_size() == 0
    finally:
        spec.config.max_deliver, spec.config.backoff, spec.config.ack_wait = 5, None, 30


async def test_request_reply_over_micro(bus, spans):
    async def double(request: Int64Value) -> Int64Value:
        if request.value < 0:
            raise InvalidMessage("negative")
        return Int64Value(value=request.value * 2)

    await bus.serve("calc", {"coo.test.double": (Int64Value, double)})
    reply = await bus.request("coo.test.double", Int64Value(value=21), Int64Value, mission_id="m-5")
    assert reply.value == 42
    with pytest.raises(ServiceError) as err:
        await bus.request("coo.test.double", Int64Value(value=-1), Int64Value)
    assert err.value.code == "400" and "negative" in err.value.description

    server = [s for s in spans.get_finished_spans() if s.name == "process coo.test.double"]
    client = [s for s in spans.get_finished_spans() if s.name == "send coo.test.double"]
    assert server and client
    assert server[0].parent.span_id == client[0].context.span_id
    assert server[0].attributes["mission.id"] == "m-5"


def test_metrics_endpoint_speaks_prometheus_and_openmetrics():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from coo.common.service import add_ops_routes
    from coo.sandbox import metrics

    metrics.SANDBOX_SECONDS.labels("test").observe(0.5, {"trace_id": "a" * 32})
    app = FastAPI()
    add_ops_routes(app, {}, "test")
    client = TestClient(app)
    text = client.get("/metrics")
    assert text.status_code == 200 and "coo_sandbox_run_duration_seconds_bucket" in text.text
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"})
    assert om.status_code == 200 and om.headers["content-type"].startswith("application/openmetrics-text")
    assert 'trace_id="' + "a" * 32 + '"' in om.text and om.text.rstrip().endswith("# EOF")

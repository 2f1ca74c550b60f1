"""Declare the bus topology (``coo.common.topology``): streams, durable consumers, KV buckets.

Idempotent, so any service can start first. With a service's own NATS user only its own part
(:data:`coo.common.topology.SCOPES`): it may not create what it does not own, so it declares its own
streams, consumers and buckets and waits for the streams it only uses (the orchestrator declares
those). Without a user, or as a user outside the table (admin), all of it.

A stream or bucket that exists with another replica count is scaled to ``COO_NATS_REPLICAS``
(nats-server moves the copies; the data stays): that is how a single server's state grows into a
cluster's, see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.client import JetStreamContext

from coo.common import topology as T
from coo.common.config import CommonSettings
from coo.common.telemetry import get_logger

log = get_logger("coo.bus")


async def declare(js: JetStreamContext, settings: CommonSettings, *, wait_seconds: float = 120.0,
                  poll: float = 0.25) -> None:
    """The part of the topology this connection's user declares (all of it without a scope)."""
    scope = T.SCOPES.get(settings.nats_user or "")
    if scope is None:
        scope = T.Scope(streams=T.ALL_STREAMS, consumers=tuple(T.consumers()),
                        buckets=tuple(b.bucket for b in T.buckets()))
    await _wait_for_jetstream(js, wait_seconds, poll)
    await _wait_for_streams(js, scope.waits_for, settings.nats_user, wait_seconds, poll)
    for config in T.streams(settings):
        if config.name in scope.streams:
            await ensure_stream(js, config)
    specs = T.consumers()
    for name in scope.consumers:
        await js.add_consumer(specs[name].stream, config=specs[name].config)
    for bucket in T.buckets(settings):
        if bucket.bucket in scope.buckets:
            await ensure_bucket(js, bucket)


async def _wait_for_jetstream(js: JetStreamContext, wait_seconds: float, poll: float) -> None:
    """A cluster answers JetStream requests once its meta group has elected a leader (seconds
    after its servers start): until then ``503 JetStream system temporarily unavailable``."""
    deadline = time.monotonic() + wait_seconds
    said = False
    while True:
        try:
            await js.account_info()
            return
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"JetStream did not become available within {wait_seconds:.0f}s: {exc}") from exc
            if not said:
                log.info("waiting for JetStream (a cluster electing its leader)", error=str(exc) or type(exc).__name__)
                said = True
            await asyncio.sleep(poll)


async def _wait_for_streams(js: JetStreamContext, streams: tuple[str, ...], user: str | None,
                            wait_seconds: float, poll: float) -> None:
    deadline = time.monotonic() + wait_seconds
    for stream in streams:
        said = False
        while True:
            try:
                await js.stream_info(stream)
                break
            except (TimeoutError, nats.js.errors.NotFoundError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"stream {stream} was not declared within {wait_seconds:.0f}s "
                                       "(the orchestrator declares the streams: is it running?)") from None
                if not said:
                    log.info("waiting for a stream the orchestrator declares", stream=stream, user=user)
                    said = True
                await asyncio.sleep(poll)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to ``config`` (replicas included)."""
    try:
        await js.add_stream(config=config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config=config)


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> None:
    """Create the bucket; one that exists keeps its settings, but its replica count and whether it
    allows direct gets (only unreplicated, see ``topology.buckets``) follow ``config``."""
    try:
        await js.create_key_value(config=config)
        return
    except nats.js.errors.BadRequestError:
        pass
    stream = T.bucket_stream(config.bucket)
    info = await js.stream_info(stream)
    want = config.replicas or 1
    direct = bool(config.direct)
    if (info.config.num_replicas or 1) != want or bool(info.config.allow_direct) != direct:
        log.info("scaling a bucket to the configured replicas", bucket=config.bucket,
                 replicas_before=info.config.num_replicas or 1, replicas=want, direct_get=direct)
        await js.update_stream(config=info.config.evolve(num_replicas=want, allow_direct=direct))

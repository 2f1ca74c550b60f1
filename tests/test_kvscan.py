"""A KV snapshot that holds when nats-py's end-of-values marker overtakes the values."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import KeyValueConfig

from coo.common import kvscan


@pytest.fixture
async def bucket(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="scan", history=1))
    try:
        yield js, kv
    finally:
        await nc.close()


class _MarkerFirst:
    """The real watcher, its marker moved ahead of the values, which then come a moment later."""

    def __init__(self, watcher) -> None:
        self.watcher = watcher
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._reorder())

    async def _reorder(self) -> None:
        held = []
        while True:
            entry = await self.watcher.updates(timeout=None)
            if entry is None:
                await self.queue.put(None)
                await asyncio.sleep(0.2)
                for e in held:
                    await self.queue.put(e)
                break
            held.append(entry)
        while True:
            await self.queue.put(await self.watcher.updates(timeout=None))

    async def updates(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def stop(self) -> None:
        self.task.cancel()
        await self.watcher.stop()


async def test_latest_values_deletes_left_out_and_prefix_respected(bucket):
    js, kv = bucket
    assert await kvscan.latest(js, kv) == []
    for i in range(5):
        await kv.put(f"res.{i}", b"v%d" % i)
    await kv.put("res.1", b"again")
    await kv.delete("res.2")
    await kv.put("day.x", b"d")
    got = {e.key: e.value for e in await kvscan.latest(js, kv, "res.>")}
    assert got == {"res.0": b"v0", "res.1": b"again", "res.3": b"v3", "res.4": b"v4"}
    assert await kvscan.latest(js, kv, "month.>") == []


async def test_a_marker_ahead_of_the_values_is_not_taken_for_an_empty_bucket(bucket, monkeypatch):
    js, kv = bucket
    for i in range(30):
        await kv.put(f"res.{i}", b"x")
    await kv.put("day.x", b"d")
    real_watch = type(kv).watch

    async def marker_first(self, *args, **kw):
        return _MarkerFirst(await real_watch(self, *args, **kw))

    monkeypatch.setattr(type(kv), "watch", marker_first)
    assert len(await kvscan.latest(js, kv, "res.>")) == 30
    assert len(await kvscan.latest(js, kv)) == 31
    assert await kvscan.latest(js, kv, "month.>") == []

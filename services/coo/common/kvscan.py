"""A snapshot of a KV bucket's latest values that does not trust the end-of-values marker alone.

nats-py's watcher (and ``KeyValue.keys()``, built on it) puts its "no more initial values" marker
first when the consumer's info reply reports nothing pending before the client has counted any of the
pushed messages — which happens when the reply overtakes them on the connection. A snapshot that
stops at that marker sees an empty bucket. Here a marker that comes before any value is checked
against the stream (does anything match the prefix?); if something does, the snapshot ends at the
value the server sent with nothing pending after it.
"""

from __future__ import annotations

import nats.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue


async def latest(js: JetStreamContext, kv: KeyValue, prefix: str = ">", *,
                 idle_timeout: float = 5.0) -> list[KeyValue.Entry]:
    """The latest value of every key under ``prefix`` (deleted and purged keys left out)."""
    found: dict[str, KeyValue.Entry] = {}
    marker_seen = False
    delivered = 0
    watcher = await kv.watch(prefix, inactive_threshold=30)
    try:
        while True:
            try:
                # nats-py leaves KeyWatcher.updates/stop unannotated
                entry = await watcher.updates(timeout=idle_timeout)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                break
            if entry is None:
                marker_seen = True
                if delivered or not await _holds(js, kv, prefix):
                    break
                continue
            delivered += 1
            if entry.operation in (KV_DEL, KV_PURGE):
                found.pop(entry.key, None)
            else:
                found[entry.key] = entry
            if marker_seen and entry.delta == 0:
                break
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # unannotated in nats-py
    return list(found.values())


async def _holds(js: JetStreamContext, kv: KeyValue, prefix: str) -> bool:
    """Whether the bucket's stream holds any message for a key under ``prefix``."""
    status = await kv.status()
    # a bucket's stream is KV_<bucket> (nats-py types the config's name as optional)
    stream = status.stream_info.config.name or f"KV_{status.bucket}"
    info = await js.stream_info(stream,
                                subjects_filter=f"$KV.{status.bucket}.{prefix}")
    return bool(info.state.subjects)

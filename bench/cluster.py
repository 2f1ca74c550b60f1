"""What R3 costs: the write path on a three-node NATS cluster (R3) against one server (R1).

The writes COO makes on every hop: a JetStream publish acknowledged by the stream (a task, a result)
and a KV compare-and-set update (a mission record, a budget reservation). Each is measured one at a
time (latency: what one mission waits) and with 16 in flight (throughput: what a busy system gets),
on a single ``nats-server`` at R1 and on a cluster of three on the same loopback at R3, in
alternating rounds. A replicated write is acknowledged once a majority of the replicas stored it:
one extra round trip between servers, and three copies on disk.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import nats

from bench.common import Config, Result, median, percentile, ratio

TITLE = "NATS cluster: R3 on three servers vs R1 on one (publish, KV compare-and-set)"
PAYLOAD = b"x" * 2048
IN_FLIGHT = 16


async def _measure(urls: list[str], replicas: int, n: int) -> dict[str, float]:
    nc = await nats.connect(urls)
    js = nc.jetstream()
    try:
        await js.add_stream(name="BENCH", subjects=["bench.>"], num_replicas=replicas)
        kv = await js.create_key_value(bucket="bench", history=1, replicas=replicas)
        for _ in range(20):   # warm up (leaders elected, connections up)
            await js.publish("bench.w", PAYLOAD)
        out: dict[str, float] = {}

        lat = []
        for _ in range(n):
            t = time.perf_counter()
            await js.publish("bench.one", PAYLOAD)
            lat.append(time.perf_counter() - t)
        out["publish_p50_ms"] = median(lat) * 1e3
        out["publish_p99_ms"] = percentile(lat, 99) * 1e3

        revs = {k: await kv.put(f"k{k}", PAYLOAD) for k in range(IN_FLIGHT)}
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            revs[0] = await kv.update("k0", PAYLOAD, last=revs[0])
            lat.append(time.perf_counter() - t)
        out["cas_p50_ms"] = median(lat) * 1e3
        out["cas_p99_ms"] = percentile(lat, 99) * 1e3

        async def publisher(count: int) -> None:
            for _ in range(count):
                await js.publish("bench.many", PAYLOAD)

        t = time.perf_counter()
        await asyncio.gather(*(publisher(n // IN_FLIGHT + 1) for _ in range(IN_FLIGHT)))
        out["publish_per_s"] = (n // IN_FLIGHT + 1) * IN_FLIGHT / (time.perf_counter() - t)

        async def updater(k: int, count: int) -> None:
            for _ in range(count):
                revs[k] = await kv.update(f"k{k}", PAYLOAD, last=revs[k])

        t = time.perf_counter()
        await asyncio.gather(*(updater(k, n // IN_FLIGHT + 1) for k in range(IN_FLIGHT)))
        out["cas_per_s"] = (n // IN_FLIGHT + 1) * IN_FLIGHT / (time.perf_counter() - t)
        await js.delete_stream("BENCH")
        await js.delete_key_value("bench")
        return out
    finally:
        await nc.close()


def run(cfg: Config) -> Result:
    from tests.natsserver import NatsCluster, NatsServer

    res = Result("cluster", TITLE)
    n = cfg.n(2000, 100)
    rounds = cfg.n(3, 1)
    root = Path(tempfile.mkdtemp(prefix="cluster-", dir=cfg.work_dir))
    single = NatsServer(data_dir=root / "single").start()
    cluster = NatsCluster(root / "cluster", size=3).start()
    samples: dict[str, list[dict[str, float]]] = {"r1": [], "r3": []}
    try:
        for _ in range(rounds):
            samples["r1"].append(asyncio.run(_measure([single.url], 1, n)))
            samples["r3"].append(asyncio.run(_measure(cluster.urls, 3, n)))
    finally:
        single.cleanup()
        cluster.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    def mid(side: str, key: str) -> float:
        return median([s[key] for s in samples[side]])

    res.details = {side: {k: round(mid(side, k), 3) for k in samples[side][0]} for side in samples}
    for key, what in (("publish_p50_ms", "JetStream publish, one at a time, p50"),
                      ("cas_p50_ms", "KV compare-and-set, one at a time, p50")):
        r1, r3 = mid("r1", key), mid("r3", key)
        res.add(what, r3, r1, "ms", ratio(r3, r1), ratio_label="R3 / R1 (latency)", baseline_label="R1, one server",
                higher_is_better=False,
                note=f"p99 {mid('r3', key.replace('p50', 'p99')):.2f} ms at R3, "
                     f"{mid('r1', key.replace('p50', 'p99')):.2f} ms at R1")
    for key, what in (("publish_per_s", f"JetStream publish, {IN_FLIGHT} in flight"),
                      ("cas_per_s", f"KV compare-and-set, {IN_FLIGHT} keys in flight")):
        r1, r3 = mid("r1", key), mid("r3", key)
        res.add(what, r3, r1, "ops/s", ratio(r3, r1), ratio_label="R3 / R1 (throughput)",
                baseline_label="R1, one server")
    res.notes.append(f"{n} writes of 2 KB per measurement, median of {rounds} alternating rounds; three servers "
                     "and the client share this machine's cores, so the R3 figures include the two extra "
                     "servers' CPU as well as the round trip between them")
    return res

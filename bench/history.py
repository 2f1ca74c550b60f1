"""Mission history: what a read costs with 1k, 10k and 100k finished missions in the bucket.

The orchestrator reads its history through an index kept from a KV watch
(``coo.orchestrator.history``), never by scanning every key. This measures, on a real nats-server
with the ``coo_missions`` bucket holding N finished missions (realistic ``Mission`` protobufs: tasks,
a workspace of the mock LLM's catalog, its versions, the last sandbox run; 4-8.5 KB each) and a few live ones, with an
``Engine`` started on it as the orchestrator starts it:

* list: the first page of 50 (``Engine.list_missions`` and the API's JSON view of each);
* get one: a random mission by id, and its view;
* admission: ``Engine.check_admission`` (the live count and the budget blocks);
* housekeeping: one ``Engine.housekeeping_once`` (gauges, the watch's health, the deadline check);

each as a median over many calls, at N = 1k (the baseline, measured in the same run), 10k and
100k; the goal is 100k within 1.2x of 1k. Each size has its own nats-server and engine, all in one process, and
the measurements take turns (a few calls of each operation on each size, round after round), so the
machine's other load hits every size alike. The details also give p90s, the time an orchestrator
takes to build its index at start-up, what the old read (every key, one by one) took where it is
still affordable, and how fast the history was seeded (``KeyValue.put``, 512 at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import resource
import statistics
import time
from importlib import resources

from bench.common import Config, Result, nats_server, ratio

TITLE = "Mission history: list, get, admission and housekeeping with 1k-100k finished missions"

# The mock LLM's catalog: each goal, and the module and test its engineer writes (what a mission's workspace holds).
CATALOG = (("write a FizzBuzz function with tests", "fizzbuzz"), ("write an ISO date parser with tests", "iso_date"),
           ("write a word counter with tests", "wordcount"), ("write a palindrome checker with tests", "palindrome"),
           ("write a Roman numerals converter with tests", "roman_numerals"),
           ("write a Fibonacci function with tests", "fibonacci"), ("write a stack class with tests", "stack"),
           ("write a CSV column summer with tests", "csv_sum"))
LIVE = 20          # live missions in the bucket besides the finished ones
PAGE = 50


@functools.cache
def _program(name: str) -> tuple[str, str]:
    base = resources.files("coo.mockllm") / "programs"
    return (base / f"{name}.py.txt").read_text(), (base / f"test_{name}.py.txt").read_text()


def mission_id(created_s: float, i: int) -> str:
    """An id like the orchestrator's (creation time in ms, hex, then 6 more hex digits)."""
    return f"m-{int(created_s * 1000):011x}{i % (1 << 24):06x}"


def finished_mission(i: int, created_s: float, status: int | None = None, seconds: float = 30.0):
    """A realistic finished mission: a plan of two tasks, a workspace of two files with their
    versions, the last sandbox run, usage; completed (most), failed or budget_exceeded."""
    from coo.v1 import mission_pb2 as M
    from coo.v1 import sandbox_pb2

    if status is None:
        status = (M.MISSION_STATUS_FAILED if i % 10 == 7 else
                  M.MISSION_STATUS_BUDGET_EXCEEDED if i % 50 == 3 else M.MISSION_STATUS_COMPLETED)
    mid = mission_id(created_s, i)
    goal, program = CATALOG[i % len(CATALOG)]
    module, test = _program(program)
    m = M.Mission(mission_id=mid, goal=goal, status=M.MissionStatus.ValueType(status), budget_usd=1.0, max_retries=2,
                  submitted_by="operator", trace_id=f"{random.getrandbits(128):032x}", current_task=1,
                  status_reason="all tasks passed" if status == M.MISSION_STATUS_COMPLETED else "QA rejected")
    m.created_at.FromNanoseconds(int(created_s * 1e9))
    m.updated_at.FromNanoseconds(int((created_s + seconds) * 1e9))
    m.finished_at.FromNanoseconds(int((created_s + seconds) * 1e9))
    m.trace_context["traceparent"] = f"00-{m.trace_id}-{random.getrandbits(64):016x}-01"
    m.usage.input_tokens, m.usage.output_tokens, m.usage.cost_usd, m.usage.calls = 9400, 2100, 0.0142, 6
    for t in range(2):
        task = m.tasks.add(task_id=f"t{t + 1}", title=f"step {t + 1} of {m.goal[:40]}", attempts=1,
                           description="Implement the function and its tests; run them with pytest.",
                           status=M.TASK_STATUS_PASSED, last_score=0.9, last_feedback="tests pass")
        task.finished_at.CopyFrom(m.finished_at)
        v = m.workspace_versions.add(task_id=task.task_id, attempt=1, changed=[f"{program}.py", f"test_{program}.py"],
                                     files=2, bytes=len(module) + len(test), outcome="passed")
        v.at.CopyFrom(m.finished_at)
    for files in (m.workspace, m.artifacts):
        files.add(name=f"{program}.py", content=module)
        files.add(name=f"test_{program}.py", content=test)
    m.artifact_command.extend(["python", "-m", "pytest", "-q"])
    m.last_sandbox_result.CopyFrom(sandbox_pb2.SandboxResult(
        run_id=f"{mid}.t1.run.a1", mission_id=mid, task_id="t2", outcome=sandbox_pb2.SANDBOX_OUTCOME_OK,
        exit_code=0, stdout="..\n2 passed in 0.03s\n", duration_seconds=0.41, backend="bubblewrap"))
    return m


def live_mission(i: int, created_s: float):
    """A mission executing its first task."""
    from coo.v1 import mission_pb2 as M

    m = finished_mission(i, created_s)
    m.status = M.MISSION_STATUS_EXECUTING
    m.ClearField("finished_at")
    m.awaiting, m.awaiting_kind = f"{m.mission_id}.t0.eng.a1", "engineer"
    return m


async def seed(kv, missions, concurrency: int = 512) -> None:
    """Write missions into the bucket as they are (``KeyValue.put``, ``concurrency`` at a time)."""
    batch: list = []
    for m in missions:
        batch.append(kv.put(m.mission_id, m.SerializeToString()))
        if len(batch) >= concurrency:
            await asyncio.gather(*batch)
            batch = []
    if batch:
        await asyncio.gather(*batch)


def history(start: int, stop: int, now: float, spread_s: float = 20 * 86400):
    """Finished missions ``start``..``stop`` of a history that ends ``now``, oldest first."""
    for i in range(start, stop):
        yield finished_mission(i, now - spread_s + spread_s * i / 200_000)


# ------------------------------------------------------------------------ measuring
class _Side:
    """One history size: its own nats-server, bucket and orchestrator engine."""

    def __init__(self, n: int, url: str) -> None:
        self.n, self.url = n, url
        self.samples: dict[str, list[float]] = {k: [] for k in ("list", "get", "kv_get", "admission", "housekeeping")}
        self.ids: list[str] = []
        self.info: dict = {}

    async def seed(self, now: float) -> float:
        from coo.common import topology
        from coo.common.bus import Bus

        self.settings = _settings(self.url)
        bus = await Bus.connect("bench-history-seed", self.settings)
        try:
            await bus.ensure_topology()
            kv = await bus.kv(topology.BUCKET_MISSIONS)
            await seed(kv, (live_mission(1_000_000 + k, now - 60 + k) for k in range(LIVE)))
            batch = list(history(0, self.n, now - 3600))
            self.ids = [m.mission_id for m in batch]
            t0 = time.perf_counter()
            await seed(kv, batch)
            return time.perf_counter() - t0
        finally:
            await bus.close()

    async def start(self) -> None:
        from coo.common.bus import Bus
        from coo.orchestrator.engine import Engine

        self.bus = await Bus.connect("bench-history", self.settings)
        self.engine = Engine(self.bus, self.settings)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        await self.engine.start()
        self.info = {"index_build_s": time.perf_counter() - t0, "indexed": len(self.engine.index),
                     "live": self.engine.live_count(),
                     "max_rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}
        self.rng = random.Random(7)

    async def op(self, name: str) -> None:
        from coo.orchestrator.api import mission_view

        e = self.engine
        t0 = time.perf_counter()
        if name == "list":
            missions, after, _ = await e.list_missions(limit=PAGE)
            assert len(missions) == PAGE and after is not None
            [mission_view(m, with_files=False) for m in missions]
        elif name == "get":
            mission_view(await e.get(self.rng.choice(self.ids)))
        elif name == "kv_get":     # what nats-server takes: nats-py's KeyValue.get of the same kind of key
            await e.store.get(self.rng.choice(self.ids))
        elif name == "admission":
            await e.check_admission()
        else:
            await e.housekeeping_once()
        self.samples[name].append(time.perf_counter() - t0)

    async def stop(self) -> None:
        await self.engine.stop()
        await self.bus.close()


def _settings(url: str):
    from coo.orchestrator.settings import OrchestratorSettings

    return OrchestratorSettings.model_validate({
        "nats_url": url, "mission_retention_count": 0, "mission_retention_seconds": 0,
        "mission_deadline_seconds": 10 * 86400, "max_live_missions": 10_000})


async def _scan(url: str) -> float:
    """The read before the index: every key, then every mission one by one."""
    from coo.common import topology
    from coo.common.bus import Bus
    from coo.v1 import mission_pb2

    bus = await Bus.connect("bench-history-scan", _settings(url))
    try:
        kv = await bus.kv(topology.BUCKET_MISSIONS)
        t0 = time.perf_counter()
        for key in await kv.keys():
            if key.startswith("m-"):
                mission_pb2.Mission.FromString((await kv.get(key)).value or b"")
        return time.perf_counter() - t0
    finally:
        await bus.close()


async def _run(urls: dict[int, str], rounds: int, reps: dict[str, int], scan_up_to: int) -> dict:
    """Seed each side, start an engine on each, then measure in rounds that take turns side by
    side, so the machine's other load hits every history size alike."""
    now = time.time()
    sides = [_Side(n, url) for n, url in urls.items()]
    seed_seconds = 0.0
    for side in sides:
        seed_seconds += await side.seed(now)
    for side in sides:
        await side.start()
    try:
        for side in sides:                               # warm
            for name in side.samples:
                await side.op(name)
            for name in side.samples:
                side.samples[name].clear()
        for _ in range(rounds):
            for name, k in reps.items():
                for side in sides:
                    for _ in range(k):
                        await side.op(name)
    finally:
        for side in sides:
            await side.stop()
    table = {}
    for side in sides:
        row = {f"{k}_s": statistics.median(v) for k, v in side.samples.items()}
        row.update({f"{k}_p90_s": sorted(v)[int(0.9 * (len(v) - 1))] for k, v in side.samples.items()})
        row.update(side.info)
        if side.n <= scan_up_to:
            row["full_scan_s"] = await _scan(side.url)
        table[str(side.n)] = row
    return {"table": table, "seeded": sum(urls), "seed_seconds": seed_seconds,
            "record_bytes": len(finished_mission(0, now).SerializeToString())}


def run(cfg: Config) -> Result:
    result = Result("history", TITLE)
    sizes = (1_000, 10_000, 100_000) if not cfg.smoke else (50, 200, 500)
    reps = {"list": 3, "get": 20, "kv_get": 20, "admission": 20, "housekeeping": 2}
    rounds = cfg.n(30, 2)
    with contextlib.ExitStack() as stack:
        urls = {n: stack.enter_context(nats_server(cfg.work_dir)).url for n in sizes}
        out = asyncio.run(_run(urls, rounds, reps, scan_up_to=cfg.n(10_000, 500)))
    table = out["table"]
    base = table[str(sizes[0])]
    label = {sizes[0]: "1k", sizes[1]: "10k", sizes[2]: "100k"} if not cfg.smoke else {n: str(n) for n in sizes}
    for key, what in (("list_s", f"list, first page of {PAGE}"), ("get_s", "get one mission"),
                      ("admission_s", "admission check"), ("housekeeping_s", "housekeeping pass")):
        for n in sizes[1:]:
            value = table[str(n)][key] * 1e3
            result.add(f"{what}, {label[n]} finished missions", value, base[key] * 1e3, "ms",
                       ratio(value, base[key] * 1e3), f"x {label[sizes[0]]}", f"{label[sizes[0]]} finished missions",
                       goal=1.2 if n == sizes[-1] else None, higher_is_better=False)
    result.details = {f"{n} finished": {k: (round(v, 6) if isinstance(v, float) else v)
                                        for k, v in table[str(n)].items()}
                      for n in sizes}
    per_second = round(out["seeded"] / out["seed_seconds"]) if out["seed_seconds"] else None
    result.details["seeding"] = {"missions": out["seeded"] + LIVE, "seconds": round(out["seed_seconds"], 2),
                                 "per_second": per_second, "record_bytes": out["record_bytes"]}
    result.series["ms"] = {"finished missions": list(sizes),
                           **{k: [table[str(n)][f"{k}_s"] * 1e3 for n in sizes]
                              for k in ("list", "get", "admission", "housekeeping")}}
    build = ", ".join(f"{label[n]} {table[str(n)]['index_build_s']:.2f}s" for n in sizes)
    result.notes.append(f"{LIVE} live missions besides the finished ones; records of {out['record_bytes']:,} bytes "
                        f"(tasks, workspace, versions, the last sandbox run), seeded at "
                        f"{result.details['seeding']['per_second']:,}/s; an orchestrator's index is built at start "
                        f"from one KV watch in {build}")
    result.notes.append("a mission by id is one KeyValue.get (a direct get) plus its view: nats-py's KeyValue.get "
                        "alone, random keys, took " + ", ".join(
                            f"{label[n]} {table[str(n)]['kv_get_s'] * 1e3:.3f} ms" for n in sizes)
                        + " (nats-server's lookup in a stream of that many subjects)")
    scans = [f"{label[n]} {table[str(n)]['full_scan_s'] * 1e3:,.0f} ms"
             for n in sizes if "full_scan_s" in table[str(n)]]
    if scans:
        result.notes.append("the read before the index (every key, then every mission one by one), which every "
                            "list, admission and 5-second housekeeping paid: " + ", ".join(scans))
    return result

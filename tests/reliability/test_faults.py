"""Faults: concurrent missions while every kind of service, and the NATS server itself, is killed
with SIGKILL at random (seeded) moments and restarted.

Figures: missions submitted / finished / lost, sandbox runs executed more than once, the budget
ledger against the missions' costs with no reservation left behind, the time each component took
to recover, and the longest stretch without progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from tests.harness import ServiceStack
from tests.natsserver import NatsServer
from tests.reliability import helpers
from tests.reliability.figures import fmt

SEED = int(os.environ.get("COO_RELIABILITY_SEED", "20261121"))
N_MISSIONS = int(os.environ.get("COO_RELIABILITY_FAULT_MISSIONS", "60"))
VICTIMS = ["orchestrator", "agent", "budget", "sandbox", "mockllm", "nats"]
FINISH_TIMEOUT = 200.0   # after the last restart; the agent's ack wait (60 s) bounds one redelivery


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class ProgressWatcher(threading.Thread):
    """Polls the mission list; every change of a mission's (status, updated_at) is a progress event,
    dated by the server's ``updated_at``."""

    def __init__(self, stack: ServiceStack, interval: float = 0.4) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval = stack, interval
        self.last: dict[str, tuple] = {}
        self.events: list[float] = []
        self.errors = 0
        self.halt = threading.Event()
        self.snapshots: list[tuple[float, list]] = []   # (time, live missions) when it changes

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                missions = helpers.list_missions(self.stack, timeout=3)
                live = sorted((m["mission_id"], m["status"], m["awaiting"]) for m in missions
                              if m["status"] not in helpers.FINAL)
                if not self.snapshots or self.snapshots[-1][1] != live:
                    self.snapshots.append((time.time(), live))
                for m in missions:
                    key = (m["status"], m["updated_at"])
                    if self.last.get(m["mission_id"]) != key:
                        self.last[m["mission_id"]] = key
                        at = _epoch(m["updated_at"])
                        if at:
                            self.events.append(at)
            except Exception:  # noqa: BLE001 - the orchestrator or NATS is down: that is the point
                self.errors += 1
            self.halt.wait(self.interval)

    def first_after(self, t: float) -> float | None:
        later = [e for e in self.events if e > t]
        return min(later) if later else None

    def longest_gap(self, start: float, end: float) -> float:
        marks = sorted([start] + [e for e in self.events if start < e < end] + [end])
        return max(b - a for a, b in itertools.pairwise(marks))


# What counts as "did work" for each service, read from its own /metrics (counters restart at 0).
WORK_METRICS = {
    "orchestrator": ('coo_bus_messages_total', 'outcome="ack"'),
    "agent": ('coo_bus_messages_total', 'outcome="ack"'),
    "sandbox": ('coo_bus_messages_total', 'outcome="ack"'),
    "budget": ('coo_bus_requests_total', 'side="served"'),
    "mockllm": ('mockllm_requests_total', ''),
}


def _work_done(url: str, metric: str, label: str) -> float:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric) and (not label or label in line):
            with contextlib.suppress(ValueError):  # not a sample line (a comment, NaN written oddly)
                total += float(line.rsplit(" ", 1)[1])
    return total


def _budget_answers(nats_url: str) -> bool:
    from coo.budget.client import BudgetClient
    from coo.common.bus import Bus
    from coo.common.config import CommonSettings

    async def main() -> bool:
        bus = await Bus.connect("reliability-probe", CommonSettings(nats_url=nats_url), connect_timeout=2)
        try:
            return (await BudgetClient(bus, timeout=1, retries=0).status()).ok or True
        except Exception:  # noqa: BLE001 - any failure of the probe is "not answering"
            return False
        finally:
            await bus.close()

    try:
        return asyncio.run(main())
    except Exception:  # noqa: BLE001 - NATS itself down: "not answering" too
        return False


class FirstWork(threading.Thread):
    """Time from a restart until the restarted service has done one piece of work."""

    def __init__(self, stack: ServiceStack, name: str, since: float, limit: float = 120) -> None:
        super().__init__(daemon=True)
        self.stack, self.name, self.since, self.limit = stack, name, since, limit
        self.at: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        if self.name == "budget":   # asked directly: other work may be held elsewhere for a while
            while not self.halt.is_set() and time.time() - self.since < self.limit:
                if _budget_answers(self.stack.nats.url):
                    self.at = time.time()
                    return
                self.halt.wait(0.1)
            return
        metric, label = WORK_METRICS[self.name]
        url = self.stack.url(self.name, "/metrics")
        while not self.halt.is_set() and time.time() - self.since < self.limit:
            if _work_done(url, metric, label) > 0:
                self.at = time.time()
                return
            self.halt.wait(0.2)


def _consumers_state(nats_url: str) -> dict[str, tuple[int, int]]:
    """(pending, ack pending) of every durable consumer."""
    import nats

    from coo.common import topology

    async def main():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        out = {}
        try:
            for name, spec in topology.consumers().items():
                info = await js.consumer_info(spec.stream, name)
                out[name] = (info.num_pending, info.num_ack_pending)
        finally:
            await nc.close()
        return out

    return asyncio.run(main())


@pytest.mark.timeout(600)
def test_missions_survive_sigkill_of_every_service_and_nats(tmp_path, figures):
    rng = random.Random(SEED)
    nats = NatsServer(data_dir=tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    stack = helpers.make_stack(tmp_path, nats, env={
        "COO_MAX_LIVE_MISSIONS": "1000",
        "COO_AGENT_RESERVATION_TTL_SECONDS": "30",     # a killed agent's reservation expires soon
        "COO_BUDGET_SWEEP_INTERVAL_SECONDS": "1",
        "COO_BUDGET_ON_EXCEEDED": "fail",
    })
    watcher = ProgressWatcher(stack)
    try:
        stack.start()
        helpers.wait_api(stack)
        goals = []
        for _ in range(N_MISSIONS):
            goal = rng.choice(helpers.GOALS) + f" [mock:slow={rng.uniform(0.2, 1.2):.2f}]"
            if rng.random() < 0.15:
                goal += " [mock:flaky]"
            goals.append(goal)
        t_submit = time.time()
        with ThreadPoolExecutor(8) as pool:
            missions = list(pool.map(stack.submit, goals))
        ids = [m["mission_id"] for m in missions]
        watcher.start()

        # ------------------------------------------------------------- the chaos
        victims = VICTIMS[:]
        rng.shuffle(victims)
        kills = []
        for victim in victims:
            time.sleep(rng.uniform(3.0, 7.0))
            down = rng.uniform(0.2, 1.5)
            t_kill = time.time()
            port_before = nats.port
            if victim == "nats":
                nats.kill()
            else:
                stack.kill(victim)
            time.sleep(down)
            t_restart = time.time()
            if victim == "nats":
                nats.start()
                first = None
            else:
                stack.start(victim, timeout=60)
                if victim == "orchestrator":
                    helpers.wait_api(stack)
                first = FirstWork(stack, victim, t_restart)
                first.start()
            kills.append({"victim": victim, "t_kill": t_kill, "t_restart": t_restart, "healthy": time.time(),
                          "down": down, "first": first, "same_port": nats.port == port_before})
        t_last = time.time()

        final = helpers.wait_final(stack, ids, FINISH_TIMEOUT)
        t_done = time.time()
        watcher.halt.set()
        watcher.join(5)
        for k in kills:
            if k["first"] is not None:
                k["first"].halt.set()

        if os.environ.get("COO_RELIABILITY_DEBUG"):
            import json
            from pathlib import Path
            Path(os.environ["COO_RELIABILITY_DEBUG"]).write_text(json.dumps(
                {"t_submit": t_submit, "kills": [{**k, "first": None} for k in kills], "events": sorted(watcher.events),
                 "root": str(tmp_path), "snapshots": watcher.snapshots, "final": final}, indent=1))
        # ---------------------------------------------------------- the figures
        statuses = {i: final.get(i, {}).get("status", "unknown") for i in ids}
        lost = [i for i, s in statuses.items() if s not in helpers.FINAL]
        completed = sum(1 for s in statuses.values() if s == "completed")
        failed = {i: final[i].get("status_reason") or final[i].get("error") for i, s in statuses.items()
                  if s in helpers.FINAL and s != "completed"}
        figures.add("faults", "missions submitted (concurrently)", len(ids), target=">= 50", ok=len(ids) >= 50,
                    note=f"seed {SEED}; goals with [mock:slow=0.2..1.2], 15% [mock:flaky]")
        figures.add("faults", "kills (SIGKILL, then restart)", len(kills),
                    note=", ".join(f"{k['victim']} at +{k['t_kill'] - t_submit:.0f}s (down {k['down']:.1f}s)"
                                   for k in kills))
        figures.add("faults", "missions finished (final state)", f"{len(ids) - len(lost)}/{len(ids)}",
                    target=f"{len(ids)}/{len(ids)}", ok=not lost,
                    note=f"{completed} completed, {len(failed)} failed/other; all final {t_done - t_last:.0f}s "
                         f"after the last restart")
        figures.add("faults", "missions lost (never final)", len(lost), target="0", ok=not lost,
                    note="; ".join(f"{i}: {final.get(i, {}).get('status')} awaiting "
                                   f"{final.get(i, {}).get('awaiting')}" for i in lost[:5]))
        if failed:
            reasons = sorted({str(r)[:80] for r in failed.values()})
            figures.add("faults", "missions not completed: reasons", len(failed), note="; ".join(reasons[:4]))

        runs = helpers.executions(stack)
        twice = {r: n for r, n in runs.items() if n > 1}
        figures.add("faults", "sandbox runs executed more than once", len(twice), target="0", ok=not twice,
                    note=f"{sum(runs.values())} executions of {len(runs)} run ids, from the sandbox logs")

        for k in kills:
            if k["first"] is not None:
                work = k["first"].at
                what = ("its first budget answer" if k["victim"] == "budget"
                        else "its first piece of work (from its /metrics; bounded by work reaching it)")
            else:
                work = watcher.first_after(k["t_restart"])
                what = "the next mission update"
            figures.add("faults", f"recovery after SIGKILL of {k['victim']}",
                        f"healthy {k['healthy'] - k['t_restart']:.1f}s, working "
                        f"{fmt(work - k['t_restart'] if work else None, 's', 1)}",
                        note=f"from the restart: to /healthz ({'JetStream' if k['first'] is None else 'and API'}), "
                             f"to {what}" + ("" if k["first"] is not None else
                                             f"; restarted on the same port, data dir kept: {k['same_port']}"))
        gap = watcher.longest_gap(kills[0]["t_kill"], min(t_done, max(watcher.events or [t_done])))
        figures.add("faults", "longest stretch without any mission progress", f"{gap:.1f}s",
                    note="work held by a killed agent or sandbox comes back after its consumer's ack wait (60 s)")
        durations = [final[i]["duration_seconds"] for i in ids if final.get(i, {}).get("duration_seconds")]
        figures.add("faults", "mission duration p50 / max (submit → final)",
                    f"{fmt(helpers.percentile(durations, 50), 's', 1)} / {fmt(max(durations, default=None), 's', 1)}")

        # the budget: ledger = the missions' costs, nothing left reserved once the sweeper ran
        sweep_deadline = time.monotonic() + 45
        while True:
            budget = helpers.budget_status(nats.url, ids)
            reserved = sum(v["reserved_usd"] for k, v in budget.items() if k in ids)
            open_res = sum(v["reservations"] for k, v in budget.items() if k in ids)
            if (reserved == 0 and open_res == 0) or time.monotonic() > sweep_deadline:
                break
            time.sleep(1)
        spent = {i: budget.get(i, {}).get("spent_usd", 0.0) for i in ids}
        costs = {i: final.get(i, {}).get("cost_usd", 0.0) for i in ids}
        daily = budget.get("daily", {})
        unrecorded = {i: (costs[i], spent[i]) for i in ids if costs[i] > spent[i] + 1e-6}
        underreported = {i: (costs[i], spent[i]) for i in ids if spent[i] > costs[i] + 1e-6}
        figures.add("faults", "budget: missions with spend missing from the ledger", len(unrecorded), target="0",
                    ok=not unrecorded,
                    note=f"sum of mission costs ${sum(costs.values()):.6f}, sum of mission ledgers "
                         f"${sum(spent.values()):.6f}")
        figures.add("faults", "budget: missions whose cost_usd under-reports their ledger", len(underreported),
                    note=("an agent killed after settling an LLM call and before publishing its result: the "
                          "redelivered task pays for a second call, the ledger has both, the mission only one; "
                          + "; ".join(f"{i} cost {c:.6f} ledger {s_:.6f}" for i, (c, s_) in
                                      list(underreported.items())[:2])) if underreported else
                    "none this run (happens when an agent dies between settling and publishing)")
        figures.add("faults", "budget: daily ledger - sum of mission ledgers",
                    f"${daily.get('spent_usd', 0) - sum(spent.values()):.6f}", target="$0.000000",
                    ok=abs(daily.get("spent_usd", 0) - sum(spent.values())) < 1e-6)
        figures.add("faults", "budget: reserved after the sweeper", f"${reserved:.6f} in {open_res} reservations",
                    target="$0 in 0", ok=reserved == 0 and open_res == 0,
                    note=f"daily scope reserved ${daily.get('reserved_usd', 0):.6f}")

        # A redelivered run request for a run a killed sandbox left "running" is held (nak with delay)
        # until that run's deadline + grace has passed, then answered as crashed: give it that long.
        drain_deadline = time.monotonic() + 120
        queues = _consumers_state(nats.url)
        while any(v != (0, 0) for v in queues.values()) and time.monotonic() < drain_deadline:
            time.sleep(2)
            queues = _consumers_state(nats.url)
        stuck = {k: v for k, v in queues.items() if v != (0, 0)}
        figures.add("faults", "work left in the durable consumers at the end", len(stuck), target="0",
                    ok=not stuck, note=", ".join(f"{k}: pending {p}, unacked {a}" for k, (p, a) in stuck.items())
                    or "all 7 consumers drained (they resumed after the NATS restart)")
        rebinds = {name: stack.log(name).count("consumer fetch failed; rebinding") for name in stack.services}
        figures.add("faults", "consumer rebinds after errors (by service)",
                    ", ".join(f"{k} {v}" for k, v in rebinds.items() if v) or "none",
                    note="the bus rebinds a pull subscription after a failed fetch")

        assert not lost, f"missions never final: {[(i, final.get(i)) for i in lost[:3]]}"
        assert not twice, twice
        assert reserved == 0 and open_res == 0, budget
        assert not stuck, stuck
        assert not unrecorded, unrecorded
    finally:
        watcher.halt.set()
        stack.stop()
        nats.cleanup()

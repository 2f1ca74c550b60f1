"""Node loss on a NATS cluster of three (R3 streams and buckets), with missions in flight.

Two rounds of 50 concurrent missions each, every service a real process connected to all three
nodes (as the local stack runs them with ``COO_NATS_CLUSTER=3``):

1. SIGKILL the JetStream meta leader; once a new one leads, restart the killed node; then SIGKILL
   the leader of the missions bucket's stream and restart it the same way. One node is down at a
   time: a cluster of three keeps its quorum through each loss.
2. SIGSTOP the node that leads the missions bucket's stream for 30 s (a stalled machine: its
   sockets stay open, nothing answers), then SIGCONT.

Each round: missions lost (never final), sandbox runs executed more than once, the budget ledger
against the missions' costs, traces per mission (every timeline event carries the trace id of the
span it was emitted in: one distinct id per mission), and recovery times — a new leader elected,
the next mission update after the fault, the node current with the cluster again.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from coo.common import topology
from tests.harness import ServiceStack
from tests.natsserver import NatsCluster, NatsServer
from tests.reliability import helpers
from tests.reliability.figures import fmt
from tests.reliability.test_faults import ProgressWatcher

SEED = int(os.environ.get("COO_RELIABILITY_SEED", "20261121"))
N_MISSIONS = int(os.environ.get("COO_RELIABILITY_CLUSTER_MISSIONS", "50"))
PAUSE_SECONDS = float(os.environ.get("COO_RELIABILITY_CLUSTER_PAUSE", "30"))
FINISH_TIMEOUT = 240.0
MISSIONS_STREAM = topology.bucket_stream(topology.BUCKET_MISSIONS)


def _submit(stack: ServiceStack, rng: random.Random, n: int) -> list[str]:
    # LLM calls of 1-2 s, as a real provider's: missions are still in flight at the second fault
    goals = [rng.choice(helpers.GOALS) + f" [mock:slow={rng.uniform(1.0, 2.0):.2f}]" for _ in range(n)]
    with ThreadPoolExecutor(8) as pool:
        return [m["mission_id"] for m in pool.map(stack.submit, goals)]


def _wait(predicate, timeout: float, poll: float = 0.1):
    """(seconds it took, value) once ``predicate()`` returns something truthy; (None, None) on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - a node down or electing: ask again
            value = None
        if value:
            return time.monotonic() - started, value
        time.sleep(poll)
    return None, None


def _new_leader(cluster: NatsCluster, stream: str | None, old: str) -> str | None:
    leader = cluster.meta_leader() if stream is None else cluster.stream_leader(stream)
    return leader if leader and leader != old else None


def _in_flight(watcher: ProgressWatcher) -> int:
    """Missions live at the watcher's last look."""
    return len(watcher.snapshots[-1][1]) if watcher.snapshots else 0


def _kill_and_restart(cluster: NatsCluster, stack: ServiceStack, watcher: ProgressWatcher, what: str,
                      stream: str | None) -> dict:
    """SIGKILL the leader of ``stream`` (None: of the meta group); time the new election and the
    next mission update; restart the node (same ports, data dir kept) and time it to current."""
    victim_name = cluster.meta_leader() if stream is None else cluster.stream_leader(stream)
    victim: NatsServer = cluster.node(victim_name)
    in_flight = _in_flight(watcher)
    t_kill = time.time()
    victim.kill()
    elected, leader = _wait(lambda: _new_leader(cluster, stream, victim_name), 30)
    _wait(lambda: watcher.first_after(t_kill), 30)
    progress = watcher.first_after(t_kill)
    t_restart = time.time()
    victim.start(wait=False)
    victim.wait_ready(60, current=True)
    return {"what": what, "victim": victim_name, "leader": leader, "elected": elected, "in_flight": in_flight,
            "progress": progress - t_kill if progress else None, "current": time.time() - t_restart}


def _pause(cluster: NatsCluster, watcher: ProgressWatcher, seconds: float) -> dict:
    victim_name = cluster.stream_leader(MISSIONS_STREAM)
    victim = cluster.node(victim_name)
    in_flight = _in_flight(watcher)
    t_stop = time.time()
    victim.pause()
    try:
        elected, leader = _wait(lambda: _new_leader(cluster, MISSIONS_STREAM, victim_name), seconds)
        time.sleep(max(0.0, seconds - (time.time() - t_stop)))
    finally:
        victim.resume()
    t_cont = time.time()
    _wait(lambda: watcher.first_after(t_stop), 60)
    progress = watcher.first_after(t_stop)
    victim.wait_ready(60, current=True)
    return {"what": f"SIGSTOP for {seconds:.0f}s", "victim": victim_name, "leader": leader, "elected": elected,
            "in_flight": in_flight, "progress": progress - t_stop if progress else None,
            "current": time.time() - t_cont}


def _traces_per_mission(stack: ServiceStack, ids: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with stack.api() as api:
        for mid in ids:
            mission = api.get(f"/v1/missions/{mid}").json()
            events = api.get(f"/v1/missions/{mid}/timeline").json()["events"]
            out[mid] = {e["trace_id"] for e in events if e.get("trace_id")} | {mission.get("trace_id") or ""}
            out[mid].discard("")
    return out


def _check_round(name: str, stack: ServiceStack, cluster: NatsCluster, ids: list[str], faults: list[dict],
                 figures, executions_before: set[str]) -> list[str]:
    final = helpers.wait_final(stack, ids, FINISH_TIMEOUT)
    problems = []
    lost = [i for i in ids if final.get(i, {}).get("status") not in helpers.FINAL]
    completed = sum(1 for i in ids if final.get(i, {}).get("status") == "completed")
    figures.add("cluster", f"{name}: missions lost (never final)", len(lost), target="0", ok=not lost,
                note=f"{len(ids)} submitted at once, {completed} completed; "
                     + "; ".join(f"{i}: {final.get(i, {}).get('status')}" for i in lost[:3]))
    runs = helpers.executions(stack)
    twice = {r: n for r, n in runs.items() if n > 1 and r not in executions_before}
    figures.add("cluster", f"{name}: sandbox runs executed more than once", len(twice), target="0", ok=not twice,
                note=f"{sum(n for r, n in runs.items() if r not in executions_before)} executions, from the "
                     "sandbox's log")
    deadline = time.monotonic() + 45
    while True:
        budget = helpers.budget_status(cluster.url, ids)
        reserved = sum(budget.get(i, {}).get("reserved_usd", 0.0) for i in ids)
        open_res = sum(budget.get(i, {}).get("reservations", 0) for i in ids)
        if (reserved == 0 and open_res == 0) or time.monotonic() > deadline:
            break
        time.sleep(1)
    unrecorded = [i for i in ids if final.get(i, {}).get("cost_usd", 0.0) > budget.get(i, {}).get("spent_usd", 0.0)
                  + 1e-6]
    ledger_ok = not unrecorded and reserved == 0 and open_res == 0
    figures.add("cluster", f"{name}: ledger exact (every cost recorded, nothing left reserved)",
                "yes" if ledger_ok else "no", target="yes", ok=ledger_ok,
                note=f"missions ${sum(final.get(i, {}).get('cost_usd', 0.0) for i in ids):.6f}, ledgers "
                     f"${sum(budget.get(i, {}).get('spent_usd', 0.0) for i in ids):.6f}, reserved ${reserved:.6f} "
                     f"in {open_res}")
    traces = _traces_per_mission(stack, ids)
    split = {i: t for i, t in traces.items() if len(t) != 1}
    figures.add("cluster", f"{name}: missions with other than one trace", len(split), target="0", ok=not split,
                note="distinct trace ids over each mission's timeline events and its record")
    for f in faults:
        figures.add("cluster", f"{name}: {f['what']} ({f['victim']})",
                    f"leader in {fmt(f['elected'], 's', 1)}, progress {fmt(f['progress'], 's', 1)}, "
                    f"current {fmt(f['current'], 's', 1)}",
                    note=f"{f['in_flight']} missions in flight at the fault; new leader "
                         f"{f['leader'] or 'none (kept its leader)'}; progress = the next mission "
                         "update after the fault (SIGKILL or SIGSTOP); current = the node back in step after its "
                         "restart or SIGCONT")
    if lost:
        problems.append(f"{name}: lost {lost[:3]}")
    if twice:
        problems.append(f"{name}: executed twice {twice}")
    if not ledger_ok:
        problems.append(f"{name}: ledger {unrecorded[:3]} reserved {reserved} in {open_res}")
    if split:
        problems.append(f"{name}: traces {dict(list(split.items())[:2])}")
    return problems


@pytest.mark.timeout(900)
def test_missions_survive_losing_a_nats_node(tmp_path, figures):
    rng = random.Random(SEED)
    cluster = NatsCluster(tmp_path / "nats", size=3)
    stack = helpers.make_stack(tmp_path, cluster.nodes[0], cluster=cluster, env={
        "COO_MAX_LIVE_MISSIONS": "1000",
        # a reservation whose reply was lost with a node (the agent retries with a new one) expires soon
        "COO_AGENT_RESERVATION_TTL_SECONDS": "30",
        "COO_BUDGET_SWEEP_INTERVAL_SECONDS": "1",
    })
    watcher = ProgressWatcher(stack)
    problems: list[str] = []
    try:
        t0 = time.monotonic()
        cluster.start()
        figures.add("cluster", "three nodes up, meta leader elected", f"{time.monotonic() - t0:.1f}s",
                    note=f"meta leader {cluster.meta_leader()}; streams and buckets R3")
        stack.start(timeout=60)
        helpers.wait_api(stack)
        watcher.start()

        ids = _submit(stack, rng, N_MISSIONS)
        time.sleep(2)
        faults = [_kill_and_restart(cluster, stack, watcher, "SIGKILL of the meta leader", None)]
        time.sleep(1)
        faults.append(_kill_and_restart(cluster, stack, watcher, "SIGKILL of the missions stream's leader",
                                        MISSIONS_STREAM))
        problems += _check_round("kill", stack, cluster, ids, faults, figures, set())

        before = set(helpers.executions(stack))
        ids2 = _submit(stack, rng, N_MISSIONS)
        time.sleep(2)
        paused = _pause(cluster, watcher, PAUSE_SECONDS)
        problems += _check_round("pause", stack, cluster, ids2, [paused], figures, before)
        with httpx.Client() as http:
            replicas = {n.name: http.get(f"{n.monitor_url}/jsz", timeout=5).json().get("streams")
                        for n in cluster.nodes}
        figures.add("cluster", "streams on each node at the end", ", ".join(f"{k} {v}" for k, v in replicas.items()),
                    note="every stream and bucket has a copy on every node (R3)")
        assert not problems, problems
    finally:
        watcher.halt.set()
        stack.stop()
        cluster.cleanup()

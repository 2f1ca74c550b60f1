"""Budget: reserve+settle operations per second with 1, 8 and 32 concurrent clients against one and
two replicas of the budget service (real ``python -m coo.budget`` processes sharing one
JetStream KV ledger with compare-and-set), through ``coo.budget.client.BudgetClient``.

Clients share missions four by four, so reservations of one mission race each other, and every
mission's limit is set so that it is hit near the end of the phase (the last reservations are
refused). Afterwards the ledger is read back: overspend (spent + reserved above the limit) must be
exactly 0. Every phase runs on a fresh nats-server (a fresh ledger) with fresh replicas.

Details per phase also count what an operation costs: compare-and-set conflicts (the replicas'
``coo_budget_cas_conflicts_total``, summed) and messages published into nats-server (its
``/varz`` ``in_msgs``: the client's requests, the replies and every ledger KV call), per attempted
operation, both read just before and just after the timed part.

Baseline, measured in the same run on the same server: raw nats-py request/reply round trips per
second to a trivial responder process, at the same concurrency; an operation is two round trips
(reserve, settle), so the ratio says what the ledger costs per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import stack as stack_mod
from bench.common import Config, Result, nats_server, ratio

TITLE = "Budget: reserve+settle operations per second"

MODEL = "mock-small"
INPUT_TOKENS, MAX_OUTPUT, ACTUAL_OUTPUT = 1000, 1000, 500
PER_MISSION = 4           # clients sharing one mission
ECHO_SUBJECT = "coo.bench.echo"


def settle_usd() -> float:
    from coo.budget.pricing import DEFAULT_PRICES

    p = DEFAULT_PRICES[MODEL]
    return (INPUT_TOKENS * p.input_per_mtok + ACTUAL_OUTPUT * p.output_per_mtok) / 1e6


# ------------------------------------------------------------------ processes
def _env(nats_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COO_", "OTEL_"))}
    env.update({"COO_NATS_URL": nats_url, **extra})
    return env


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[1])


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


async def echo_main(url: str) -> None:
    """The baseline's responder: raw nats-py, answers every request with its own bytes."""
    import nats

    nc = await nats.connect(url)

    async def answer(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, queue="echo", cb=answer)
    await nc.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.drain()


# ----------------------------------------------------------------------- load
async def _echo_rate(url: str, clients: int, seconds: float) -> float:
    import nats
    import nats.errors

    from coo.v1 import budget_pb2

    nc = await nats.connect(url)
    payload = budget_pb2.ReserveRequest(reservation_id="r" * 40, mission_id="m" * 32, model=MODEL,
                                        input_tokens=INPUT_TOKENS, max_output_tokens=MAX_OUTPUT).SerializeToString()
    count = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal count
        while time.perf_counter() < end:
            await nc.request(ECHO_SUBJECT, payload, timeout=10)
            count += 1

    deadline = time.monotonic() + 30
    while True:     # the responder process may still be starting (a loaded machine takes a while)
        try:
            await nc.request(ECHO_SUBJECT, payload, timeout=10)
            break
        except nats.errors.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    for _ in range(20):
        await nc.request(ECHO_SUBJECT, payload, timeout=10)
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    rate = count / (time.perf_counter() - start)
    await nc.close()
    return rate


def _counters(monitor_url: str | None, metrics_urls: list[str]) -> tuple[float, float]:
    """(nats-server in_msgs, sum of the replicas' CAS conflicts); NaN where unreadable."""
    msgs = conflicts = float("nan")
    if monitor_url:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            msgs = float(httpx.get(f"{monitor_url}/varz", timeout=5).json()["in_msgs"])
    total = 0.0
    for url in metrics_urls:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            return msgs, float("nan")
        total += sum(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("coo_budget_cas_conflicts_total "))
    if metrics_urls:
        conflicts = total
    return msgs, conflicts


async def _budget_phase(url: str, tag: str, clients: int, ops_per_client: int, *, monitor_url: str | None = None,
                        metrics_urls: list[str] = ()) -> dict:
    """``clients`` tasks, each doing reserve+settle ``ops_per_client`` times; limits hit at the end."""
    from coo.budget.client import BudgetClient
    from coo.common.bus import Bus
    from coo.common.config import CommonSettings

    bus = await Bus.connect("bench-budget-client", CommonSettings(nats_url=url))
    client = BudgetClient(bus, timeout=15)
    missions = [f"bench-{tag}-m{k}" for k in range((clients + PER_MISSION - 1) // PER_MISSION)]
    sharing = {m: sum(1 for k in range(clients) if k // PER_MISSION == i) for i, m in enumerate(missions)}
    # Each mission's limit: 95 % of what its clients would spend, so the last reservations are refused.
    limits = {m: round(0.95 * n * ops_per_client * settle_usd(), 9) for m, n in sharing.items()}
    for m, limit in limits.items():
        await client.set_limit("mission", mission_id=m, limit_usd=limit, requested_by="bench")
    refused = 0
    done = 0

    async def worker(k: int) -> None:
        nonlocal refused, done
        mission = missions[k // PER_MISSION]
        for i in range(ops_per_client):
            rid = f"{mission}:{k}:{i}"
            reply = await client.reserve(rid, mission, MODEL, INPUT_TOKENS, MAX_OUTPUT, ttl_seconds=600)
            if not reply.ok:
                refused += 1
                continue
            await client.settle(rid, mission, MODEL, INPUT_TOKENS, ACTUAL_OUTPUT)
            done += 1

    msgs0, conflicts0 = _counters(monitor_url, list(metrics_urls))
    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    seconds = time.perf_counter() - start
    msgs1, conflicts1 = _counters(monitor_url, list(metrics_urls))
    overspend = 0.0
    worst = 0.0
    for m, limit in limits.items():
        status = await client.status(mission_id=m)
        scope = next(s for s in status.scopes if s.key == m)
        used = scope.spent_usd + scope.reserved_usd
        worst = max(worst, used / limit if limit else 0.0)
        overspend += max(0.0, used - scope.limit_usd - 1e-9)
    await bus.close()
    attempts = clients * ops_per_client
    return {"ops_per_s": attempts / seconds, "settled": done, "refused": refused, "seconds": seconds,
            "overspend_usd": overspend, "max_used_share_of_limit": worst, "missions": len(missions),
            "cas_conflicts_per_op": (conflicts1 - conflicts0) / attempts,
            "server_msgs_in_per_op": (msgs1 - msgs0) / attempts}


# ------------------------------------------------------------------------ run
def _replicas(n: int, url: str, endpoint: str, logs: Path) -> list[subprocess.Popen]:
    """``n`` budget services (``python -m coo.budget``) on the server at ``url``, healthy."""
    from tests.natsserver import free_port

    procs = []
    try:
        for i in range(n):
            port = free_port()
            procs.append(_start([sys.executable, "-m", "coo.budget"], _env(url, {
                "COO_BUDGET_PORT": str(port), "COO_DATA_DIR": str(logs / f"budget-{i}"),
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "COO_BUDGET_DAILY_USD": "0",
                "COO_BUDGET_MONTHLY_USD": "0"}), logs / f"budget-{i}.log"))
            _wait_http(f"http://127.0.0.1:{port}/healthz", procs[-1])
            procs[-1].metrics_url = f"http://127.0.0.1:{port}/metrics"
    except BaseException:
        _stop(procs)
        raise
    return procs


def run(cfg: Config) -> Result:
    result = Result("budget", TITLE)
    levels = (1, 8, 32)
    ops = {1: cfg.n(150, 15), 8: cfg.n(30, 4), 32: cfg.n(8, 2)}
    echo_seconds = cfg.n(3.0, 0.5)
    table: dict[str, dict] = {}
    logs = Path(cfg.work_dir)
    with stack_mod.otlp_endpoint(cfg.work_dir) as (endpoint, what):
        with nats_server(cfg.work_dir) as server:
            echo = _start([sys.executable, "-m", "bench.budget", "--echo", server.url], _env(server.url, {}),
                          logs / "echo.log")
            try:
                time.sleep(0.5)
                for c in levels:
                    table[f"raw_{c}"] = {"round_trips_per_s": asyncio.run(_echo_rate(server.url, c, echo_seconds))}
            finally:
                _stop([echo])
        # Each phase on a fresh server and ledger, so no phase pays for the records of the ones before.
        for n_replicas in (1, 2):
            for c in levels:
                with nats_server(cfg.work_dir) as server:
                    replicas = _replicas(n_replicas, server.url, endpoint, logs)
                    try:
                        asyncio.run(_budget_phase(server.url, f"warm{n_replicas}{c}", 4, 3))
                        table[f"budget_{n_replicas}x_{c}"] = asyncio.run(_budget_phase(
                            server.url, f"r{n_replicas}c{c}", c, ops[c], monitor_url=server.monitor_url,
                            metrics_urls=[p.metrics_url for p in replicas]))
                    finally:
                        _stop(replicas)
    overspend = 0.0
    for n_replicas in (1, 2):
        for c in levels:
            row = table[f"budget_{n_replicas}x_{c}"]
            base = table[f"raw_{c}"]["round_trips_per_s"] / 2     # an operation is two round trips
            result.add(f"reserve+settle ops/s, {n_replicas} replica{'s' if n_replicas > 1 else ''}, {c} client"
                       f"{'s' if c > 1 else ''}", row["ops_per_s"], base, "ops/s", ratio(row["ops_per_s"], base),
                       "x raw request/reply pairs", "raw nats-py request/reply pairs/s")
            overspend += row["overspend_usd"]
    refused = sum(table[k]["refused"] for k in table if k.startswith("budget_"))
    result.add("overspend (spent + reserved above a limit)", overspend, 0.0, "USD", None, "", "limit",
               goal=0.0, goal_on="value", higher_is_better=False)
    result.details = {k: {kk: (round(vv, 6) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                      for k, v in table.items()}
    result.series["ops_per_s"] = {
        "clients": list(levels),
        **{f"{n} replica{'s' if n > 1 else ''}": [table[f"budget_{n}x_{c}"]["ops_per_s"] for c in levels]
           for n in (1, 2)},
        "raw request/reply pairs": [table[f"raw_{c}"]["round_trips_per_s"] / 2 for c in levels],
    }
    result.notes.append(f"every mission's limit was hit ({refused} reservations refused in all); "
                        f"overspend {overspend:.9f} USD; replicas export telemetry to {what}")
    result.notes.append("per operation (1/8/32 clients): CAS conflicts " + "; ".join(
        f"{n} replica{'s' if n > 1 else ''} " + "/".join(
            f"{table[f'budget_{n}x_{c}']['cas_conflicts_per_op']:.2f}" for c in levels) for n in (1, 2))
        + "; messages into nats-server " + "; ".join(
        f"{n} replica{'s' if n > 1 else ''} " + "/".join(
            f"{table[f'budget_{n}x_{c}']['server_msgs_in_per_op']:.1f}" for c in levels) for n in (1, 2)))
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo":
        asyncio.run(echo_main(sys.argv[2]))

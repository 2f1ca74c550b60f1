"""Small tools the reliability tests share: process memory, sandbox executions from the logs,
budget figures over the bus, waiting for missions, percentiles."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable

import httpx

from tests.harness import GOALS, ServiceStack  # noqa: F401 - GOALS is used as helpers.GOALS

FINAL = {"completed", "failed", "cancelled", "budget_exceeded"}


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def executions(stack: ServiceStack) -> Counter:
    """Sandbox runs actually executed, by run id, from every line the sandbox services logged
    (the log file is appended to across restarts)."""
    runs: Counter = Counter()
    for line in stack.log("sandbox").splitlines():
        if '"sandbox run executed"' in line:
            try:
                runs[json.loads(line)["run_id"]] += 1
            except (ValueError, KeyError):
                continue
    return runs


def percentile(values: Iterable[float], p: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def list_missions(stack: ServiceStack, timeout: float = 10) -> list[dict]:
    with stack.api() as api:
        resp = api.get("/v1/missions", params={"limit": 1000}, timeout=timeout)
        resp.raise_for_status()
        return resp.json()["missions"]


def wait_final(stack: ServiceStack, ids: Iterable[str], timeout: float) -> dict[str, dict]:
    """Poll the list endpoint until every mission is final or ``timeout`` passes; returns the last
    view of each mission (missing: never seen)."""
    ids = set(ids)
    deadline = time.monotonic() + timeout
    seen: dict[str, dict] = {}
    while True:
        try:
            for m in list_missions(stack):
                if m["mission_id"] in ids:
                    seen[m["mission_id"]] = m
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if all(seen.get(i, {}).get("status") in FINAL for i in ids) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def budget_status(nats_url: str, mission_ids: Iterable[str]) -> dict[str, dict]:
    """Budget figures over the bus: ``{"daily": {...}, "<mission id>": {...}}`` with spent and
    reserved USD and the number of open reservations."""
    from coo.budget.client import BudgetClient
    from coo.common.bus import Bus
    from coo.common.config import CommonSettings

    async def main() -> dict[str, dict]:
        bus = await Bus.connect("reliability-test", CommonSettings(nats_url=nats_url))
        out: dict[str, dict] = {}
        try:
            client = BudgetClient(bus, timeout=10)
            for mid in ["", *mission_ids]:
                reply = await client.status(mission_id=mid)
                for s in reply.scopes:
                    name = {1: s.key, 2: "daily", 3: "monthly"}.get(s.scope, s.key)
                    out[name] = {"spent_usd": s.spent_usd, "reserved_usd": s.reserved_usd,
                                 "reservations": s.reservations, "limit_usd": s.limit_usd}
        finally:
            await bus.close()
        return out

    return asyncio.run(main())


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def make_stack(root, nats, env: dict[str, str] | None = None, **kw) -> ServiceStack:
    """A ServiceStack as the harness builds it (NATS users and permissions included, when the
    harness has them); ``COO_RELIABILITY_NATS_AUTH=0`` runs without them."""
    import dataclasses

    if os.environ.get("COO_RELIABILITY_NATS_AUTH", "1") == "0" and "auth" in {
            f.name for f in dataclasses.fields(ServiceStack)}:
        kw["auth"] = False
    return ServiceStack(root, nats, env=env or {}, **kw)


def wait_api(stack: ServiceStack, timeout: float = 60) -> float:
    """/healthz answers before the orchestrator is connected to NATS: wait until the API itself
    answers (GET /v1/status reads the mission store). Returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with stack.api() as api:
                resp = api.get("/v1/status", timeout=3)
            if resp.status_code == 200:
                return time.monotonic() - started
            last = f"{resp.status_code} {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise AssertionError(f"orchestrator API not answering after {timeout}s: {last}")


def ensure_topology(nats_url: str) -> None:
    """Streams, consumers and buckets declared as the harness's admin connection: with NATS access
    control only the orchestrator may declare them, so a stack without it needs this first."""
    from coo.common.bus import Bus
    from coo.common.config import CommonSettings

    async def main() -> None:
        bus = await Bus.connect("reliability-test", CommonSettings(nats_url=nats_url))
        try:
            await bus.ensure_topology()
        finally:
            await bus.close()

    asyncio.run(main())

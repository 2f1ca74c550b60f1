"""Load: missions submitted at rising rates until backpressure engages. The orchestrator's admission
bound (``COO_MAX_LIVE_MISSIONS``, low here) must refuse with 429 and Retry-After instead of the
system falling over, and every service's memory must stay bounded.

Figures: the highest rate held (every submission accepted and completed) with its p95 latency, and
what happened past it (429s, no 5xx, no crash), peak RSS of each service.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
import pytest

from tests.harness import TEST_TOKEN
from tests.natsserver import NatsServer
from tests.reliability import helpers
from tests.reliability.figures import fmt

RATES = [float(r) for r in os.environ.get("COO_RELIABILITY_LOAD_RATES", "1,2,5,10,20").split(",")]
PHASE_SECONDS = float(os.environ.get("COO_RELIABILITY_LOAD_PHASE_SECONDS", "10"))
MAX_LIVE = 30
RSS_LIMIT_MIB = 1024


class RssSampler(threading.Thread):
    def __init__(self, stack, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval = stack, interval
        self.samples: dict[str, list[tuple[float, float]]] = {n: [] for n in stack.services}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.time()
            for name, proc in list(self.stack.procs.items()):
                rss = helpers.rss_mib(proc.pid)
                if rss is not None:
                    self.samples[name].append((now, rss))
            self.halt.wait(self.interval)

    def peak(self, name: str, start: float = 0, end: float = float("inf")) -> float:
        return max((r for t, r in self.samples[name] if start <= t <= end), default=0.0)


async def _submit_at_rates(base_url: str) -> list[dict]:
    """Submit missions at each rate for PHASE_SECONDS; one record per submission."""
    records: list[dict] = []
    headers = {"Authorization": f"Bearer {TEST_TOKEN}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30, limits=limits) as client:
        async def one(rate: float, n: int) -> None:
            goal = helpers.GOALS[n % len(helpers.GOALS)]
            rec = {"rate": rate, "t": time.time(), "status": None, "mission_id": None, "retry_after": None}
            try:
                resp = await client.post("/v1/missions", json={"goal": goal})
                rec["status"] = resp.status_code
                rec["retry_after"] = resp.headers.get("Retry-After")
                if resp.status_code == 201:
                    rec["mission_id"] = resp.json()["mission_id"]
                else:
                    rec["detail"] = resp.text[:200]
            except httpx.HTTPError as exc:
                rec["status"] = f"error: {type(exc).__name__}"
            rec["latency"] = time.time() - rec["t"]
            records.append(rec)

        tasks = []
        n = 0
        for rate in RATES:
            start = time.monotonic()
            count = int(rate * PHASE_SECONDS)
            for i in range(count):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(rate, n)))
                n += 1
            rest = start + PHASE_SECONDS - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        await asyncio.gather(*tasks)
    return records


@pytest.mark.timeout(420)
def test_rising_load_meets_backpressure_not_collapse(tmp_path, figures):
    nats = NatsServer(data_dir=tmp_path / "nats").start()
    stack = helpers.make_stack(tmp_path, nats, env={"COO_MAX_LIVE_MISSIONS": str(MAX_LIVE)})
    sampler = RssSampler(stack)
    try:
        stack.start()
        helpers.wait_api(stack)
        sampler.start()
        time.sleep(1.0)
        t_start = time.time()
        records = asyncio.run(_submit_at_rates(stack.url("orchestrator")))
        t_submitted = time.time()
        accepted = [r for r in records if r["status"] == 201]
        final = helpers.wait_final(stack, [r["mission_id"] for r in accepted], timeout=150)
        t_done = time.time()
        sampler.halt.set()
        sampler.join(5)
        crashed = {n: p.returncode for n, p in stack.procs.items() if p.poll() is not None}

        # ------------------------------------------------------------------ per rate
        held, past = None, []
        rows = []
        for rate in RATES:
            mine = [r for r in records if r["rate"] == rate]
            ok = [r for r in mine if r["status"] == 201]
            refused = [r for r in mine if r["status"] == 429]
            errors = [r for r in mine if not isinstance(r["status"], int) or r["status"] >= 500]
            done = [final.get(r["mission_id"], {}) for r in ok]
            completed = [m for m in done if m.get("status") == "completed"]
            durations = [m["duration_seconds"] for m in completed if m.get("duration_seconds") is not None]
            p95 = helpers.percentile(durations, 95)
            holds = not refused and not errors and len(completed) == len(ok) == len(mine)
            rows.append((rate, len(mine), len(ok), len(refused), len(errors), len(completed), p95))
            if holds and (held is None or held[0] == RATES[RATES.index(rate) - 1]):
                held = (rate, p95, len(mine))
            elif not holds:
                past.append((rate, len(mine), len(ok), len(refused), len(errors), len(completed)))
            figures.add("load", f"{rate:g} missions/s for {PHASE_SECONDS:g}s",
                        f"{len(ok)}/{len(mine)} accepted, {len(refused)} × 429, {len(errors)} × 5xx/error, "
                        f"{len(completed)}/{len(ok)} completed, p95 {fmt(p95, 's', 1)}",
                        ok=not errors and len(completed) == len(ok))

        all_refused = [r for r in records if r["status"] == 429]
        all_errors = [r for r in records if not isinstance(r["status"], int) or r["status"] >= 500]
        lost = [r["mission_id"] for r in accepted if final.get(r["mission_id"], {}).get("status") not in helpers.FINAL]
        not_completed = [r["mission_id"] for r in accepted
                         if final.get(r["mission_id"], {}).get("status") != "completed"]
        figures.add("load", "highest rate held", f"{held[0]:g} missions/s" if held else "none",
                    note=(f"every submission accepted and completed; p95 submit → completed {fmt(held[1], 's', 1)}"
                          if held else "even the lowest rate was refused or lost missions"),
                    ok=held is not None)
        retry_after = sorted({r["retry_after"] for r in all_refused})
        figures.add("load", "past it: refused with 429", len(all_refused),
                    note=(f"admission bound COO_MAX_LIVE_MISSIONS={MAX_LIVE}; "
                          f"Retry-After {', '.join(map(str, retry_after))}")
                    if all_refused else "backpressure never engaged")
        figures.add("load", "429 without Retry-After", sum(1 for r in all_refused if not r["retry_after"]),
                    target="0", ok=all(r["retry_after"] for r in all_refused))
        figures.add("load", "5xx answers or failed requests", len(all_errors), target="0", ok=not all_errors,
                    note="; ".join(sorted({f"{r['status']}: {r.get('detail', '')[:60]}" for r in all_errors})[:3]))
        figures.add("load", "accepted missions completed", f"{len(accepted) - len(not_completed)}/{len(accepted)}",
                    target=f"{len(accepted)}/{len(accepted)}", ok=not not_completed,
                    note=f"all final {t_done - t_submitted:.0f}s after the last submission; lost {len(lost)}")
        figures.add("load", "services crashed", len(crashed), target="0", ok=not crashed,
                    note=", ".join(f"{n} exit {c}" for n, c in crashed.items()))
        lat = [r["latency"] for r in records if isinstance(r["status"], int)]
        figures.add("load", "POST /v1/missions latency p50 / p95 / max",
                    f"{fmt(helpers.percentile(lat, 50) * 1000, 'ms', 0)}"
                    f" / {fmt(helpers.percentile(lat, 95) * 1000, 'ms', 0)}"
                    f" / {fmt(max(lat) * 1000, 'ms', 0)}", note="429s included")
        peaks = {n: sampler.peak(n) for n in stack.services}
        first = {n: sampler.peak(n, 0, t_start) for n in stack.services}
        over = {n: p for n, p in peaks.items() if p > RSS_LIMIT_MIB}
        figures.add("load", "peak RSS by service (MiB)",
                    ", ".join(f"{n} {first[n]:.0f}→{p:.0f}" for n, p in peaks.items()),
                    target=f"each < {RSS_LIMIT_MIB}", ok=not over, note="idle → peak under load, VmRSS from /proc")

        assert not crashed, crashed
        assert not all_errors, all_errors[:5]
        assert all(r["retry_after"] for r in all_refused)
        assert not lost, lost[:5]
        assert held is not None, rows
        assert not over, peaks
    finally:
        sampler.halt.set()
        stack.stop()
        nats.cleanup()

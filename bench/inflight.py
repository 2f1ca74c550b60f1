"""Missions in flight against a slow LLM: what a user with a real provider pays.

The real services as processes (``bench.stack``), mockllm answering every call in 2 s
(``[mock:slow=2]``, about what a real provider takes), code really run in the sandbox. First one
mission alone (the baseline), then batches of 50, 200 and 500 submitted at once. LLM calls are
I/O: with enough calls in flight a batch should take little longer than one mission.

Figures: a batch's completion time (first creation to last finish, server-side timestamps) over
one mission's; CPU seconds per mission (every service process and NATS, children included);
resident memory per mission in flight (the services' RSS at the batch's end over their RSS at
rest); budget reserve+settle operations per second reached.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from bench import stack as stack_mod
from bench.common import Config, Result, ratio

TITLE = "Missions in flight against a 2 s LLM"
SLOW = "[mock:slow=2]"
GOAL_AT_200 = 1.5
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its waited-for children (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICKS


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _pids(s: stack_mod.Stack) -> list[int]:
    pids = [p.pid for p in s.s.procs.values()] + [p.pid for p in s.extra]
    if s.nats.pid is not None:
        pids.append(s.nats.pid)
    return pids


def _budget_ops(s: stack_mod.Stack) -> float:
    text = httpx.get(s.s.url("budget", "/metrics"), timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("coo_budget_operations_total{") and ('operation="reserve"' in line
                                                                 or 'operation="settle"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(cfg: Config) -> Result:
    result = Result("inflight", TITLE)
    why = stack_mod.missing()
    if why:
        result.skipped = why
        return result
    sizes = [50, 200, 500] if not cfg.smoke else [5]
    env = {"COO_MAX_LIVE_MISSIONS": "2000"}
    rows: dict[int, dict] = {}
    with stack_mod.Stack(cfg.work_dir, env=env) as s:
        s.run(2, 2)                                               # warm-up, no slow marker
        pids = _pids(s)
        rest_rss = sum(_rss_bytes(p) for p in pids)
        alone = [s.run(1, 1, first=i, marker=SLOW)["wall_seconds"] for i in range(cfg.n(3, 1))]
        single = sorted(alone)[len(alone) // 2]
        for n in sizes:
            cpu0, ops0 = sum(_cpu_seconds(p) for p in pids), _budget_ops(s)
            out = s.run(n, n, marker=SLOW, timeout=600.0)
            peak_rss = sum(_rss_bytes(p) for p in pids)
            cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
            ops = _budget_ops(s) - ops0
            completed = sum(1 for m in out["missions"] if m["status"] == "completed")
            rows[n] = {"wall_s": round(out["wall_seconds"], 2), "ratio": ratio(out["wall_seconds"], single),
                       "cpu_s_per_mission": round(cpu / n, 3),
                       "rss_kib_per_mission": round(max(0, peak_rss - rest_rss) / n / 1024, 1),
                       "budget_ops_per_s": round(ops / out["wall_seconds"], 1), "completed": completed,
                       "statuses": out["statuses"]}
    for n, row in rows.items():
        fig = result.add(f"{n} missions at once: completion time", row["wall_s"], single, "s", row["ratio"],
                         "x one mission alone", "one mission alone", higher_is_better=False,
                         goal=GOAL_AT_200 if n == 200 else None)
        fig.note = f"{row['completed']}/{n} completed"
        result.add(f"{n} missions at once: CPU per mission", row["cpu_s_per_mission"], None, "CPU s", None)
        result.add(f"{n} missions at once: RSS per mission in flight", row["rss_kib_per_mission"], None, "KiB", None)
        result.add(f"{n} missions at once: budget reserve+settle", row["budget_ops_per_s"], None, "ops/s", None)
    result.details = {"one_mission_alone_s": [round(x, 2) for x in alone], "batches": rows,
                      "llm_seconds_per_call": 2.0}
    result.notes.append(f"one mission alone {single:.2f} s (3 LLM calls of 2 s + a sandbox run); batches of "
                        f"{', '.join(map(str, sizes))} submitted at once against one replica of each service")
    return result

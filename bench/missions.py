"""Missions end to end: the real services as processes (``bench.stack``), mockllm answering at once,
code really run in the bubblewrap sandbox, telemetry exported to a local collector.

* Orchestration overhead per mission: missions one at a time, each mission's wall time (its own
  created → finished timestamps) minus the seconds its LLM calls and its sandbox runs took (the
  agents' and the sandbox's duration histograms, read before and after each mission). What is
  left is the bus, the state machine, KV, budget calls, the timeline and the services' own work.
* Missions per minute with one agent replica and with two (the replicas share the durable task
  consumers), several missions in flight; batches alternate 1/2/2/1 replicas on one stack.
"""

from __future__ import annotations

from bench import stack as stack_mod
from bench.common import Config, Result, median, percentile, ratio

TITLE = "Missions: throughput and orchestration overhead"


def run(cfg: Config) -> Result:
    result = Result("missions", TITLE)
    why = stack_mod.missing()
    if why:
        result.skipped = why
        return result
    one, batch, conc = cfg.n(30, 3), cfg.n(48, 4), 8
    plan = [1, 2, 2, 1] if not cfg.smoke else [1, 2]
    per_minute: dict[int, list[float]] = {1: [], 2: []}
    statuses: set[str] = set()
    with stack_mod.otlp_endpoint(cfg.work_dir) as (endpoint, what), \
            stack_mod.Stack(cfg.work_dir, env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) as s:
        s.run(2, 2)                                                  # warm-up
        seq = s.run_one_by_one(one, first=2)
        statuses |= {m["status"] for m in seq}
        for i, agents in enumerate(plan):
            if len(s.extra) + 1 < agents:
                while len(s.extra) + 1 < agents:
                    s._add_agent(len(s.extra) + 1)
                s.run(4, 4)                                          # warm-up of the new replica
            while len(s.extra) + 1 > agents:
                _stop_replica(s)
            out = s.run(batch, conc, first=i * batch)
            statuses |= set(out["statuses"])
            per_minute[agents].append(batch / out["wall_seconds"] * 60)

    wall = [m["duration_seconds"] for m in seq]
    overhead = [max(0.0, m["duration_seconds"] - m["llm_seconds"] - m["sandbox_seconds"]) for m in seq]
    share = [o / w for o, w in zip(overhead, wall) if w]
    seq_rate = 60 / median(wall)
    one_rate, two_rate = median(per_minute[1]), median(per_minute[2])
    result.add(f"missions per minute, 1 agent, {conc} in flight", one_rate, seq_rate, "missions/min",
               ratio(one_rate, seq_rate), "x one at a time", "one at a time")
    result.add(f"missions per minute, 2 agents, {conc} in flight", two_rate, one_rate, "missions/min",
               ratio(two_rate, one_rate), "x 1 agent", "1 agent")
    for p in (50, 99):
        result.add(f"orchestration overhead per mission, p{p}", percentile(overhead, p) * 1000,
                   percentile(wall, p) * 1000, "ms", percentile(share, p), "of the mission's wall time",
                   f"mission wall time p{p}", higher_is_better=False)
    result.details = {
        "one_at_a_time": {
            "missions": len(seq),
            "wall_ms": {f"p{p}": round(percentile(wall, p) * 1000, 1) for p in (50, 90, 99)},
            "llm_ms": {f"p{p}": round(percentile([m["llm_seconds"] for m in seq], p) * 1000, 1) for p in (50, 99)},
            "sandbox_ms": {f"p{p}": round(percentile([m["sandbox_seconds"] for m in seq], p) * 1000, 1)
                           for p in (50, 99)},
            "overhead_ms": {f"p{p}": round(percentile(overhead, p) * 1000, 1) for p in (50, 90, 99)},
        },
        "missions_per_minute": {str(k): [round(x, 1) for x in v] for k, v in per_minute.items()},
        "batch": {"missions": batch, "in_flight": conc, "replica_plan": plan},
        "statuses": sorted(statuses),
        "telemetry": what,
    }
    result.series["breakdown_ms"] = [
        {"llm": round(m["llm_seconds"] * 1000, 2), "sandbox": round(m["sandbox_seconds"] * 1000, 2),
         "overhead": round(o * 1000, 2)} for m, o in zip(seq, overhead)]
    result.notes.append(f"{len(seq)} one at a time, batches of {batch} with {conc} in flight "
                        f"(replicas {'/'.join(map(str, plan))}); final statuses {', '.join(sorted(statuses))}; "
                        f"telemetry to {what}")
    return result


def _stop_replica(s: stack_mod.Stack) -> None:
    import signal

    proc = s.extra.pop()
    s.extra_urls.pop()
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)

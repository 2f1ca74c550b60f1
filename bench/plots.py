"""The plots of a run (matplotlib, PNG): ``draw(run, out_dir, date)`` returns the files written."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GOOD, BAD, NEUTRAL, RAW, OURS = "#2e7d32", "#c62828", "#78909c", "#90a4ae", "#1565c0"


def _by_name(run: dict) -> dict[str, dict]:
    return {b["name"]: b for b in run["benchmarks"] if not b.get("crashed")}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def ratios(run: dict, path: Path) -> Path | None:
    """Every figure's ratio to its same-run baseline; goals marked, met in green, missed in red."""
    rows = []
    for b in run["benchmarks"]:
        for f in b.get("figures", []):
            if f.get("ratio") is None or not f["ratio"] or f["ratio"] != f["ratio"]:
                continue
            rows.append((f"{b['name']}: {f['name']}", f["ratio"], f["ratio_label"],
                         f["goal"] if f.get("goal_on") == "ratio" else None, f.get("met")))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.36 * len(rows) + 1.4))
    ys = range(len(rows))[::-1]
    colors = [NEUTRAL if goal is None else (GOOD if met else BAD) for _, _, _, goal, met in rows]
    ax.barh(list(ys), [r[1] for r in rows], color=colors)
    for y, (_, value, label, goal, _) in zip(ys, rows):
        ax.text(value * 1.05, y, f"{value:.3g} {label}", va="center", fontsize=7)
        if goal is not None:
            ax.plot([goal, goal], [y - 0.4, y + 0.4], color="black", lw=1.5)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    lo = min(r[1] for r in rows)
    ax.set_xlim(lo / 2, max(*(r[1] for r in rows), 1) * 8)
    ax.set_title("Each figure against its baseline in the same run (black tick: goal; green met, red missed)",
                 fontsize=9)
    return _save(fig, path)


def bus(res: dict, path: Path) -> Path | None:
    series = res.get("series", {})
    panels = [(k, t) for k, t in (("rr_latency_us", "request/reply, one caller"),
                                  ("js_latency_us", "JetStream publish→consume, one at a time")) if k in series]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for side, color, style, label in (("raw", RAW, "-", "raw nats-py"),
                                          ("untraced", OURS, "--", "coo.common.bus, tracing off"),
                                          ("bus", OURS, "-", "coo.common.bus, traced")):
            xs = sorted(series[key].get(side, []))
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], color=color, linestyle=style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency per hop (µs)")
        ax.set_ylabel("fraction of hops")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def budget(res: dict, path: Path) -> Path | None:
    data = res.get("series", {}).get("ops_per_s")
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    clients = data["clients"]
    styles = {"raw request/reply pairs": (RAW, "--")}
    for name, values in data.items():
        if name == "clients":
            continue
        color, ls = styles.get(name, (None, "-"))
        ax.plot(clients, values, marker="o", label=name, color=color, ls=ls)
    _log_log(ax, clients, [str(c) for c in clients], "concurrent clients", "reserve+settle operations / s",
             "Budget ledger (JetStream KV, compare-and-set) vs raw request/reply", x_base=2)
    return _save(fig, path)


def _log_log(ax, xs: list, labels: list[str], xlabel: str, ylabel: str, title: str, x_base: int = 10) -> None:
    ax.set_xscale("log", base=x_base)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def missions(res: dict | None, tele: dict | None, path: Path) -> Path | None:
    rows = (res or {}).get("series", {}).get("breakdown_ms")
    durations = (tele or {}).get("series", {}).get("mission_seconds")
    if not rows and not durations:
        return None
    n = (1 if rows else 0) + (1 if durations else 0)
    fig, axes = plt.subplots(1, n, figsize=(11 if n == 2 else 7, 4), squeeze=False)
    axes = list(axes[0])
    if rows:
        ax = axes.pop(0)
        xs = range(len(rows))
        bottom = [0.0] * len(rows)
        for key, color, label in (("llm", "#8e24aa", "LLM calls"), ("sandbox", "#f9a825", "sandbox runs"),
                                  ("overhead", OURS, "orchestration (everything else)")):
            vals = [r[key] for r in rows]
            ax.bar(xs, vals, bottom=bottom, color=color, label=label)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel("mission (one at a time)")
        ax.set_ylabel("ms")
        ax.set_title("Where a mission's wall time goes (mockllm answering at once)", fontsize=10)
        ax.legend(fontsize=8)
    if durations:
        ax = axes.pop(0)
        data = [[x * 1000 for x in durations.get(k, [])] for k in ("off", "on")]
        ax.boxplot(data, tick_labels=["OTEL_SDK_DISABLED", "telemetry on"], showfliers=True)
        ax.set_ylabel("mission wall time (ms)")
        ax.set_title("Missions one at a time, telemetry off vs on", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def sandbox(res: dict, path: Path) -> Path | None:
    series = res.get("series", {})
    panels = [k for k in ("bubblewrap", "docker") if k in series]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        s = series[key]
        ax.boxplot([s["bare"], s["sandbox"], s["sandbox_whole_call"]],
                   tick_labels=["bare\nsubprocess", f"{key}:\nstart→exit", f"{key}:\nwhole run()"])
        ax.set_ylabel("ms")
        ax.set_title(f"A one-line python3 script: bare vs {key}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def history(res: dict, path: Path) -> Path | None:
    data = res.get("series", {}).get("ms")
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = data["finished missions"]
    for key, label in (("list", "list, first page of 50"), ("get", "get one"), ("admission", "admission check"),
                       ("housekeeping", "housekeeping pass")):
        ax.plot(sizes, data[key], marker="o", label=label)
    _log_log(ax, sizes, [f"{n:,}" for n in sizes], "finished missions in the bucket", "ms (median)",
             "Mission history read through the index: cost vs history size")
    return _save(fig, path)


def draw(run: dict, out_dir: Path, date: str) -> list[Path]:
    by = _by_name(run)
    out: list[Path | None] = [ratios(run, out_dir / f"{date}-ratios.png")]
    if "bus" in by:
        out.append(bus(by["bus"], out_dir / f"{date}-bus.png"))
    if "missions" in by or "telemetry" in by:
        out.append(missions(by.get("missions"), by.get("telemetry"), out_dir / f"{date}-missions.png"))
    if "budget" in by:
        out.append(budget(by["budget"], out_dir / f"{date}-budget.png"))
    if "sandbox" in by:
        out.append(sandbox(by["sandbox"], out_dir / f"{date}-sandbox.png"))
    if "history" in by:
        out.append(history(by["history"], out_dir / f"{date}-history.png"))
    return [p for p in out if p is not None]

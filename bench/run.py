"""Run the benchmarks: ``python -m bench.run`` (``make bench``) or ``--smoke`` (``make bench-smoke``).

A real run writes ``bench/results/<date>.json`` and ``bench/results/<date>-*.png``, prints a table
and rewrites the README's performance section (between its ``bench`` markers). ``--smoke`` runs
every benchmark briefly so none can rot: it writes only to a temporary directory, never the
README, and exits non-zero only when a benchmark crashes (a missed goal is a result, not an error).

Each benchmark runs in a process of its own (``--worker NAME``), so one benchmark's global
set-up (a tracer provider, structlog's configuration) cannot colour another's, and a crash of
one is reported while the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import BENCHMARKS
from bench.common import Config, Result, fmt, machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- BEGIN bench (written by `make bench`) -->"
END = "<!-- END bench -->"
COMMAND = "make bench"
TIMEOUT = {"smoke": 80, "full": 900}


# ------------------------------------------------------------------------ one benchmark
def worker(name: str, result_file: Path, smoke: bool, work_dir: Path) -> int:
    """Run one benchmark in this process and write its result as JSON."""
    os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")   # never a real collector
    module = importlib.import_module(f"bench.{name}")
    started = time.perf_counter()
    result: Result = module.run(Config(smoke=smoke, work_dir=work_dir))
    result.seconds = time.perf_counter() - started
    result_file.write_text(json.dumps(result.as_dict(), default=str))
    return 0


def _spawn(name: str, smoke: bool, tmp: Path) -> dict:
    """Run ``name`` in a child process; its result, or a record of its crash."""
    result_file = tmp / f"{name}.json"
    log_file = tmp / f"{name}.log"
    work = tmp / name
    work.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "bench.run", "--worker", name, "--result", str(result_file),
           "--work-dir", str(work), *(["--smoke"] if smoke else [])]
    started = time.perf_counter()
    with open(log_file, "wb") as log:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False,
                                  timeout=TIMEOUT["smoke" if smoke else "full"])
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.perf_counter() - started
    if code == 0 and result_file.exists():
        return json.loads(result_file.read_text())
    tail = log_file.read_text(errors="replace")[-3000:]
    return {"name": name, "title": name, "crashed": True, "exit": code, "seconds": round(seconds, 1),
            "log_tail": tail, "figures": [], "notes": [], "details": {}, "series": {}}


# ---------------------------------------------------------------------------- reporting
def _met(fig: dict) -> str:
    return {True: "yes", False: "**no**", None: ""}[fig.get("met")]


def rows(results: list[dict]) -> list[list[str]]:
    """One row per figure: benchmark, figure, value, baseline, ratio, goal, met."""
    out = []
    for res in results:
        if res.get("crashed"):
            out.append([res["name"], f"CRASHED (exit {res['exit']})", "", "", "", "", ""])
            continue
        if res.get("skipped") and not res["figures"]:
            out.append([res["name"], f"skipped: {res['skipped']}", "", "", "", "", ""])
            continue
        for fig in res["figures"]:
            ratio = f"{fmt(fig['ratio'])} {fig['ratio_label']}".strip() if fig["ratio"] is not None else ""
            base = f"{fmt(fig['baseline'])} ({fig['baseline_label']})" if fig["baseline"] is not None else ""
            out.append([res["name"], fig["name"], f"{fmt(fig['value'])} {fig['unit']}", base, ratio,
                        fig["goal_text"], _met(fig)])
    return out


HEADER = ["benchmark", "figure", "value", "baseline (same run)", "ratio", "goal", "met"]


def print_table(results: list[dict]) -> None:
    table = [HEADER, *rows(results)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for res in results:
        for note in res.get("notes", []):
            print(f"  [{res['name']}] {note}")
        if res.get("crashed"):
            print(f"\n--- {res['name']} crashed; the end of its output:\n{res['log_tail']}")


def markdown(run: dict, plots: list[Path]) -> str:
    m = run["machine"]
    lines = [
        f"Measured by `{run['command']}` (`.venv/bin/python -m bench.run`) on {run['date']}: "
        f"{m['nproc']} CPUs ({m['cpu']}), "
        f"{m['memory_gib']} GiB memory, Python {m['python']}, {m['platform']}; "
        f"{run['seconds'] / 60:.1f} minutes. Every figure is a ratio against a baseline measured in "
        f"the same run (details and raw samples: `bench/results/{run['date']}.json`). Goals are "
        f"targets, not tests: a missed one is reported here, never failed on.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "| " + " | ".join("---" for _ in HEADER) + " |",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows(run["benchmarks"])]
    lines.append("")
    for res in run["benchmarks"]:
        for note in res.get("notes", []):
            lines.append(f"- **{res['name']}**: {note}")
    lines.append("")
    for plot in plots:
        rel = plot.relative_to(ROOT).as_posix()
        lines.append(f"![{plot.stem}]({rel})")
    return "\n".join(lines).rstrip() + "\n"


def update_readme(section: str) -> bool:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} markers; not updated", file=sys.stderr)
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{section}{END}{tail}")
    return True


def render(results_json: Path) -> int:
    """Plots and README section again from a saved run (after a change of layout, say)."""
    from bench import plots as plotting

    run = json.loads(results_json.read_text())
    out_dir = results_json.resolve().parent
    plots = plotting.draw(run, out_dir, results_json.stem)
    print_table(run["benchmarks"])
    if out_dir.resolve() == RESULTS.resolve() and update_readme(markdown(run, plots)):
        print("README.md: performance section updated")
    return 0


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="each benchmark briefly; no README, no results")
    ap.add_argument("--only", default="", help="comma-separated benchmarks (default: all): " + ",".join(BENCHMARKS))
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    ap.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                    help="draw the plots and rewrite the README section from a saved run, measuring nothing")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return worker(args.worker, args.result, args.smoke, args.work_dir or Path(tempfile.gettempdir()))

    if args.render:
        return render(args.render)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")

    started = time.perf_counter()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    results = []
    with tempfile.TemporaryDirectory(prefix="coo-bench-") as tmp:
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            res = _spawn(name, args.smoke, Path(tmp))
            state = "CRASHED" if res.get("crashed") else ("skipped" if res.get("skipped") else "done")
            print(f"[bench] {name}: {state} in {res.get('seconds', 0):.1f}s", flush=True)
            results.append(res)
        run = {"date": date, "command": "make bench-smoke" if args.smoke else COMMAND, "smoke": args.smoke,
               "machine": machine(), "seconds": round(time.perf_counter() - started, 1), "benchmarks": results}
        print()
        print_table(results)
        out_dir = args.out or (Path(tmp) / "results" if args.smoke else RESULTS)
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = names != list(BENCHMARKS)        # --only: never mistaken for (or written over) a full run
        stem = f"{date}-only-{'-'.join(names)}" if partial else date
        out = out_dir / f"{stem}.json"
        out.write_text(json.dumps(run, indent=1, default=str))
        plots = []
        try:
            from bench import plots as plotting

            plots = plotting.draw(run, out_dir, stem)
        except Exception:  # noqa: BLE001 - a plot that fails is reported; it does not lose the results
            print("plots failed:\n" + traceback.format_exc(), file=sys.stderr)
            if args.smoke:
                results.append({"name": "plots", "crashed": True, "exit": "exception", "log_tail": "",
                                "figures": []})
        if not args.smoke:
            print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
            for p in plots:
                print(f"plot: {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
            if not (args.no_readme or partial) and out_dir == RESULTS and update_readme(markdown(run, plots)):
                print("README.md: performance section updated")
    crashed = [r["name"] for r in results if r.get("crashed")]
    if crashed:
        print(f"\ncrashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

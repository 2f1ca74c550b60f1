"""Sandbox: a trivial script under the bubblewrap backend against the same ``python3`` run as a
bare subprocess, and under Docker when an engine answers.

Start-to-exit is measured the same way on both sides: from just before the process is spawned to
its exit with its output read (the backend's own ``duration_seconds`` for the sandbox). The whole
``backend.run()`` call (validation, the uid pool, memfds, the sweep of the uid afterwards) is
reported too. Runs alternate between the sides, one at a time.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import Config, Result, median, percentile, ratio

TITLE = "Sandbox: bubblewrap vs a bare subprocess"

SCRIPT = "import sys\nprint('hello from', sys.version_info[:2])\n"
PYTHON = "/usr/bin/python3"


async def _bare(work: Path) -> float:
    """The same script with the same interpreter, no isolation at all."""
    (work / "main.py").write_text(SCRIPT)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "main.py", cwd=work, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                               "PYTHONDONTWRITEBYTECODE": "1"})
    out, _ = await proc.communicate()
    elapsed = time.monotonic() - started
    if proc.returncode != 0 or b"hello" not in out:
        raise RuntimeError(f"bare run failed: {proc.returncode} {out!r}")
    return elapsed


async def _sandboxed(backend, i: int) -> tuple[float, float]:
    """(start-to-exit as the backend measured it, the whole run() call)."""
    from coo.sandbox.backends import RunSpec

    spec = RunSpec(run_id=f"bench-{i}", files={"main.py": SCRIPT}, command=["python3", "main.py"])
    started = time.monotonic()
    outcome = await backend.run(spec)
    whole = time.monotonic() - started
    if outcome.outcome != "ok" or "hello" not in outcome.stdout:
        raise RuntimeError(f"sandboxed run failed: {outcome.outcome} {outcome.error} {outcome.stderr[-500:]}")
    return outcome.duration_seconds, whole


async def _measure(backend, n: int, work: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"bare": [], "sandbox": [], "sandbox_whole_call": []}
    await _bare(work)
    await _sandboxed(backend, -1)                 # warm-up (page cache, the availability probe)
    for i in range(n):
        for side in (("bare", "sandbox") if i % 2 == 0 else ("sandbox", "bare")):
            if side == "bare":
                out["bare"].append(await _bare(work))
            else:
                exit_s, whole = await _sandboxed(backend, i)
                out["sandbox"].append(exit_s)
                out["sandbox_whole_call"].append(whole)
    return out


def _figures(result: Result, label: str, samples: dict[str, list[float]]) -> None:
    bare, boxed, whole = (median(samples[k]) * 1000 for k in ("bare", "sandbox", "sandbox_whole_call"))
    result.add(f"{label}: p50 start-to-exit", boxed, bare, "ms", ratio(boxed, bare), "x bare subprocess",
               "bare python3 subprocess", higher_is_better=False)
    result.add(f"{label}: p50 whole backend.run() call", whole, bare, "ms", ratio(whole, bare),
               "x bare subprocess", "bare python3 subprocess", higher_is_better=False)
    result.details[label] = {k: {f"p{p}": round(percentile(v, p) * 1000, 2) for p in (50, 90, 99)}
                             for k, v in samples.items()}
    result.series[label] = {k: [round(x * 1000, 3) for x in v] for k, v in samples.items()}


def run(cfg: Config) -> Result:
    from coo.sandbox.backends import BubblewrapBackend, DockerBackend

    result = Result("sandbox", TITLE)
    n = cfg.n(60, 5)
    work = Path(tempfile.mkdtemp(prefix="bare-", dir=cfg.work_dir))
    bwrap = BubblewrapBackend()
    ok, why = bwrap.available()
    if ok:
        _figures(result, "bubblewrap", asyncio.run(_measure(bwrap, n, work)))
        result.notes.append(f"{n} runs per side of a one-line script ({PYTHON}); {why}")
    else:
        result.notes.append(f"bubblewrap skipped: {why}")
    docker = DockerBackend()
    ok, why = docker.available()
    if ok:
        _figures(result, "docker", asyncio.run(_measure(docker, max(3, n // 3), work)))
    else:
        result.notes.append(f"docker skipped: {why}")
    if not result.figures:
        result.skipped = "neither bubblewrap nor docker is usable here"
    return result

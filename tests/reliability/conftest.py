"""The reliability suite (``make test-reliability``): skipped unless ``COO_RELIABILITY=1``, so plain
``make test`` stays fast; every test records figures, printed as one table at the end of the run
and written to docs/reliability.md."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("COO_RELIABILITY", "").strip().lower() in ("1", "true", "yes", "on")

if not ENABLED:
    # Not even imported: these modules need the reliability extras (schemathesis, ...) and minutes.
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def figures(request):
    from tests.reliability.figures import Recorder

    return Recorder(request.node.nodeid)


_DURATIONS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if ENABLED:
        key = report.nodeid.split("::", 1)[0]
        _DURATIONS[key] = _DURATIONS.get(key, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not ENABLED:
        return
    from tests.reliability import figures as f

    if not f.FIGURES:
        return
    budget = {"test_faults.py": 150, "test_cluster.py": 240, "test_load.py": 120, "test_bad_input.py": 150,
              "test_sandbox_attacks.py": 60, "test_secret_leaks.py": 120, "test_scrub_corpus.py": 120}
    for path, seconds in sorted(_DURATIONS.items()):
        name = path.rsplit("/", 1)[-1]
        rec = f.Recorder(f"{path}::(runtime)")
        rec.add("suite", f"runtime of {name}", f"{seconds:.0f}s",
                target=f"< {budget[name]}s" if name in budget else "", ok=seconds < budget[name] if name in budget
                else None)
        f.FIGURES[-1].command = f.command_for(path)
    if len(_DURATIONS) > 1:
        total = sum(_DURATIONS.values())
        rec = f.Recorder("tests/reliability::(runtime)")
        rec.add("suite", "runtime of the whole suite (this run)", f"{total:.0f}s", target="< 480s", ok=total < 480,
                note=f"{len(_DURATIONS)} files; CI runs it after the main suite")
        f.FIGURES[-1].command = "make test-reliability"
    tr = terminalreporter
    tr.section("reliability figures")
    for line in f.terminal_lines(f.FIGURES):
        tr.write_line(line)
    path = f.write_doc(f.FIGURES)
    tr.write_line(f"written to {path.relative_to(f.REPO_ROOT)}")

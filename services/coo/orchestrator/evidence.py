"""What a sandbox run proves: a task can pass only on a run that succeeded and ran tests.

QA judges the work, but it cannot approve a red run: the orchestrator reads the run's own
evidence (outcome, exit code, the test runner's summary) and overrules such a verdict.
"""

from __future__ import annotations

import re

from coo.v1 import sandbox_pb2

# unittest: "Ran 0 tests in 0.000s" (and, from Python 3.12, "NO TESTS RAN" with exit code 5).
_UNITTEST_NONE = re.compile(r"^Ran 0 tests in |^NO TESTS RAN\b", re.MULTILINE)
# pytest: "collected 0 items" / "no tests ran in 0.01s" (exit code 5).
_PYTEST_NONE = re.compile(r"^collected 0 items\b|^=+ no tests ran\b|\bno tests ran in [\d.]+s", re.MULTILINE)
PYTEST_NO_TESTS_EXIT = 5


def outcome_name(outcome: int) -> str:
    values = sandbox_pb2.SandboxOutcome.values()
    name = sandbox_pb2.SandboxOutcome.Name(sandbox_pb2.SandboxOutcome.ValueType(outcome)) if outcome in values else ""
    return name.removeprefix("SANDBOX_OUTCOME_").lower() or "unspecified"


def failure(r: sandbox_pb2.SandboxResult) -> str | None:
    """``None`` when the run is evidence of success, else why it is not (one line)."""
    outcome = outcome_name(r.outcome)
    if r.outcome not in (sandbox_pb2.SANDBOX_OUTCOME_OK, sandbox_pb2.SANDBOX_OUTCOME_FAILED):
        cause = f": {r.error}" if r.error else ""
        return f"the sandbox run did not succeed (outcome {outcome}, exit code {r.exit_code}){cause}"
    output = f"{r.stdout}\n{r.stderr}"
    if r.exit_code == PYTEST_NO_TESTS_EXIT and _PYTEST_NONE.search(output):
        return "the command ran no test (pytest collected none, exit code 5)"
    if r.exit_code != 0 or r.outcome != sandbox_pb2.SANDBOX_OUTCOME_OK:
        return f"the command exited with code {r.exit_code}"
    if _UNITTEST_NONE.search(output) or _PYTEST_NONE.search(output):
        return "the command ran no test at all (\"Ran 0 tests\"): a check that tests nothing is not a success"
    return None


def output_tail(r: sandbox_pb2.SandboxResult, limit: int = 1500) -> str:
    """The end of the run's output (stderr first: unittest and tracebacks write there)."""
    parts = [p.strip() for p in (r.stderr, r.stdout) if p.strip()]
    text = "\n".join(parts)
    return text if len(text) <= limit else "…" + text[-(limit - 1):]

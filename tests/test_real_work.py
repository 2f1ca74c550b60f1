"""Missions that do real work, end to end with the default settings: every service a real process,
a real nats-server, the mock LLM over HTTP in the shapes real providers answer, code really run
in the bubblewrap sandbox over the mission's shared workspace.

The mock is not kind: a later task's engineer writes only its own files and imports the earlier
tasks' modules, so a mission passes only if the workspace really carries them; the sycophant and
lazy scenarios pass their own QA, so only the run's evidence stops them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.harness import TEST_TOKEN, ServiceStack, process_stack

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (make test installs it)")

RPN = "Build an RPN calculator on top of a stack, with tests"
INVENTORY = "Build an inventory with a stock ledger and a stock report, with tests"
RPN_FILES = {"stack.py", "test_stack.py", "rpn.py", "test_rpn.py", "calculator.py", "test_calculator.py"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with process_stack(tmp_path_factory.mktemp("realwork")) as s:  # the defaults: nothing tuned for these tests
        yield s


def _types(events) -> list[str]:
    return [e["type"] for e in events]


def _coo(stack: ServiceStack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COO_API_URL": stack.url("orchestrator"), "COO_API_TOKEN": TEST_TOKEN}
    return subprocess.run([sys.executable, "-m", "coo.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def _run(stack: ServiceStack, goal: str, want=("completed", "failed", "budget_exceeded"), timeout=150.0) -> dict:
    m = stack.submit(goal)
    return stack.wait_status(m["mission_id"], set(want), timeout=timeout)


def test_a_dependent_multi_task_mission_builds_one_workspace(stack, tmp_path):
    done = _run(stack, RPN)
    assert done["status"] == "completed", done
    assert [t["title"] for t in done["tasks"]] == ["Stack class", "RPN evaluator", "RPN calculator front end"]
    assert all(t["status"] == "passed" for t in done["tasks"])
    mid = done["mission_id"]
    listing = _coo(stack, "artifacts", mid, "--json")
    assert listing.returncode == 0, listing.stderr
    view = json.loads(listing.stdout)
    assert {f["name"] for f in view["files"]} == RPN_FILES and view["final"]
    # one version per attempt: each task changed only its own files
    assert [(v["task_id"].rsplit(".", 1)[-1], v["outcome"], sorted(v["changed"])) for v in view["versions"]] == [
        ("t0", "passed", ["stack.py", "test_stack.py"]), ("t1", "passed", ["rpn.py", "test_rpn.py"]),
        ("t2", "passed", ["calculator.py", "test_calculator.py"])]
    out = tmp_path / "result"
    written = _coo(stack, "artifacts", mid, "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert "wrote 6 file(s)" in written.stdout and {p.name for p in out.iterdir()} == RPN_FILES
    # the mission's result is a working program: its tests pass here too, together
    tests = subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=out, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=False)
    assert tests.returncode == 0 and re.search(r"Ran \d+ tests", tests.stderr), tests.stderr
    with stack.api() as api:
        one = api.get(f"/v1/missions/{mid}/workspace/files/rpn.py")
        assert one.status_code == 200 and "from stack import Stack" in one.text
        assert api.get(f"/v1/missions/{mid}/workspace/files/nope.py").status_code == 404
        tar = api.get(f"/v1/missions/{mid}/workspace.tar.gz")
        assert tar.status_code == 200 and tar.headers["content-type"] == "application/gzip"
    human = _coo(stack, "artifacts", mid)
    assert human.returncode == 0 and "rpn.py" in human.stdout and "t1 attempt 1" in human.stdout


@pytest.mark.parametrize("provider", ["deepseek", "ollama", "reasoning"])
def test_a_dependent_mission_completes_on_every_provider_personality(stack, provider):
    done = _run(stack, f"{INVENTORY} [mock:provider={provider}]")
    assert done["status"] == "completed", done
    with stack.api() as api:
        files = {f["name"] for f in api.get(f"/v1/missions/{done['mission_id']}/workspace").json()["files"]}
    assert {"inventory.py", "ledger.py", "report.py"} <= files
    if provider == "deepseek":  # learnt and shown once: the agent's health says what it asks for now
        health = httpx.get(stack.url("agent", "/readyz"), timeout=5).text
        assert "json_object" in health, health


def test_a_sycophant_is_overruled_and_does_not_complete(stack):
    done = _run(stack, "write a FizzBuzz function with tests [mock:sycophant]")
    assert done["status"] == "failed" and "failed after 3 attempt(s)" in done["error"], done
    events = stack.timeline(done["mission_id"])
    overruled = [e for e in events if e["type"] == "qa.overruled"]
    assert len(overruled) == 3 and all("exited with code 1" in e["attributes"]["reason"] for e in overruled)
    assert "task.reviewed" in _types(events)  # QA did approve each time
    metrics = httpx.get(stack.url("orchestrator", "/metrics"), timeout=5).text
    assert re.search(r'^coo_qa_overruled_total\{model="mock-small"\} [3-9]', metrics, re.MULTILINE), metrics


def test_a_lazy_mission_that_runs_no_test_does_not_complete(stack):
    done = _run(stack, "write a word counter with tests [mock:lazy]")
    assert done["status"] == "failed", done
    reasons = [e["attributes"]["reason"] for e in stack.timeline(done["mission_id"]) if e["type"] == "qa.overruled"]
    assert reasons and all("ran no test" in r for r in reasons)


def test_a_retry_starts_from_the_workspace_before_the_task(stack):
    done = _run(stack, f"{RPN} [mock:flaky]")
    assert done["status"] == "completed" and done["retries"] == 3, done
    with stack.api() as api:
        view = api.get(f"/v1/missions/{done['mission_id']}/workspace").json()
    assert [(v["task_id"][-2:], v["attempt"], v["outcome"]) for v in view["versions"]] == [
        ("t0", 1, "rejected"), ("t0", 2, "passed"), ("t1", 1, "rejected"), ("t1", 2, "passed"),
        ("t2", 1, "rejected"), ("t2", 2, "passed")]
    # attempt 2 rewrote the same two files: test_rpn.py (identical in both attempts) counts as a change
    # only because the retry started from the workspace before the task, not from attempt 1's candidate
    assert [sorted(v["changed"]) for v in view["versions"] if v["attempt"] == 2][1] == ["rpn.py", "test_rpn.py"]
    assert {f["name"] for f in view["files"]} == RPN_FILES


def test_a_refusal_ends_the_mission_with_the_refusal_as_its_reason(stack):
    done = _run(stack, "write a palindrome checker with tests [mock:refuse]")
    assert done["status"] == "failed", done
    assert done["error"].startswith("planning failed: the model refused: I'm sorry"), done["error"]


def test_missing_usage_is_settled_as_an_estimate_and_said(stack):
    done = _run(stack, "write a Fibonacci function with tests [mock:no-usage]")
    assert done["status"] == "completed" and done["cost_estimated"] and done["cost_usd"] > 0, done
    assert "cost.estimated" in _types(stack.timeline(done["mission_id"]))


def test_an_answer_cut_off_is_retried_with_a_larger_limit(stack):
    done = _run(stack, "write a Roman numerals converter with tests [mock:long=1500]")
    assert done["status"] == "completed", done   # QA's cap of 1024 cut its answer; 2048 fits
    too_long = _run(stack, "write a Roman numerals converter with tests [mock:long=5000]")
    assert too_long["status"] == "failed"
    assert too_long["error"] == ("planning failed: the answer was cut off at the output limit twice "
                                 "(2048, then 4096 tokens)")


def test_backpressure_fires_with_the_defaults_and_resume_accepts_it(stack):
    goal = ("write FizzBuzz, a palindrome checker, Roman numerals, a Fibonacci function and a word counter, "
            "with tests")
    m = stack.submit(goal)
    paused = stack.wait_status(m["mission_id"], {"paused", "completed", "failed"})
    assert paused["status"] == "paused" and paused["status_reason"] == "backpressure", paused
    assert paused["pending_work"] == 15 and len(paused["tasks"]) == 5
    bp = [e for e in stack.timeline(m["mission_id"]) if e["type"] == "backpressure"]
    assert bp and bp[0]["attributes"]["bound"] == "12"
    resumed = _coo(stack, "resume", m["mission_id"])
    assert resumed.returncode == 0, resumed.stderr
    done = stack.wait_status(m["mission_id"], {"completed", "failed"}, timeout=150)
    assert done["status"] == "completed", done


def test_a_workspace_file_path_cannot_escape(stack):
    with stack.api() as api:
        mid = api.get("/v1/missions", params={"limit": 1}).json()["missions"][0]["mission_id"]
        assert api.get(f"/v1/missions/{mid}/workspace/files/..%2F..%2Fetc%2Fpasswd").status_code == 404

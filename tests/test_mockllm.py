"""mockllm through a real HTTP server and the real ``openai`` SDK.

The generated artifacts are written to a temporary directory and their commands really run with
python3, so "passes" and "fails" here are facts, not assumptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from coo.mockllm import catalog, roles, scenarios
from coo.mockllm.app import Settings, create_app

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else None

SCHEMAS: dict[str, dict[str, Any]] = {
    "coo_plan": {
        "type": "object", "additionalProperties": False, "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["title", "description"],
            "properties": {"title": {"type": "string"}, "description": {"type": "string"}}}}},
    },
    "engineer_artifact": {
        "type": "object", "additionalProperties": False,
        "required": ["files", "delete", "command", "notes"],
        "properties": {
            "files": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "content"],
                "properties": {"name": {"type": "string"}, "content": {"type": "string"}}}},
            "delete": {"type": "array", "items": {"type": "string"}},
            "command": {"type": "array", "items": {"type": "string"}},
            "notes": {"type": "string"},
        },
    },
    "qa_verdict": {
        "type": "object", "additionalProperties": False,
        "required": ["passed", "feedback", "score"],
        "properties": {"passed": {"type": "boolean"}, "feedback": {"type": "string"},
                       "score": {"type": "number"}},
    },
}
ROLE_OF = {"coo_plan": "coo", "engineer_artifact": "engineer", "qa_verdict": "qa"}

GOALS = {
    "fizzbuzz": "Write FizzBuzz up to n, with tests",
    "iso_date": "write a function that parses ISO dates, with tests",
    "word_count": "Build a word counter for plain text",
    "palindrome": "Check whether a sentence is a palindrome",
    "roman": "Convert integers to Roman numerals and back",
    "fibonacci": "Compute the Fibonacci sequence",
    "stack": "Implement a stack class",
    "csv_sum": "Sum the numeric columns of a CSV document",
    "generic": "Tidy up the release notes for version 2",
}


# --------------------------------------------------------------------------------------------
# fixtures and helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


@contextlib.contextmanager
def serve(scenario: str = ""):
    """mockllm on a free loopback port in a thread, with COO_MOCKLLM_SCENARIO=``scenario``."""
    port = _free_port()
    config = uvicorn.Config(create_app(Settings(scenario=scenario)), host="127.0.0.1",
                            port=port, log_level="warning", access_log=False)
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "mockllm did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def base_url():
    with serve() as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="test", max_retries=0,
                       timeout=30) as c:
        yield c


def ask(client: openai.OpenAI, schema: str, data: dict[str, Any], *,
        model: str = "mock-small", structured: bool = True, **kwargs: Any):
    messages: Any = [
        {"role": "system", "content": f"You are the {ROLE_OF[schema]} agent of COO. "
                                      f"role: {ROLE_OF[schema]}"},
        {"role": "user", "content": "Here is your input.\n\n```json\n"
                                    + json.dumps(data, indent=2) + "\n```\n"},
    ]
    if structured:
        kwargs["response_format"] = {"type": "json_schema", "json_schema": {
            "name": schema, "strict": True, "schema": SCHEMAS[schema]}}
    kwargs.setdefault("max_tokens", 8000)
    return client.chat.completions.create(model=model, messages=messages, temperature=0,
                                          **kwargs)


def content(completion) -> dict[str, Any]:
    return json.loads(completion.choices[0].message.content)


def run_artifact(artifact: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """What the sandbox does, minus the isolation: write the files and run the command."""
    tmp.mkdir(parents=True, exist_ok=True)
    for f in artifact["files"]:
        assert "/" not in f["name"] and ".." not in f["name"]
        (tmp / f["name"]).write_text(f["content"], encoding="utf-8")
    for name in artifact.get("delete", []):
        (tmp / name).unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # a rewritten module of the same size within the same second would otherwise be imported
    # from a stale __pycache__ entry when the same directory is run twice
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = list(artifact["command"])
    if command[0] == "python3" and SYSTEM_PYTHON:
        command[0] = SYSTEM_PYTHON  # what the sandbox runs (only /usr is visible there)
    proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=60,
                          env=env, check=False)
    return {"outcome": "ok" if proc.returncode == 0 else "failed",
            "exit_code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def plan_one(client, goal: str) -> dict[str, str]:
    tasks = content(ask(client, "coo_plan", {"goal": goal, "max_tasks": 5}))["tasks"]
    assert len(tasks) == 1, tasks
    return tasks[0]


# --------------------------------------------------------------------------------------------
# the mission path, for every catalog item


@pytest.mark.parametrize("key", list(GOALS))
def test_plan_engineer_run_qa(client, tmp_path, key):
    goal = GOALS[key]
    item = catalog.BY_KEY[key]
    task = plan_one(client, goal)
    if key == "generic":
        assert task["title"].startswith(catalog.GENERIC.title)
        assert goal in task["description"]
    else:
        assert task["title"] == item.title
    assert f"{item.module}.py" in task["description"]

    artifact = content(ask(client, "engineer_artifact",
                           {"goal": goal, "task": task, "attempt": 1, "feedback": None}))
    names = [f["name"] for f in artifact["files"]]
    assert names == [f"{item.module}.py", f"{item.test_module}.py"]
    assert artifact["delete"] == []
    assert artifact["command"] == ["python3", "-m", "unittest", "-v", item.test_module]
    assert artifact["notes"]

    result = run_artifact(artifact, tmp_path / "run")
    assert result["exit_code"] == 0, result["stderr"]
    assert "OK" in result["stderr"]

    verdict = content(ask(client, "qa_verdict", {
        "goal": goal, "task": task, "files": artifact["files"],
        "command": artifact["command"], "sandbox": result}))
    assert verdict["passed"] is True
    assert verdict["score"] == 1.0
    assert "passed" in verdict["feedback"]


@pytest.mark.parametrize("key", list(GOALS))
def test_flaky_first_attempt_really_fails_then_retry_passes(client, tmp_path, key):
    goal = f"{GOALS[key]} [mock:flaky]"
    task = plan_one(client, goal)
    first = content(ask(client, "engineer_artifact",
                        {"goal": goal, "task": task, "attempt": 1, "feedback": None}))
    bad_run = run_artifact(first, tmp_path / "one")
    assert bad_run["exit_code"] != 0
    assert "FAILED" in bad_run["stderr"]

    verdict = content(ask(client, "qa_verdict", {
        "goal": goal, "task": task, "files": first["files"], "command": first["command"],
        "sandbox": bad_run}))
    assert verdict["passed"] is False
    assert 0.0 <= verdict["score"] < 1.0
    feedback = verdict["feedback"]
    assert "test(s) failed" in feedback
    assert "FAIL: test_" in feedback or "ERROR: test_" in feedback
    assert "Error" in feedback  # the exception line is quoted
    assert len(feedback) <= 1200

    second = content(ask(client, "engineer_artifact",
                         {"goal": goal, "task": task, "attempt": 2, "feedback": feedback}))
    assert second["files"] != first["files"]
    assert "Attempt 2" in second["notes"] and "Root cause" in second["notes"]
    good_run = run_artifact(second, tmp_path / "two")
    assert good_run["exit_code"] == 0, good_run["stderr"]
    verdict = content(ask(client, "qa_verdict", {
        "goal": goal, "task": task, "files": second["files"], "command": second["command"],
        "sandbox": good_run}))
    assert verdict["passed"] is True


def test_two_catalog_items_plan_two_tasks_in_order(client):
    goal = "Write a Roman numeral converter and a FizzBuzz function, each with tests"
    tasks = content(ask(client, "coo_plan", {"goal": goal, "max_tasks": 5}))["tasks"]
    assert [t["title"] for t in tasks] == ["Roman numeral converter", "FizzBuzz function"]
    # the engineer finds each item from its own task, although the goal names both
    for task, module in zip(tasks, ["roman_numerals.py", "fizzbuzz.py"]):
        artifact = content(ask(client, "engineer_artifact",
                               {"goal": goal, "task": task, "attempt": 1, "feedback": None}))
        assert artifact["files"][0]["name"] == module
    capped = content(ask(client, "coo_plan", {"goal": goal, "max_tasks": 1}))["tasks"]
    assert [t["title"] for t in capped] == ["Roman numeral converter"]


def test_role_from_system_message_without_response_format(client):
    completion = ask(client, "coo_plan", {"goal": GOALS["palindrome"], "max_tasks": 3},
                     structured=False)
    assert content(completion)["tasks"][0]["title"] == "Palindrome checker"


def test_no_role_gets_a_plain_answer(client):
    completion = client.chat.completions.create(
        model="mock-small", messages=[{"role": "user", "content": "ping"}])
    assert "mockllm" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------------------------
# the shape of answers


def test_completion_object_and_usage(client):
    completion = ask(client, "coo_plan", {"goal": GOALS["fizzbuzz"], "max_tasks": 3},
                     model="gpt-4o-mini")
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"  # any model is accepted and echoed
    assert completion.system_fingerprint
    assert completion.created > 0
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.prompt_tokens > 50
    assert usage.completion_tokens == math.ceil(len(choice.message.content) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    again = ask(client, "coo_plan", {"goal": GOALS["fizzbuzz"], "max_tasks": 3},
                model="gpt-4o-mini")
    assert again.choices[0].message.content == choice.message.content
    assert again.usage.prompt_tokens == usage.prompt_tokens
    assert again.id != completion.id


def test_max_completion_tokens_truncates_honestly(client):
    completion = ask(client, "engineer_artifact",
                     {"goal": GOALS["roman"], "task": {"title": "Roman numeral converter",
                                                      "description": ""}, "attempt": 1},
                     max_tokens=None, max_completion_tokens=10)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 10
    text = completion.choices[0].message.content
    assert len(text) == 40
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_models_endpoint(client):
    ids = [m.id for m in client.models.list()]
    assert {"mock-small", "mock-large"} <= set(ids)
    assert client.models.retrieve("anything-you-like").id == "anything-you-like"


def test_healthz_and_metrics(client, base_url):
    ask(client, "qa_verdict", {"sandbox": {"outcome": "ok", "exit_code": 0, "stdout": "",
                                           "stderr": "Ran 1 test in 0.001s\n\nOK\n"}},
        model="mock-large")
    assert httpx.get(f"{base_url}/healthz").json()["status"] == "ok"
    metrics = httpx.get(f"{base_url}/metrics")
    assert metrics.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.text)
               for s in family.samples}
    assert samples[("mockllm_requests_total", (("model", "mock-large"), ("outcome", "ok"),
                                               ("schema", "qa_verdict")))] >= 1
    assert samples[("mockllm_tokens_total", (("model", "mock-large"), ("type", "prompt")))] > 0
    assert samples[("mockllm_tokens_total",
                    (("model", "mock-large"), ("type", "completion")))] > 0
    assert any(name == "mockllm_request_duration_seconds_bucket" for name, _ in samples)


# --------------------------------------------------------------------------------------------
# QA rule on sandbox outcomes


@pytest.mark.parametrize("sandbox, needle", [
    ({"outcome": "timeout", "exit_code": None, "stdout": "", "stderr": ""}, "time limit"),
    ({"outcome": "memory", "exit_code": 137, "stdout": "", "stderr": ""}, "memory"),
    ({"outcome": "ok", "exit_code": 1, "stdout": "",
      "stderr": "Traceback (most recent call last):\n  File \"x.py\", line 1\nNameError: y\n"},
     "NameError: y"),
    ({"outcome": "ok", "exit_code": 0, "stdout": "", "stderr": "Ran 0 tests in 0.000s\n\nOK\n"},
     "No tests"),
])
def test_qa_fails_with_reason(client, sandbox, needle):
    verdict = content(ask(client, "qa_verdict", {"goal": "g", "sandbox": sandbox}))
    assert verdict["passed"] is False
    assert needle in verdict["feedback"]
    assert verdict["score"] == 0.0


# --------------------------------------------------------------------------------------------
# scenarios


def test_slow_sleeps_without_blocking_other_requests(base_url):
    async def main() -> list[float]:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="test",
                                      max_retries=0) as aclient:
            async def one(i: int) -> float:
                t0 = time.perf_counter()
                await aclient.chat.completions.create(
                    model="mock-small",
                    messages=[{"role": "system", "content": "role: coo"}, {
                        "role": "user",
                        "content": "```json\n" + json.dumps(
                            {"goal": f"fizzbuzz {i} [mock:slow=0.6]", "max_tasks": 2}) + "\n```"}],
                )
                return time.perf_counter() - t0
            return await asyncio.gather(*(one(i) for i in range(5)))

    t0 = time.perf_counter()
    durations = asyncio.run(main())
    assert all(d >= 0.6 for d in durations)
    assert time.perf_counter() - t0 < 2.0  # concurrent, not serialised


def test_http_error_once_per_goal_and_schema(client, base_url):
    goal = "Compute the Fibonacci sequence [mock:http-error] #1"
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "coo_plan", {"goal": goal, "max_tasks": 2})
    assert info.value.status_code == 500
    assert info.value.body["code"] == "mock_http_error"
    assert info.value.body["type"] == "server_error"
    assert content(ask(client, "coo_plan", {"goal": goal, "max_tasks": 2}))["tasks"]
    # another schema with the same goal fails once too
    with pytest.raises(openai.InternalServerError):
        ask(client, "engineer_artifact", {"goal": goal, "task": {"title": "Fibonacci numbers"}})
    # the SDK's own retry gets through
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="test", max_retries=2) as retrying:
        completion = ask(retrying, "coo_plan",
                         {"goal": "Compute the Fibonacci sequence [mock:http-error] #2"})
    assert content(completion)["tasks"][0]["title"] == "Fibonacci numbers"
    with pytest.raises(openai.RateLimitError):
        ask(client, "coo_plan", {"goal": "fizzbuzz [mock:http-error=429]"})


def test_expensive_reports_huge_usage_and_stays_valid_json(client):
    for schema, data in [
        ("coo_plan", {"goal": "fizzbuzz [mock:expensive]"}),
        ("engineer_artifact", {"goal": "fizzbuzz [mock:expensive]",
                               "task": {"title": "FizzBuzz function"}}),
        ("qa_verdict", {"goal": "fizzbuzz [mock:expensive]",
                        "sandbox": {"outcome": "ok", "exit_code": 0}}),
    ]:
        completion = ask(client, schema, data, max_tokens=None)
        assert completion.usage.completion_tokens == 200_000
        assert completion.choices[0].finish_reason == "stop"
        text = completion.choices[0].message.content
        assert len(text) > 40_000
        json.loads(text)
        # with max_tokens, it runs to the cap and is cut off: never billed past it
        capped = ask(client, schema, data, max_tokens=500)
        assert capped.usage.completion_tokens == 500 and capped.choices[0].finish_reason == "length"
        assert len(capped.choices[0].message.content) <= 500 * 4
    completion = ask(client, "coo_plan", {"goal": "fizzbuzz [mock:expensive=1000000]"}, max_tokens=None)
    assert completion.usage.completion_tokens == 1_000_000


def test_echo_secret_default_and_custom(client, tmp_path):
    goal = "Write FizzBuzz [mock:echo-secret]"
    task = plan_one(client, goal)
    secret = scenarios.DEFAULT_SECRET
    assert secret.startswith("sk-proj-") and len(secret) == len("sk-proj-") + 48
    assert secret in task["description"]
    assert task["title"] == "FizzBuzz function"
    artifact = content(ask(client, "engineer_artifact", {"goal": goal, "task": task}))
    assert secret in artifact["notes"]
    assert secret in artifact["files"][0]["content"]
    assert run_artifact(artifact, tmp_path)["exit_code"] == 0  # still valid code

    custom = "sk-live-CANARY-1234567890abcdef"
    goal = f"Implement a stack class [mock:echo-secret={custom}]"
    artifact = content(ask(client, "engineer_artifact",
                           {"goal": goal, "task": {"title": "Stack class"}}))
    assert custom in artifact["notes"] and custom in artifact["files"][0]["content"]
    assert secret not in artifact["notes"]
    verdict = content(ask(client, "qa_verdict", {"goal": goal, "sandbox": {
        "outcome": "ok", "exit_code": 0}}))
    assert custom in verdict["feedback"]


def test_markers_do_not_leak_into_titles_or_generic_tests(client, tmp_path):
    goal = "Tidy up the changelog [mock:flaky] [mock:echo-secret=sk-stack-roman-csv]"
    task = plan_one(client, goal)
    assert "[mock:" not in task["title"] and "roman" not in task["title"].lower()
    artifact = content(ask(client, "engineer_artifact",
                           {"goal": goal, "task": task, "attempt": 2}))
    assert artifact["files"][0]["name"] == "text_helpers.py"
    assert run_artifact(artifact, tmp_path)["exit_code"] == 0


# --------------------------------------------------------------------------------------------
# errors


def test_unknown_schema_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="mock-small", messages=[{"role": "user", "content": "```json\n{}\n```"}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "poem", "strict": True, "schema": {"type": "object"}}})
    assert info.value.status_code == 400
    assert info.value.code == "unknown_schema"
    assert info.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("kwargs, code", [
    ({"stream": True}, "unsupported_parameter"),
    ({"n": 3}, "unsupported_value"),
    ({"max_tokens": 0}, "integer_below_min_value"),
    ({"temperature": 5}, "invalid_value"),
])
def test_unsupported_parameters_are_bad_requests(client, kwargs, code):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="mock-small", messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert info.value.code == code


def test_bad_structured_input_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="mock-small",
            messages=[{"role": "system", "content": "role: engineer"},
                      {"role": "user", "content": "```json\n{not json\n```"}])
    assert info.value.code == "invalid_input"
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "coo_plan", {"max_tasks": 2})  # no goal
    assert info.value.code == "invalid_input" and "goal" in info.value.message
    with pytest.raises(openai.BadRequestError):
        ask(client, "qa_verdict", {"goal": "g", "sandbox": {"exit_code": 0}})


def test_raw_http_errors_have_openai_shape(base_url):
    r = httpx.post(f"{base_url}/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.get(f"{base_url}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


# --------------------------------------------------------------------------------------------
# the entry point and server-wide defaults


def test_python_dash_m_with_env_scenario(tmp_path):
    port = _free_port()
    env = dict(os.environ, COO_MOCKLLM_PORT=str(port), COO_MOCKLLM_HOST="127.0.0.1",
               COO_MOCKLLM_SCENARIO="flaky,echo-secret")
    proc = subprocess.Popen([sys.executable, "-m", "coo.mockllm"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "python -m coo.mockllm did not start"
                time.sleep(0.1)
        assert health["scenario"] == ["flaky", "echo-secret"]
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="t",
                           max_retries=0) as c:
            artifact = content(ask(c, "engineer_artifact", {
                "goal": GOALS["palindrome"], "task": {"title": "Palindrome checker"},
                "attempt": 1}))
        assert scenarios.DEFAULT_SECRET in artifact["notes"]
        assert run_artifact(artifact, tmp_path)["exit_code"] != 0  # buggy first attempt
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# units


def test_scenario_parsing():
    sc = scenarios.resolve("x [mock:slow=1.5] [mock:flaky] [mock:expensive=10] "
                           "[mock:echo-secret=abc] [mock:http-error=503] [mock:bogus]")
    assert (sc.slow, sc.flaky, sc.expensive, sc.echo_secret, sc.http_error) == (
        1.5, True, 10, "abc", 503)
    assert scenarios.resolve("[mock:slow=nan] [mock:http-error=418]") == scenarios.Scenario()
    assert scenarios.resolve("[mock:slow=99999]").slow == scenarios.MAX_SLOW_SECONDS
    defaults = scenarios.parse_defaults("slow=0.25, flaky")
    assert (defaults.slow, defaults.flaky) == (0.25, True)
    assert scenarios.resolve("[mock:slow=1]", defaults).slow == 1.0
    assert scenarios.resolve("no markers", defaults) == defaults
    assert scenarios.strip_markers("a [mock:flaky]  b [mock:slow=1]") == "a b"
    once = scenarios.OnceSet(maxsize=2)
    assert once.first_time("a") and not once.first_time("a")
    assert once.first_time("b") and once.first_time("c") and len(once) == 2
    assert once.first_time("a")  # evicted, so new again


def test_catalog_matching():
    assert [i.key for i in catalog.match_all("a csv summer, then fizz buzz")] == [
        "csv_sum", "fizzbuzz"]
    assert catalog.match_first("nothing", None, "parse an ISO 8601 date").key == "iso_date"
    assert catalog.match_all("release notes") == []
    assert len(catalog.CATALOG) >= 6
    for item in catalog.CATALOG:  # every title finds its own item
        assert catalog.match_first(item.title) is item
    assert roles.judge({"outcome": "ok", "exit_code": 0, "stdout": "",
                        "stderr": "Ran 3 tests in 0.1s\n\nOK\n"}) == (True, "All 3 tests passed.",
                                                                     1.0)


# --------------------------------------------------------------------------------------------
# projects: plans whose later tasks import the earlier tasks' modules

PROJECT_GOALS = {
    "rpn_calculator": "Build an RPN calculator on top of a stack, with tests",
    "inventory": "Build an inventory with a stock ledger and a stock report, with tests",
}


def workspace_input(workspace: Path) -> dict[str, Any]:
    files = sorted(workspace.glob("*.py")) if workspace.exists() else []
    return {"files": [{"name": f.name, "content": f.read_text()} for f in files],
            "listing": [{"name": f.name, "bytes": f.stat().st_size} for f in files],
            "complete": True}


def engineer_input(goal: str, tasks: list[dict[str, str]], n: int, workspace: Path, *,
                   attempt: int = 1, feedback: str | None = None,
                   previous: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The engineer's input as the issue-11 agent sends it (task n, 1-based)."""
    return {
        "goal": goal,
        "plan": [{"title": t["title"], "status": "passed" if i < n - 1 else
                  "running" if i == n - 1 else "pending"} for i, t in enumerate(tasks)],
        "task": tasks[n - 1], "task_number": n, "attempt": attempt, "feedback": feedback,
        "workspace": workspace_input(workspace), "previous_changes": previous or [],
    }


@pytest.mark.parametrize("key", list(PROJECT_GOALS))
def test_project_mission_in_one_shared_workspace(client, tmp_path, key):
    goal = PROJECT_GOALS[key]
    project = catalog.PROJECT_BY_KEY[key]
    tasks = content(ask(client, "coo_plan", {"goal": goal, "max_tasks": 5}))["tasks"]
    assert [t["title"] for t in tasks] == [item.title for item in project.items]
    workspace = tmp_path / "workspace"
    for n, (task, item) in enumerate(zip(tasks, project.items), start=1):
        assert f"`{item.module}.py`" in task["description"]
        for used in item.used_files:  # the description names the earlier files it builds on
            assert f"`{used}`" in task["description"]
        before = workspace_input(workspace)["listing"]
        artifact = content(ask(client, "engineer_artifact",
                               engineer_input(goal, tasks, n, workspace)))
        # only this task's own files: never the earlier tasks' files again
        assert [f["name"] for f in artifact["files"]] == item.file_names
        assert artifact["delete"] == []
        if item.uses:
            assert "Builds on" in artifact["notes"]
        result = run_artifact(artifact, workspace)
        assert result["exit_code"] == 0, result["stderr"]
        verdict = content(ask(client, "qa_verdict", {
            "goal": goal, "task": task, "files": artifact["files"], "deleted": [],
            "diff": "".join(f"--- /dev/null\n+++ b/{f['name']}\n" for f in artifact["files"]),
            "workspace": workspace_input(workspace)["listing"], "command": artifact["command"],
            "sandbox": result}))
        assert verdict["passed"] is True, verdict
        assert len(workspace_input(workspace)["listing"]) == len(before) + 2
    final = sorted(p.name for p in workspace.glob("*.py"))
    assert final == sorted(name for item in project.items for name in item.file_names)


@pytest.mark.parametrize("key", list(PROJECT_GOALS))
def test_later_task_passes_only_on_top_of_the_earlier_files(client, tmp_path, key):
    """Task 1 then task 2 in one directory: task 2's tests pass. Task 2's files alone: they
    fail with an ImportError, so the mock cannot pass a mission that loses files."""
    goal = PROJECT_GOALS[key]
    tasks = content(ask(client, "coo_plan", {"goal": goal, "max_tasks": 5}))["tasks"]
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    first = content(ask(client, "engineer_artifact", engineer_input(goal, tasks, 1, shared)))
    assert run_artifact(first, shared)["exit_code"] == 0
    second = content(ask(client, "engineer_artifact", engineer_input(goal, tasks, 2, shared)))
    assert run_artifact(second, shared)["exit_code"] == 0

    lonely = content(ask(client, "engineer_artifact", engineer_input(goal, tasks, 2, alone)))
    assert lonely["files"] == second["files"]
    assert "ImportError" in lonely["notes"]  # it says what is missing
    result = run_artifact(lonely, alone)
    assert result["exit_code"] != 0
    missing = catalog.PROJECT_BY_KEY[key].items[0].module
    assert f"ModuleNotFoundError: No module named '{missing}'" in result["stderr"]
    verdict = content(ask(client, "qa_verdict", {
        "goal": goal, "task": tasks[1], "files": lonely["files"], "command": lonely["command"],
        "workspace": workspace_input(alone)["listing"], "sandbox": result}))
    assert verdict["passed"] is False
    assert f"The workspace has no {missing}.py" in verdict["feedback"]


@pytest.mark.parametrize("key", [i.key for p in catalog.PROJECTS for i in p.items[1:]])
def test_project_tasks_flaky_first_version_really_fails(client, tmp_path, key):
    project = next(p for p in catalog.PROJECTS if catalog.BY_KEY[key] in p.items)
    item = catalog.BY_KEY[key]
    goal = PROJECT_GOALS[project.key] + " [mock:flaky]"
    tasks = content(ask(client, "coo_plan", {"goal": goal, "max_tasks": 5}))["tasks"]
    n = project.items.index(item) + 1
    workspace = tmp_path / "ws"
    for earlier in project.items[: n - 1]:  # the earlier tasks, as they passed
        run_artifact({"files": [{"name": name, "content": text} for name, text in zip(
            earlier.file_names, (earlier.source, earlier.tests))],
            "command": ["python3", "-c", "pass"]}, workspace)
    first = content(ask(client, "engineer_artifact", engineer_input(goal, tasks, n, workspace)))
    bad = run_artifact(first, workspace)
    assert bad["exit_code"] != 0 and "FAILED" in bad["stderr"], bad["stderr"]
    second = content(ask(client, "engineer_artifact", engineer_input(
        goal, tasks, n, workspace, attempt=2, feedback="tests failed", previous=first["files"])))
    assert "Root cause" in second["notes"] and "Revised" in second["notes"]
    assert run_artifact(second, workspace)["exit_code"] == 0


def test_engineer_without_the_new_fields_and_by_task_number(client):
    goal = PROJECT_GOALS["rpn_calculator"]
    old_style = content(ask(client, "engineer_artifact", {
        "goal": goal, "task": {"title": "RPN evaluator"}, "attempt": 1, "feedback": None}))
    assert [f["name"] for f in old_style["files"]] == ["rpn.py", "test_rpn.py"]
    assert "Relies on stack.py" in old_style["notes"]
    # an unknown title: the task's place in the goal's plan decides
    by_number = content(ask(client, "engineer_artifact", {
        "goal": goal, "task": {"title": "Front end", "description": "the CLI"},
        "task_number": 3, "workspace": "not an object", "plan": None}))
    assert by_number["files"][0]["name"] == "calculator.py"


def test_project_matching_and_plan_order():
    assert [i.key for i in catalog.match_all("an RPN calculator built on a stack")] == [
        "stack", "rpn", "calculator"]
    assert [i.key for i in catalog.match_all("a Fibonacci function, then a reverse Polish "
                                             "calculator")] == [
        "fibonacci", "stack", "rpn", "calculator"]
    assert [i.key for i in catalog.match_all("a stock ledger")] == [
        "inventory", "ledger", "report"]
    for item in catalog.ALL_ITEMS:  # every planned title finds its own item again
        assert catalog.by_title(item.title) is item


# --------------------------------------------------------------------------------------------
# provider personalities

FENCED = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def test_deepseek_refuses_json_schema_accepts_json_object(client):
    goal = GOALS["fizzbuzz"] + " [mock:provider=deepseek]"
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "coo_plan", {"goal": goal, "max_tasks": 3})
    assert info.value.status_code == 400
    assert info.value.body["message"] == "This response_format type is unavailable now"
    assert info.value.body["param"] == "response_format"
    assert info.value.body["type"] == "invalid_request_error"
    as_object = ask(client, "coo_plan", {"goal": goal, "max_tasks": 3}, structured=False,
                    response_format={"type": "json_object"})
    assert content(as_object)["tasks"][0]["title"] == "FizzBuzz function"
    plain = ask(client, "coo_plan", {"goal": goal, "max_tasks": 3}, structured=False)
    assert content(plain) == content(as_object)


def test_ollama_refuses_response_format_and_fences_json_after_prose(client):
    goal = GOALS["stack"] + " [mock:provider=ollama]"
    with pytest.raises(openai.BadRequestError) as as_schema:
        ask(client, "coo_plan", {"goal": goal})
    with pytest.raises(openai.BadRequestError) as as_object:
        ask(client, "coo_plan", {"goal": goal}, structured=False,
            response_format={"type": "json_object"})
    for info in (as_schema, as_object):
        assert info.value.body["message"] == "response_format is not supported by this server"
        assert info.value.body["param"] == "response_format"
    answers = {}
    for schema, data in [
        ("coo_plan", {"goal": goal, "max_tasks": 3}),
        ("engineer_artifact", {"goal": goal, "task": {"title": "Stack class"}}),
        ("qa_verdict", {"goal": goal, "sandbox": {"outcome": "ok", "exit_code": 0,
                                                 "stderr": "Ran 5 tests in 0.0s\n\nOK\n"}}),
    ]:
        text = ask(client, schema, data, structured=False).choices[0].message.content
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        prose = text.split("```")[0].strip()
        assert prose.endswith(":") and "{" not in prose  # one sentence of prose first
        answers[schema] = json.loads(FENCED.search(text).group(1))
    assert answers["coo_plan"]["tasks"][0]["title"] == "Stack class"
    assert answers["engineer_artifact"]["files"][0]["name"] == "stack.py"
    assert answers["qa_verdict"]["passed"] is True


def test_reasoning_model_wants_max_completion_tokens_and_reasons(client):
    goal = GOALS["palindrome"] + " [mock:provider=reasoning]"
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "coo_plan", {"goal": goal, "max_tasks": 3}, max_tokens=4000)
    assert info.value.body == {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                   "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}
    completion = ask(client, "coo_plan", {"goal": goal, "max_tasks": 3}, max_tokens=None,
                     max_completion_tokens=4000)
    message = completion.choices[0].message
    assert content(completion)["tasks"][0]["title"] == "Palindrome checker"
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.count(". ") >= 2 and "palindrome" in reasoning.lower()
    assert "[mock:" not in reasoning
    usage = completion.usage
    n_reasoning = usage.completion_tokens_details.reasoning_tokens
    assert n_reasoning == math.ceil(len(reasoning) / 4) > 0
    assert usage.completion_tokens == math.ceil(len(message.content) / 4) + n_reasoning
    # the limit covers the reasoning too: a tight one leaves the content cut short
    tight = ask(client, "coo_plan", {"goal": goal, "max_tasks": 3}, max_tokens=None,
                max_completion_tokens=n_reasoning + 5)
    assert tight.choices[0].finish_reason == "length"
    assert tight.usage.completion_tokens == n_reasoning + 5
    assert len(tight.choices[0].message.content) == 20


def test_provider_as_a_server_wide_default():
    with serve("provider=deepseek,no-usage") as url, openai.OpenAI(
            base_url=f"{url}/v1", api_key="t", max_retries=0) as c:
        assert httpx.get(f"{url}/healthz").json()["scenario"] == [
            "provider=deepseek", "no-usage"]
        with pytest.raises(openai.BadRequestError) as info:
            ask(c, "coo_plan", {"goal": GOALS["roman"]})
        assert info.value.body["message"] == "This response_format type is unavailable now"
        # refused before the input is even read
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "```json\n{oops\n```"}],
                response_format={"type": "json_schema", "json_schema": {
                    "name": "coo_plan", "schema": SCHEMAS["coo_plan"]}})
        assert info.value.body["param"] == "response_format"
        completion = ask(c, "coo_plan", {"goal": GOALS["roman"]}, structured=False)
        assert completion.usage is None
        # a goal's marker overrides the server's default
        other = ask(c, "coo_plan", {"goal": GOALS["roman"] + " [mock:provider=reasoning]"},
                    max_tokens=None, max_completion_tokens=3000)
        assert other.choices[0].message.model_extra["reasoning_content"]


# --------------------------------------------------------------------------------------------
# refusals, missing usage, long answers


def test_refuse_every_role_or_one(client):
    goal = GOALS["fibonacci"] + " [mock:refuse]"
    completion = ask(client, "coo_plan", {"goal": goal})
    choice = completion.choices[0]
    assert choice.message.content is None
    assert choice.message.refusal == "I'm sorry, but I can't help with that request."
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == math.ceil(len(choice.message.refusal) / 4)

    goal = GOALS["fibonacci"] + " [mock:refuse=qa]"
    assert content(ask(client, "coo_plan", {"goal": goal}))["tasks"]
    assert content(ask(client, "engineer_artifact", {
        "goal": goal, "task": {"title": "Fibonacci numbers"}}))["files"]
    refused = ask(client, "qa_verdict", {"goal": goal, "sandbox": {"outcome": "ok",
                                                                  "exit_code": 0}})
    assert refused.choices[0].message.content is None and refused.choices[0].message.refusal


def test_no_usage(client, base_url):
    completion = ask(client, "coo_plan", {"goal": GOALS["csv_sum"] + " [mock:no-usage]"})
    assert completion.usage is None
    assert content(completion)["tasks"][0]["title"] == "CSV column summer"
    raw = httpx.post(f"{base_url}/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi [mock:no-usage]"}]}).json()
    assert "usage" not in raw and raw["choices"][0]["message"]["content"]


@pytest.mark.parametrize("schema, data", [
    ("coo_plan", {"max_tasks": 3}),
    ("engineer_artifact", {"task": {"title": "Word counter"}}),
    ("qa_verdict", {"sandbox": {"outcome": "ok", "exit_code": 0}}),
])
def test_long_answer_is_cut_at_the_limit_then_fits_a_larger_one(client, schema, data):
    data = dict(data, goal=GOALS["word_count"] + " [mock:long=3000]")
    cut = ask(client, schema, data, max_tokens=1000)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 1000
    assert len(cut.choices[0].message.content) == 4000
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.choices[0].message.content)
    retried = ask(client, schema, data, max_tokens=None, max_completion_tokens=4000)
    assert retried.choices[0].finish_reason == "stop"
    assert retried.usage.completion_tokens == 3000
    assert math.ceil(len(retried.choices[0].message.content) / 4) == 3000
    assert content(retried)  # valid JSON, whole


# --------------------------------------------------------------------------------------------
# unreliable engineers and QA


def test_sycophant_code_always_fails_and_qa_approves_anyway(client, tmp_path):
    goal = GOALS["roman"] + " [mock:sycophant]"
    task = plan_one(client, goal)
    feedback = None
    for attempt in (1, 2, 3):
        artifact = content(ask(client, "engineer_artifact", {
            "goal": goal, "task": task, "attempt": attempt, "feedback": feedback}))
        result = run_artifact(artifact, tmp_path / str(attempt))
        assert result["exit_code"] != 0 and "FAILED" in result["stderr"]
        assert "All tests pass" in artifact["notes"]  # it says so all the same
        verdict = content(ask(client, "qa_verdict", {
            "goal": goal, "task": task, "files": artifact["files"],
            "command": artifact["command"], "sandbox": result}))
        assert verdict["passed"] is True and verdict["score"] == 0.9
        assert "Excellent" in verdict["feedback"]
        feedback = "tests failed"
    honest = content(ask(client, "qa_verdict", {"goal": GOALS["roman"], "sandbox": result}))
    assert honest["passed"] is False


def test_lazy_command_runs_no_test_and_qa_does_not_notice(client, tmp_path):
    goal = GOALS["palindrome"] + " [mock:lazy]"
    task = plan_one(client, goal)
    artifact = content(ask(client, "engineer_artifact", {"goal": goal, "task": task}))
    assert [f["name"] for f in artifact["files"]] == ["palindrome.py", "test_palindrome.py"]
    assert artifact["command"][:3] == ["python3", "-m", "unittest"]
    result = run_artifact(artifact, tmp_path)
    assert "Ran 0 tests" in result["stderr"]
    assert result["exit_code"] in (0, 5)  # unittest exits 5 on "no tests" from Python 3.12 on
    green = {"outcome": "ok", "exit_code": 0, "stdout": "",
             "stderr": "\n----------------------------------------------------------------------"
                       "\nRan 0 tests in 0.000s\n\nOK\n"}
    lenient = content(ask(client, "qa_verdict", {"goal": goal, "sandbox": green}))
    assert lenient["passed"] is True
    honest = content(ask(client, "qa_verdict", {"goal": GOALS["palindrome"], "sandbox": green}))
    assert honest["passed"] is False and "No tests" in honest["feedback"]
    red = dict(green, outcome="failed", exit_code=1)
    assert content(ask(client, "qa_verdict", {"goal": goal, "sandbox": red}))["passed"] is False


def test_new_scenario_parsing():
    sc = scenarios.resolve("x [mock:provider=DeepSeek] [mock:refuse=qa] [mock:no-usage] "
                           "[mock:long=1200] [mock:sycophant] [mock:lazy]")
    assert (sc.provider, sc.refuse, sc.no_usage, sc.long, sc.sycophant, sc.lazy) == (
        "deepseek", "qa", True, 1200, True, True)
    assert sc.names == ["provider=deepseek", "refuse=qa", "no-usage", "long", "sycophant",
                        "lazy"]
    assert sc.refuses("qa") and not sc.refuses("coo") and not sc.refuses(None)
    everyone = scenarios.resolve("[mock:refuse]")
    assert everyone.refuses(None) and everyone.refuses("engineer") and everyone.names == [
        "refuse"]
    bad = "[mock:provider=gemini] [mock:refuse=ceo] [mock:long] [mock:long=-3]"
    assert scenarios.resolve(bad) == scenarios.Scenario()
    assert scenarios.parse_defaults("provider=ollama,lazy").names == ["provider=ollama", "lazy"]

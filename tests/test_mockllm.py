"""mockllm through a real HTTP server and the real ``openai`` SDK.

The generated artifacts are written to a temporary directory and their commands really run with
python3, so "passes" and "fails" here are facts, not assumptions.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
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
        "required": ["files", "command", "notes"],
        "properties": {
            "files": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "content"],
                "properties": {"name": {"type": "string"}, "content": {"type": "string"}}}},
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


@pytest.fixture(scope="module")
def base_url():
    port = _free_port()
    config = uvicorn.Config(create_app(Settings(scenario="")), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False)
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "mockllm did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="test", max_retries=0,
                       timeout=30) as c:
        yield c


def ask(client: openai.OpenAI, schema: str, data: dict[str, Any], *,
        model: str = "mock-small", structured: bool = True, **kwargs: Any):
    messages = [
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    command = list(artifact["command"])
    if command[0] == "python3" and SYSTEM_PYTHON:
        command[0] = SYSTEM_PYTHON  # what the sandbox runs (only /usr is visible there)
    proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=60,
                          env=env)
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

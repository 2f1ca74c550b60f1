"""The agent service on a real nats-server, against the real mock LLM over HTTP (and, for the
cases mockllm cannot produce, a tiny scripted OpenAI-compatible endpoint), with a fake budget
responder on the bus."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from coo.agent import roles
from coo.agent.llm import estimate_prompt_tokens, response_format_for
from coo.agent.service import reservation_id_for
from coo.agent.settings import AgentSettings
from coo.budget.client import SUBJECT_SETTLE as SETTLE_SUBJECT
from coo.v1 import agent_pb2, common_pb2, mission_pb2, sandbox_pb2
from tests.agent_support import (
    GOAL,
    SECRET_KEY,
    make_task,
    publish,
    running_agent,
    wait_spans,
)
from tests.natsserver import free_port


# ----------------------------------------------------------------------------------- tests
async def test_three_roles_answer_with_spans_budget_and_usage(env, mock_llm, spans):
    bus, budget, results, nats_url = env
    tracer = trace.get_tracer("test")
    async with running_agent(nats_url, mock_llm):
        with tracer.start_as_current_span("orchestrator step") as root:
            await publish(bus, make_task(common_pb2.ROLE_COO, "t-coo"))
        plan = await results.wait("t-coo")
        assert plan.ok, plan.error
        assert plan.role == common_pb2.ROLE_COO and plan.error_kind == agent_pb2.ERROR_KIND_NONE
        assert 1 <= len(plan.plan) <= 5
        assert [t.task_id for t in plan.plan] == [f"t{i}" for i in range(1, len(plan.plan) + 1)]
        assert all(t.title and t.status == mission_pb2.TASK_STATUS_PENDING for t in plan.plan)

        eng = make_task(common_pb2.ROLE_ENGINEER, "t-eng", task=plan.plan[0])
        await publish(bus, eng)
        artifact = await results.wait("t-eng")
        assert artifact.ok, artifact.error
        assert artifact.artifact_files and artifact.artifact_command
        assert all("/" not in f.name and f.content for f in artifact.artifact_files)

        for verdict_id, outcome, stdout, passed in (
                ("t-qa-pass", sandbox_pb2.SANDBOX_OUTCOME_OK, "", True),
                ("t-qa-fail", sandbox_pb2.SANDBOX_OUTCOME_FAILED, "x" * 200_000, False)):
            qa = make_task(common_pb2.ROLE_QA, verdict_id, task=plan.plan[0],
                           artifact_files=artifact.artifact_files, artifact_command=artifact.artifact_command)
            qa.sandbox_result.CopyFrom(sandbox_pb2.SandboxResult(
                outcome=outcome, exit_code=0 if passed else 1, stdout=stdout,
                stderr="...\n----------------------------------------------------------------------\n"
                       "Ran 4 tests in 0.002s\n\n" + ("OK\n" if passed else "FAILED (failures=1)\n")))
            await publish(bus, qa)
            verdict = await results.wait(verdict_id)
            assert verdict.ok, verdict.error
            assert verdict.verdict.passed is passed
            assert 0.0 <= verdict.verdict.score <= 1.0
            if not passed:
                assert verdict.verdict.feedback

    for result, model in ((plan, "mock-large"), (artifact, "mock-large"), (verdict, "mock-small")):
        assert result.model == model
        assert result.usage.calls == 1 and result.usage.input_tokens > 0 and result.usage.output_tokens > 0
        assert result.usage.cost_usd == pytest.approx(
            (result.usage.input_tokens + 2 * result.usage.output_tokens) / 1e6)
        assert result.worker and result.duration_seconds > 0 and result.finished_at.seconds > 0

    # reserve before, settle after, with the usage the provider reported
    assert budget.events[:2] == ["reserve t-coo:1", "settle t-coo:1"]
    reserve = next(r for r in budget.reserves if r.reservation_id == "t-coo:1")
    assert reserve.mission_id == "m-1" and reserve.model == "mock-large" and reserve.role == "coo"
    assert reserve.max_output_tokens == 2048 and reserve.input_tokens > 0 and reserve.ttl_seconds > 0
    settle = next(s for s in budget.settles if s.reservation_id == "t-coo:1")
    assert (settle.input_tokens, settle.output_tokens) == (plan.usage.input_tokens, plan.usage.output_tokens)
    assert not budget.releases
    # the 200 000-char stdout was cut to fit mock-small's 16 000-token context
    qa_reserve = next(r for r in budget.reserves if r.reservation_id == "t-qa-fail:1")
    assert qa_reserve.input_tokens + qa_reserve.max_output_tokens <= 16000

    # spans: process -> invoke_agent coo -> chat mock-large, in the publisher's trace
    agent_spans = await wait_spans(spans, lambda s: s.name == "invoke_agent coo")
    assert len(agent_spans) == 1
    agent_span = agent_spans[0]
    finished = spans.get_finished_spans()
    assert agent_span.kind == SpanKind.INTERNAL
    assert agent_span.context.trace_id == root.get_span_context().trace_id
    consumer = next(s for s in finished if s.context.span_id == agent_span.parent.span_id)
    assert consumer.kind == SpanKind.CONSUMER and consumer.name == "process coo.tasks.coo"
    attrs = agent_span.attributes
    assert attrs["gen_ai.operation.name"] == "invoke_agent" and attrs["gen_ai.agent.name"] == "coo"
    assert attrs["gen_ai.provider.name"] == "openai" and attrs["gen_ai.request.model"] == "mock-large"
    assert attrs["coo.task.id"] == "t-coo" and attrs["coo.attempt"] == 1 and attrs["mission.id"] == "m-1"
    assert attrs["coo.cost.usd"] == pytest.approx(plan.usage.cost_usd)
    assert attrs["gen_ai.usage.input_tokens"] == plan.usage.input_tokens

    chats = [s for s in finished if s.parent is not None and s.parent.span_id == agent_span.context.span_id
             and s.name.startswith("chat")]
    assert len(chats) == 1
    chat = chats[0]
    assert chat.name == "chat mock-large" and chat.kind == SpanKind.CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.usage.input_tokens"] == plan.usage.input_tokens
    assert chat.attributes["gen_ai.usage.output_tokens"] == plan.usage.output_tokens
    assert chat.attributes["coo.cost.usd"] == pytest.approx(plan.usage.cost_usd)
    assert chat.attributes["mission.id"] == "m-1"
    # the settle request went out while the chat span was current
    settle_send = [s for s in finished if s.name == f"send {SETTLE_SUBJECT}" and s.parent
                   and s.parent.span_id == chat.context.span_id]
    assert settle_send
    # no message content and never the API key on any span
    for span in finished:
        assert "gen_ai.input.messages" not in span.attributes
        for value in span.attributes.values():
            assert SECRET_KEY not in str(value)
    assert SECRET_KEY not in " ".join(sys.argv)
    # every role has its agent span
    for role in ("engineer", "qa"):
        assert await wait_spans(spans, lambda s, r=role: s.name == f"invoke_agent {r}")


async def test_budget_refusal_makes_no_llm_call(env, scripted, spans):
    bus, budget, results, nats_url = env
    server, url = scripted
    budget.refuse["m-poor"] = "mission budget exhausted: 0.0100 of 0.0100 USD spent"
    async with running_agent(nats_url, url):
        await publish(bus, make_task(common_pb2.ROLE_COO, "t-poor", mission_id="m-poor"))
        result = await results.wait("t-poor")
    assert not result.ok
    assert result.error_kind == agent_pb2.ERROR_KIND_BUDGET_EXCEEDED
    assert result.error == "mission budget exhausted: 0.0100 of 0.0100 USD spent"
    assert result.usage.calls == 0 and result.usage.cost_usd == 0
    assert server.requests == []
    assert [r.reservation_id for r in budget.reserves] == ["t-poor:1"] and not budget.settles
    agent_span = (await wait_spans(spans, lambda s: s.name == "invoke_agent coo"))[0]
    assert agent_span.attributes["coo.outcome"] == "budget_exceeded"
    assert not [s for s in spans.get_finished_spans() if s.name.startswith("chat")]


async def test_invalid_json_gets_one_repair(env, scripted):
    bus, budget, results, nats_url = env
    server, url = scripted
    good = json.dumps({"tasks": [{"title": "Parse dates", "description": "dates.py with tests"}]})
    server.script[:] = ["Sure! Here is the plan: {tasks: [", good]
    async with running_agent(nats_url, url):
        await publish(bus, make_task(common_pb2.ROLE_COO, "t-repair"))
        result = await results.wait("t-repair")
    assert result.ok, result.error
    assert [t.title for t in result.plan] == ["Parse dates"]
    assert result.usage.calls == 2
    assert result.usage.input_tokens == 101 + 102 and result.usage.output_tokens == 14
    assert budget.events == ["reserve t-repair:1", "settle t-repair:1", "reserve t-repair:2", "settle t-repair:2"]
    first, repair = server.requests
    assert first["response_format"]["json_schema"]["name"] == "coo_plan"
    assert first["response_format"]["json_schema"]["strict"] is True
    assert "role: coo" in first["messages"][0]["content"]
    assert first["messages"][-1]["content"].rstrip().endswith("```")
    assert [m["role"] for m in repair["messages"]] == ["system", "user", "assistant", "user"]
    assert repair["messages"][2]["content"] == "Sure! Here is the plan: {tasks: ["
    assert "not valid JSON" in repair["messages"][3]["content"]
    assert '"max_tasks": 5' in repair["messages"][3]["content"]


async def test_still_invalid_after_repair_is_invalid_output(env, scripted):
    bus, _budget, results, nats_url = env
    server, url = scripted
    bad = json.dumps({"files": [{"name": "../evil.py", "content": "x"}], "command": ["python3"], "notes": ""})
    server.script[:] = [bad, bad]
    async with running_agent(nats_url, url):
        await publish(bus, make_task(common_pb2.ROLE_ENGINEER, "t-bad"))
        result = await results.wait("t-bad")
    assert not result.ok
    assert result.error_kind == agent_pb2.ERROR_KIND_INVALID_OUTPUT
    assert "path separator" in result.error
    assert len(server.requests) == 2 and result.usage.calls == 2


async def test_llm_errors_release_the_reservation(env, scripted):
    bus, budget, results, nats_url = env
    server, url = scripted
    # 400: final at once.  503 with no SDK retries: redelivered (same reservation id), then answered.
    server.script[:] = [400]
    async with running_agent(nats_url, url, llm_max_retries=0):
        await publish(bus, make_task(common_pb2.ROLE_COO, "t-400"))
        result = await results.wait("t-400")
        assert not result.ok and result.error_kind == agent_pb2.ERROR_KIND_LLM
        assert "400" in result.error
        assert [r.reservation_id for r in budget.releases] == ["t-400:1"] and not budget.settles

        good = json.dumps({"tasks": [{"title": "A", "description": "B"}]})
        server.script[:] = [503, good]
        await publish(bus, make_task(common_pb2.ROLE_COO, "t-503"))
        result = await results.wait("t-503")
        assert result.ok, result.error
    # the redelivery reserves afresh: the budget service never reopens a released reservation
    assert [e for e in budget.events if "t-503" in e] == ["reserve t-503:1", "release t-503:1",
                                                           "reserve t-503:1:d2", "settle t-503:1:d2"]
    assert reservation_id_for("t", 2, 1) == "t:2"


async def test_transient_llm_error_on_the_final_delivery_ends_the_task(env):
    bus, budget, results, nats_url = env
    dead_port = free_port()  # nothing listens: a connection error
    async with running_agent(nats_url, f"http://127.0.0.1:{dead_port}/v1", llm_max_retries=0,
                             agent_final_delivery=1):
        await publish(bus, make_task(common_pb2.ROLE_QA, "t-down", sandbox_result=sandbox_pb2.SandboxResult()))
        result = await results.wait("t-down")
    assert not result.ok and result.error_kind == agent_pb2.ERROR_KIND_LLM
    assert "giving up" in result.error
    assert [r.reservation_id for r in budget.releases] == ["t-down:1"]


async def test_heartbeat_during_a_slow_call(env, mock_llm, monkeypatch):
    from coo.common.bus import Delivery

    beats = []
    original = Delivery.in_progress

    async def counting(self):
        beats.append(time.monotonic())
        await original(self)

    monkeypatch.setattr(Delivery, "in_progress", counting)
    bus, _budget, results, nats_url = env
    task = make_task(common_pb2.ROLE_COO, "t-slow")
    task.goal = GOAL + " [mock:slow=1.2]"
    async with running_agent(nats_url, mock_llm, agent_heartbeat_seconds=0.25):
        await publish(bus, task)
        result = await results.wait("t-slow")
    assert result.ok, result.error
    assert len(beats) >= 3


async def test_bad_tasks_are_dead_lettered(env, scripted):
    bus, budget, results, nats_url = env
    server, url = scripted
    async with running_agent(nats_url, url):
        await publish(bus, agent_pb2.AgentTask(task_id="t-norole", mission_id="m-1", goal=GOAL), role="coo")
        await publish(bus, make_task(common_pb2.ROLE_COO, "t-nomission", mission_id=""))
        await publish(bus, make_task(common_pb2.ROLE_QA, "t-mismatch"), role="coo")
        await publish(bus, make_task(common_pb2.ROLE_QA, "t-nosandbox"))
        deadline = time.monotonic() + 15
        while True:
            letters = await bus.dead_letters()
            if len(letters) >= 4 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert len(letters) == 4, reasons
    assert all(letter["kind"] == "terminated" for letter in letters)
    assert "no valid role" in reasons and "without mission_id" in reasons
    assert "arrived on coo.tasks.coo" in reasons and "without sandbox_result" in reasons
    assert server.requests == [] and not budget.reserves and not results.items


# ------------------------------------------------------------------------ unit-level checks
def test_truncation_fits_the_context_and_marks_cuts():
    settings = AgentSettings()
    task = make_task(common_pb2.ROLE_QA, "t")
    task.sandbox_result.stdout = "o" * 120_000
    task.sandbox_result.stderr = "Traceback ...\nAssertionError: boom"
    task.artifact_files.add(name="big.py", content="line\n" * 20_000)
    task.artifact_files.add(name="small.py", content="print('hi')\n")
    spec = roles.SPECS["qa"]
    rf = response_format_for(spec.schema_name, spec.schema)
    messages, cut, estimate = roles.fit(roles.conversation_for(spec, task, settings), context_tokens=8000,
                                        max_output_tokens=1024, response_format=rf)
    assert estimate == estimate_prompt_tokens(messages, rf) <= 8000 - 1024
    assert cut > 100_000
    user = messages[-1]["content"]
    assert "[truncated " in user and "AssertionError: boom" in user and "print('hi')" in user
    payload = json.loads(user.rsplit("```json\n", 1)[1].rsplit("\n```", 1)[0])
    assert set(payload) == {"goal", "task", "task_number", "files", "deleted", "diff", "workspace", "command",
                            "sandbox"}
    assert payload["sandbox"]["outcome"] == "error" and payload["goal"] == GOAL
    # with room to spare nothing is cut
    _, cut, _ = roles.fit(roles.conversation_for(spec, make_task(common_pb2.ROLE_QA, "t"), settings),
                          context_tokens=16000, max_output_tokens=1024, response_format=rf)
    assert cut == 0
    with pytest.raises(roles.PromptTooLarge):
        roles.fit(roles.conversation_for(spec, task, settings), context_tokens=1200, max_output_tokens=1024,
                  response_format=rf)


def test_answers_are_validated():
    ok, err = roles.parse_answer(roles.Artifact, json.dumps(
        {"files": [{"name": "a.py", "content": "x"}], "command": ["python3", "-m", "unittest"], "notes": "n"}))
    assert err is None and ok.files[0].name == "a.py"
    for files, command, needle in (([], ["x"], "changes nothing"),
                                   ([{"name": "a/b.py", "content": ""}], ["x"], "separator"),
                                   ([{"name": "..x", "content": ""}], ["x"], "'..'"),
                                   ([{"name": "a.py", "content": ""}], [], "at least 1"),
                                   ([{"name": "a.py", "content": ""}] * 2, ["x"], "duplicate")):
        _, err = roles.parse_answer(roles.Artifact, json.dumps({"files": files, "command": command, "notes": ""}))
        assert err and needle in err, (files, command, err)
    _, err = roles.parse_answer(roles.Plan, json.dumps({"tasks": [{"title": "a", "description": ""}] * 3}),
                                {"max_tasks": 2})
    assert "at most 2" in err
    _, err = roles.parse_answer(roles.QAVerdict, '{"passed": true, "feedback": "", "score": 7}')
    assert "score" in err
    verdict, err = roles.parse_answer(roles.QAVerdict, '```json\n{"passed": false, "feedback": "f", "score": 0.5}\n```')
    assert err is None and verdict.passed is False


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("COO_AGENT_ROLES", "qa, engineer")
    monkeypatch.setenv("COO_LLM_MODEL", "gpt-x")
    monkeypatch.setenv("COO_LLM_MODEL_QA", "gpt-small")
    monkeypatch.setenv("COO_LLM_CONTEXT_TOKENS_BY_MODEL", '{"gpt-x": 128000}')
    s = AgentSettings()
    assert s.agent_roles == ("qa", "engineer")
    assert (s.model_for("coo"), s.model_for("qa"), s.model_for("qa", "override")) == ("gpt-x", "gpt-small", "override")
    assert s.context_tokens_for("gpt-x") == 128000 and s.context_tokens_for("other") == 16000
    assert "not-needed" not in repr(s) and "not-needed" not in str(s.model_dump())
    monkeypatch.delenv("COO_LLM_MODEL")
    assert AgentSettings().model_for("coo") == "mock-large" and AgentSettings().model_for("qa") == "gpt-small"
    monkeypatch.setenv("COO_AGENT_ROLES", "boss")
    with pytest.raises(ValueError):
        AgentSettings()

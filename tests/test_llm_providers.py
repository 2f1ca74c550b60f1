"""Any OpenAI-compatible provider: the agent against endpoints that refuse json_schema, want
max_completion_tokens, refuse to answer, cut answers off, omit usage or rate-limit (a scripted
endpoint speaking the real protocol, and the agent on a real nats-server)."""

from __future__ import annotations

import asyncio
import json
import time

from coo.agent.ratelimit import Limits, RateLimiter
from coo.mockllm.scenarios import DEFAULT_SECRET
from coo.v1 import agent_pb2, common_pb2
from tests.agent_support import make_task, publish, running_agent

PLAN = json.dumps({"tasks": [{"title": "Stack", "description": "stack.py with tests"}]})


async def _plan(bus, results, task_id: str) -> agent_pb2.AgentResult:
    await publish(bus, make_task(common_pb2.ROLE_COO, task_id))
    return await results.wait(task_id)


async def test_structured_output_steps_down_once_per_mode_and_is_remembered(env, scripted):
    bus, budget, results, nats_url = env
    server, url = scripted
    server.script[:] = [
        {"status": 400, "message": "This response_format type is unavailable now", "param": None},
        PLAN,                                                            # json_object accepted
        PLAN,                                                            # remembered: json_object at once
        {"status": 400, "message": "response_format is not supported by this server", "param": "response_format"},
        "Sure! Here is the plan you asked for.\n\n```json\n" + PLAN + "\n```\nGood luck.",  # prompt mode
        "The plan: " + PLAN + " — that is all.",                          # remembered: prompt, prose around JSON
    ]
    async with running_agent(nats_url, url, llm_max_retries=0):
        first = await _plan(bus, results, "t-1")
        second = await _plan(bus, results, "t-2")
        third = await _plan(bus, results, "t-3")
        fourth = await _plan(bus, results, "t-4")
    assert all(r.ok for r in (first, second, third, fourth)), [r.error for r in (first, second, third, fourth)]
    formats = [(r.get("response_format") or {}).get("type") for r in server.requests]
    assert formats == ["json_schema", "json_object", "json_object", "json_object", None, None]
    assert [first.structured_output, second.structured_output, fourth.structured_output] == \
        ["json_object", "json_object", "prompt"]
    system = server.requests[1]["messages"][0]["content"]
    assert "JSON schema" in system and '"tasks"' in system  # the schema travels in the prompt
    assert fourth.plan[0].title == "Stack"
    # a refused request is not paid for: one reservation per task, settled once
    assert len(budget.reserves) == 4 and len(budget.settles) == 4 and not budget.releases


async def test_fixed_mode_never_steps_down(env, scripted):
    bus, _budget, results, nats_url = env
    server, url = scripted
    server.script[:] = [{"status": 400, "message": "This response_format type is unavailable now"}]
    async with running_agent(nats_url, url, llm_max_retries=0, llm_structured_output="json_schema"):
        result = await _plan(bus, results, "t-fixed")
    assert not result.ok and "This response_format type is unavailable now" in result.error
    assert result.error_kind == agent_pb2.ERROR_KIND_LLM and len(server.requests) == 1


async def test_max_completion_tokens_by_pattern_and_learnt_from_a_400(env, scripted):
    bus, _budget, results, nats_url = env
    server, url = scripted
    server.script[:] = [
        PLAN,
        {"status": 400, "param": "max_tokens",
         "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead."},
        PLAN, PLAN,
    ]
    async with running_agent(nats_url, url, llm_max_retries=0, llm_model_coo="o3-mini"):
        assert (await _plan(bus, results, "t-o3")).ok
    assert "max_completion_tokens" in server.requests[0] and "max_tokens" not in server.requests[0]
    async with running_agent(nats_url, url, llm_max_retries=0, llm_model_coo="thinker-1"):
        assert (await _plan(bus, results, "t-th1")).ok
        assert (await _plan(bus, results, "t-th2")).ok
    assert "max_tokens" in server.requests[1]
    assert server.requests[2]["max_completion_tokens"] == 2048 and "max_tokens" not in server.requests[2]
    assert "max_completion_tokens" in server.requests[3]  # remembered


async def test_a_refusal_is_the_failure_reason_scrubbed(env, scripted):
    bus, budget, results, nats_url = env
    server, url = scripted
    canary = DEFAULT_SECRET  # the mock's fake key, shaped like an OpenAI project key
    server.script[:] = [{"content": None, "refusal": f"I can't help with that. (key {canary})"}]
    async with running_agent(nats_url, url, llm_max_retries=0):
        result = await _plan(bus, results, "t-refuse")
    assert not result.ok and result.error_kind == agent_pb2.ERROR_KIND_REFUSED
    assert result.error.startswith("the model refused: I can't help with that.")
    assert canary not in result.error
    assert len(server.requests) == 1 and len(budget.settles) == 1  # paid, not repaired


async def test_an_answer_cut_off_gets_one_retry_with_a_larger_limit(env, scripted):
    bus, budget, results, nats_url = env
    server, url = scripted
    server.script[:] = [{"content": PLAN[:20], "finish_reason": "length"}, PLAN,
                        {"content": PLAN[:20], "finish_reason": "length"},
                        {"content": PLAN[:30], "finish_reason": "length"}]
    async with running_agent(nats_url, url, llm_max_retries=0):
        ok = await _plan(bus, results, "t-len-ok")
        cut = await _plan(bus, results, "t-len-cut")
    assert ok.ok and [r["max_tokens"] for r in server.requests[:2]] == [2048, 4096]
    assert [r.max_output_tokens for r in budget.reserves[:2]] == [2048, 4096]  # the budget covers the larger call
    assert not cut.ok and cut.error_kind == agent_pb2.ERROR_KIND_INVALID_OUTPUT
    assert "cut off at the output limit twice (2048, then 4096 tokens)" in cut.error


async def test_missing_usage_settles_the_estimate_and_says_so(env, scripted):
    bus, budget, results, nats_url = env
    server, url = scripted
    server.script[:] = [{"content": PLAN, "no_usage": True}]
    async with running_agent(nats_url, url, llm_max_retries=0):
        result = await _plan(bus, results, "t-nousage")
    assert result.ok and result.usage_estimated
    assert budget.settles[0].input_tokens > 0 and budget.settles[0].output_tokens == len(PLAN) // 4 + 1


async def test_a_429_holds_calls_for_its_retry_after(env, scripted):
    bus, _budget, results, nats_url = env
    server, url = scripted
    server.script[:] = [{"status": 429, "message": "Rate limit reached", "headers": {"retry-after-ms": "400"}}, PLAN]
    async with running_agent(nats_url, url, llm_max_retries=1):
        started = time.monotonic()
        result = await _plan(bus, results, "t-429")
    assert result.ok and time.monotonic() - started >= 0.4 and len(server.requests) == 2


async def test_the_rate_limiter_queues_beyond_the_limits():
    limiter = RateLimiter(Limits(requests_per_minute=600), {"big": Limits(tokens_per_minute=6000)})
    started = time.monotonic()
    await asyncio.gather(*(limiter.acquire("m", 10) for _ in range(600)))  # the bucket's burst
    assert time.monotonic() - started < 0.5
    waited = await limiter.acquire("m", 10)  # the 601st waits for the bucket to drip (10/s)
    assert waited >= 0.05
    await limiter.acquire("big", 6000)
    assert await limiter.acquire("big", 600) >= 0.3  # tokens: 100/s
    limiter.throttled("m", 0.3)
    assert await limiter.acquire("m", 1) >= 0.25
    assert limiter.snapshot()["m"]["throttled"] == 1


def test_every_role_has_its_system_prompt():
    """Prompt mode and json_object find the role and the schema in the system message."""
    from coo.agent import roles
    from coo.agent.settings import AgentSettings

    for name, spec in roles.SPECS.items():
        task = make_task(spec.role, "t-prompt", task_number=2)
        conversation = roles.conversation_for(spec, task, AgentSettings())
        assert f"role: {name}" in conversation.system and "<!--" not in conversation.system
        assert conversation.user and "<!--" not in conversation.user

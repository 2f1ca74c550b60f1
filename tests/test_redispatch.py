"""A result whose change was stored but whose next work item could not be published (a NATS node
lost: the stream had no leader for a moment) is redelivered; the redelivery publishes the work again
instead of finding the change done and acknowledging it with the mission stuck forever."""

from __future__ import annotations

import asyncio
import time

import nats.js.errors
import pytest

from coo.budget.client import SUBJECT_SET_LIMIT
from coo.common import topology
from coo.common.bus import Bus
from coo.orchestrator import flow
from coo.orchestrator.engine import Engine
from coo.orchestrator.settings import OrchestratorSettings
from coo.v1 import agent_pb2, budget_pb2, common_pb2, mission_pb2


def _settings(url: str) -> OrchestratorSettings:
    return OrchestratorSettings(nats_url=url, mission_retention_count=0, mission_retention_seconds=0,
                                mission_retention_interval_seconds=3600)


@pytest.fixture
async def engine(nats_server):
    budget = await Bus.connect("test-budget", _settings(nats_server.url))

    async def set_limit(req: budget_pb2.SetLimitRequest) -> budget_pb2.SetLimitReply:
        return budget_pb2.SetLimitReply(ok=True)

    await budget.serve("budget", {SUBJECT_SET_LIMIT: (budget_pb2.SetLimitRequest, set_limit)})
    bus = await Bus.connect("test-orchestrator", _settings(nats_server.url))
    await bus.ensure_topology()
    eng = Engine(bus, _settings(nats_server.url))
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()
        await bus.close()
        await budget.close()


async def _tasks_for(bus: Bus, role: str) -> list[str]:
    """The ids of the tasks in the stream for ``role`` (their Nats-Msg-Id)."""
    info = await bus.js.stream_info(topology.STREAM_TASKS)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(topology.STREAM_TASKS, seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject == topology.task_subject(role):
            out.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    return out


def _plan(m: mission_pb2.Mission) -> agent_pb2.AgentResult:
    """The planner's answer to the task the mission awaits: one task."""
    return agent_pb2.AgentResult(task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_COO, ok=True,
                                 plan=[mission_pb2.PlannedTask(title="FizzBuzz", description="FizzBuzz")],
                                 usage=common_pb2.Usage(input_tokens=10, output_tokens=5, cost_usd=0.01, calls=1))


async def _until_the_engineer_task_is_published(engine: Engine, m: mission_pb2.Mission, fault: list):
    """Until the fault happened and the task the mission now awaits is in the stream (exactly once)."""
    deadline = time.monotonic() + 20
    while True:
        mission = await engine.get(m.mission_id)
        engineer_tasks = await _tasks_for(engine.bus, "engineer")
        if fault and mission.awaiting in engineer_tasks:
            break
        assert time.monotonic() < deadline, (fault, mission.awaiting, engineer_tasks)
        await asyncio.sleep(0.1)
    assert mission.status in flow.LIVE and engineer_tasks.count(mission.awaiting) == 1


async def test_a_redelivered_result_publishes_the_work_a_failed_dispatch_lost(engine, monkeypatch):
    m = await engine.create_mission("write a FizzBuzz function with tests", budget_usd=1.0)
    planner_task = m.awaiting
    plan = _plan(m)
    real_publish = engine.bus.publish
    failed = []

    async def leaderless(subject, message, **kw):
        if subject == topology.task_subject("engineer") and not failed:
            failed.append(subject)
            raise nats.js.errors.NoStreamResponseError()
        return await real_publish(subject, message, **kw)

    monkeypatch.setattr(engine.bus, "publish", leaderless)
    await engine.bus.publish(topology.AGENT_RESULTS, plan, msg_id=f"{planner_task}.result", mission_id=m.mission_id)
    await _until_the_engineer_task_is_published(engine, m, failed)


async def test_a_mission_write_whose_answer_was_lost_still_has_its_effects(engine, monkeypatch):
    """The write landed but its acknowledgement was lost with the stream's leader: the next try finds
    its own bytes in the bucket and goes on to publish the next work item (not a duplicate to drop)."""
    m = await engine.create_mission("write a FizzBuzz function with tests", budget_usd=1.0)
    plan = _plan(m)
    store = engine.store
    real_update = store.update
    lost = []

    async def answer_lost(key, value, last=None, **kw):
        revision = await real_update(key, value, last=last, **kw)
        if not lost:
            lost.append(revision)
            raise nats.js.errors.NoStreamResponseError()
        return revision

    monkeypatch.setattr(store, "update", answer_lost)
    await engine.bus.publish(topology.AGENT_RESULTS, plan, msg_id=f"{m.awaiting}.result", mission_id=m.mission_id)
    await _until_the_engineer_task_is_published(engine, m, lost)

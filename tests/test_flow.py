"""The mission state machine, step by step (pure functions; the end-to-end tests run it for real)."""

from __future__ import annotations

from coo.orchestrator import flow
from coo.v1 import agent_pb2, common_pb2, control_pb2, mission_pb2, sandbox_pb2

S = mission_pb2


def _mission(**kw) -> mission_pb2.Mission:
    m = mission_pb2.Mission(mission_id="m-1", goal="write a FizzBuzz function with tests", budget_usd=1.0, **kw)
    flow.create(m)
    return m


def _plan(m, titles=("FizzBuzz function",)):
    plan = [mission_pb2.PlannedTask(title=t, description=t) for t in titles]
    return agent_pb2.AgentResult(task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_COO, ok=True,
                                 plan=plan, usage=common_pb2.Usage(input_tokens=10, output_tokens=5, cost_usd=0.01,
                                                                   calls=1))


def _artifact(m):
    return agent_pb2.AgentResult(task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_ENGINEER, ok=True,
                                 artifact_files=[common_pb2.File(name="fizz.py", content="x")],
                                 artifact_command=["python3", "fizz.py"])


def _run(m, ok=True):
    return sandbox_pb2.SandboxResult(run_id=m.awaiting, mission_id=m.mission_id,
                                     outcome=sandbox_pb2.SANDBOX_OUTCOME_OK if ok else sandbox_pb2.SANDBOX_OUTCOME_FAILED,
                                     exit_code=0 if ok else 1)


def _verdict(m, passed):
    return agent_pb2.AgentResult(task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_QA, ok=True,
                                 verdict=agent_pb2.Verdict(passed=passed, feedback="" if passed else "off by one"))


POLICY = flow.Policy(max_retries=1, max_pending_work=3)


def _types(step):
    return [e.type for e in step.events]


def test_happy_path_events_in_order():
    m = _mission()
    assert m.status == S.MISSION_STATUS_PLANNING and m.awaiting == "m-1.plan"
    kinds = []
    step = flow.on_agent_result(m, _plan(m), POLICY)
    kinds += _types(step)
    assert m.status == S.MISSION_STATUS_EXECUTING and m.awaiting == "m-1.t0.eng.a1" and step.dispatch
    kinds += _types(flow.on_agent_result(m, _artifact(m), POLICY))
    assert m.awaiting_kind == "sandbox" and m.awaiting == "m-1.t0.run.a1"
    kinds += _types(flow.on_sandbox_result(m, _run(m), POLICY))
    assert m.status == S.MISSION_STATUS_REVIEWING and m.awaiting == "m-1.t0.qa.a1"
    step = flow.on_agent_result(m, _verdict(m, True), POLICY)
    kinds += _types(step)
    assert m.status == S.MISSION_STATUS_COMPLETED and step.finished and not m.awaiting
    order = [k for k in kinds if k in ("mission.planned", "task.started", "sandbox.executed", "task.reviewed",
                                        "mission.completed")]
    assert order == ["mission.planned", "task.started", "sandbox.executed", "task.reviewed", "mission.completed"]
    assert m.usage.cost_usd == 0.01 and m.tasks[0].status == S.TASK_STATUS_PASSED


def test_stale_and_duplicate_results_change_nothing():
    m = _mission()
    stale = _plan(m)
    flow.on_agent_result(m, stale, POLICY)
    before = m.SerializeToString()
    assert flow.on_agent_result(m, stale, POLICY) is None  # redelivered plan
    assert m.SerializeToString() == before


def test_failed_verdict_retries_with_feedback_then_fails():
    m = _mission()
    for _ in range(1):
        flow.on_agent_result(m, _plan(m), POLICY)
    flow.on_agent_result(m, _artifact(m), POLICY)
    flow.on_sandbox_result(m, _run(m, ok=False), POLICY)
    step = flow.on_agent_result(m, _verdict(m, False), POLICY)
    assert "task.retry" in _types(step) and m.retries == 1
    assert m.awaiting == "m-1.t0.eng.a2" and m.tasks[0].last_feedback == "off by one"
    work = flow.next_work(m, flow.SandboxDefaults())
    assert work[1].feedback == "off by one" and work[1].attempt == 2 and work[1].previous_files[0].name == "fizz.py"
    flow.on_agent_result(m, _artifact(m), POLICY)
    flow.on_sandbox_result(m, _run(m, ok=False), POLICY)
    step = flow.on_agent_result(m, _verdict(m, False), POLICY)
    assert m.status == S.MISSION_STATUS_FAILED and step.finished and "failed after 2 attempt" in m.error


def test_pause_parks_results_and_resume_applies_them():
    m = _mission()
    step, _, _ = flow.on_control(m, control_pb2.CONTROL_ACTION_PAUSE, "alice", "", POLICY)
    assert m.status == S.MISSION_STATUS_PAUSED and m.paused_from == S.MISSION_STATUS_PLANNING
    plan = _plan(m)
    step = flow.on_agent_result(m, plan, POLICY)
    assert _types(step) == ["result.parked"] and m.status == S.MISSION_STATUS_PAUSED and not m.tasks
    step, parked, parked_type = flow.on_control(m, control_pb2.CONTROL_ACTION_RESUME, "alice", "", POLICY)
    assert m.status == S.MISSION_STATUS_PLANNING and parked_type == "coo.v1.AgentResult"
    flow.on_agent_result(m, agent_pb2.AgentResult.FromString(parked), POLICY)
    assert m.status == S.MISSION_STATUS_EXECUTING and len(m.tasks) == 1


def test_control_rules():
    m = _mission()
    try:
        flow.check_control(m, control_pb2.CONTROL_ACTION_RESUME)
        raise AssertionError("resume of a running mission must be rejected")
    except flow.ControlRejected as exc:
        assert "not paused" in str(exc)
    flow.on_control(m, control_pb2.CONTROL_ACTION_CANCEL, "bob", "wrong goal", POLICY)
    assert m.status == S.MISSION_STATUS_CANCELLED
    assert flow.on_control(m, control_pb2.CONTROL_ACTION_PAUSE, "bob", "", POLICY)[0] is None


def test_approval_gate():
    m = _mission(require_approval=True)
    step = flow.on_agent_result(m, _plan(m), POLICY)
    assert m.status == S.MISSION_STATUS_AWAITING_APPROVAL and not step.dispatch
    step, _, _ = flow.on_control(m, control_pb2.CONTROL_ACTION_APPROVE, "carol", "", POLICY)
    assert m.status == S.MISSION_STATUS_EXECUTING and step.dispatch and m.approved_by == "carol"


def test_backpressure_hard_pauses_a_large_plan():
    m = _mission()
    step = flow.on_agent_result(m, _plan(m, titles=[f"t{i}" for i in range(5)]), POLICY)
    assert m.status == S.MISSION_STATUS_PAUSED and m.status_reason == "backpressure"
    assert "backpressure" in _types(step) and not step.dispatch
    step, _, _ = flow.on_control(m, control_pb2.CONTROL_ACTION_RESUME, "ops", "", POLICY)
    assert m.status == S.MISSION_STATUS_EXECUTING and step.dispatch and m.awaiting == "m-1.t0.eng.a1"


def test_budget_refusal_fails_or_pauses():
    refusal = lambda m: agent_pb2.AgentResult(task_id=m.awaiting, mission_id="m-1", ok=False,  # noqa: E731
                                              error_kind=agent_pb2.ERROR_KIND_BUDGET_EXCEEDED, error="mission limit")
    m = _mission()
    step = flow.on_agent_result(m, refusal(m), POLICY)
    assert m.status == S.MISSION_STATUS_BUDGET_EXCEEDED and step.finished

    pause = flow.Policy(on_budget_exceeded="pause")
    m = _mission()
    flow.on_agent_result(m, refusal(m), pause)
    assert m.status == S.MISSION_STATUS_PAUSED and m.dispatch_generation == 1
    step, _, _ = flow.on_control(m, control_pb2.CONTROL_ACTION_RESUME, "ops", "", pause)
    assert step.dispatch and m.status == S.MISSION_STATUS_PLANNING
    # the refused work goes out again under a new id, so bus dedup does not swallow it
    assert flow.next_work(m, flow.SandboxDefaults())[1].task_id == "m-1.plan.g1"

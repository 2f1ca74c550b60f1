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
    outcome = sandbox_pb2.SANDBOX_OUTCOME_OK if ok else sandbox_pb2.SANDBOX_OUTCOME_FAILED
    return sandbox_pb2.SandboxResult(run_id=m.awaiting, mission_id=m.mission_id, outcome=outcome,
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
    def refusal(m):
        return agent_pb2.AgentResult(task_id=m.awaiting, mission_id="m-1", ok=False,
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


# ------------------------------------------------------------------- the shared workspace

def _files(m, files, deleted=(), command=("python3", "-m", "unittest")):
    return agent_pb2.AgentResult(task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_ENGINEER, ok=True,
                                 artifact_files=[common_pb2.File(name=n, content=c) for n, c in files.items()],
                                 deleted_files=list(deleted), artifact_command=list(command), model="eng-model")


def _green(m, stderr="Ran 3 tests in 0.001s\n\nOK\n"):
    return sandbox_pb2.SandboxResult(run_id=m.awaiting, mission_id=m.mission_id, outcome=sandbox_pb2.SANDBOX_OUTCOME_OK,
                                     exit_code=0, stderr=stderr)


def _red(m):
    return sandbox_pb2.SandboxResult(run_id=m.awaiting, mission_id=m.mission_id,
                                     outcome=sandbox_pb2.SANDBOX_OUTCOME_FAILED, exit_code=1,
                                     stderr="FAIL: test_pop (test_stack.T)\nAssertionError: 1 != 2\n"
                                            "Ran 2 tests in 0.001s\n\nFAILED (failures=1)\n")


def _qa(m, passed, model="qa-model"):
    r = _verdict(m, passed)
    r.model = model
    return r


def _names(files):
    return [f.name for f in files]


def _pass_task(m, files, deleted=()):
    flow.on_agent_result(m, _files(m, files, deleted), BIG)
    flow.on_sandbox_result(m, _green(m), BIG)
    return flow.on_agent_result(m, _qa(m, True), BIG)


BIG = flow.Policy(max_retries=1, max_pending_work=100)


def test_later_tasks_see_and_build_on_the_workspace_of_earlier_ones():
    m = _mission()
    flow.on_agent_result(m, _plan(m, titles=("stack", "rpn")), BIG)
    assert len(flow.next_work(m, flow.SandboxDefaults())[1].workspace) == 0
    _pass_task(m, {"stack.py": "class Stack: ...", "test_stack.py": "t1"})
    assert _names(m.workspace) == ["stack.py", "test_stack.py"]
    task2 = flow.next_work(m, flow.SandboxDefaults())[1]
    assert task2.task_number == 2 and _names(task2.workspace) == ["stack.py", "test_stack.py"]
    assert [t.status for t in task2.plan] == [S.TASK_STATUS_PASSED, S.TASK_STATUS_IN_PROGRESS]
    flow.on_agent_result(m, _files(m, {"rpn.py": "from stack import Stack", "test_rpn.py": "t2"},
                                   deleted=["test_stack.py"]), BIG)
    run = flow.next_work(m, flow.SandboxDefaults())[1]
    # the sandbox runs the task's command in the whole workspace, not just the task's files
    assert _names(run.files) == ["rpn.py", "stack.py", "test_rpn.py"]
    flow.on_sandbox_result(m, _green(m), BIG)
    qa = flow.next_work(m, flow.SandboxDefaults())[1]
    assert _names(qa.workspace) == ["stack.py", "test_stack.py"] and _names(qa.artifact_files) == _names(run.files)
    step = flow.on_agent_result(m, _qa(m, True), BIG)
    assert m.status == S.MISSION_STATUS_COMPLETED and "3 file(s)" in m.status_reason and step.finished
    assert _names(m.workspace) == ["rpn.py", "stack.py", "test_rpn.py"]
    versions = [(v.task_id, v.attempt, list(v.changed), list(v.deleted), v.outcome) for v in m.workspace_versions]
    assert versions == [("m-1.t0", 1, ["stack.py", "test_stack.py"], [], "passed"),
                        ("m-1.t1", 1, ["rpn.py", "test_rpn.py"], ["test_stack.py"], "passed")]


def test_a_retry_starts_from_the_workspace_before_the_task():
    m = _mission()
    flow.on_agent_result(m, _plan(m, titles=("stack", "rpn")), BIG)
    _pass_task(m, {"stack.py": "v1"})
    flow.on_agent_result(m, _files(m, {"stack.py": "broken", "rpn.py": "r1"}), BIG)
    flow.on_sandbox_result(m, _red(m), BIG)
    step = flow.on_agent_result(m, _qa(m, False), BIG)
    assert "task.retry" in _types(step)
    retry = flow.next_work(m, flow.SandboxDefaults())[1]
    assert retry.attempt == 2 and by_name(retry.workspace) == {"stack.py": "v1"}
    assert by_name(retry.previous_files) == {"stack.py": "broken", "rpn.py": "r1"}
    flow.on_agent_result(m, _files(m, {"rpn.py": "r2"}), BIG)
    assert by_name(m.artifacts) == {"stack.py": "v1", "rpn.py": "r2"}  # the broken stack.py did not survive
    assert m.workspace_versions[1].outcome == "rejected" and m.workspace_versions[2].outcome == "candidate"


def by_name(files):
    return {f.name: f.content for f in files}


def test_qa_can_never_approve_a_red_run():
    m = _mission()
    flow.on_agent_result(m, _plan(m), BIG)
    flow.on_agent_result(m, _files(m, {"stack.py": "x"}), BIG)
    flow.on_sandbox_result(m, _red(m), BIG)
    step = flow.on_agent_result(m, _qa(m, True, model="yes-man"), BIG)
    overruled = [e for e in step.events if e.type == "qa.overruled"]
    assert overruled and overruled[0].attributes["model"] == "yes-man"
    assert "exited with code 1" in overruled[0].attributes["reason"]
    assert m.tasks[0].status == S.TASK_STATUS_IN_PROGRESS and m.tasks[0].attempts == 2 and not m.workspace
    assert "FAILED (failures=1)" in m.tasks[0].last_feedback  # the run's own output is the feedback


def test_a_run_that_ran_no_test_is_not_a_success():
    from coo.orchestrator import evidence

    m = _mission()
    flow.on_agent_result(m, _plan(m), BIG)
    flow.on_agent_result(m, _files(m, {"stack.py": "x"}), BIG)
    stderr = "\n" + "-" * 70 + "\nRan 0 tests in 0.000s\n\nOK\n"
    flow.on_sandbox_result(m, _green(m, stderr=stderr), BIG)
    step = flow.on_agent_result(m, _qa(m, True), BIG)
    assert "qa.overruled" in _types(step) and "ran no test" in m.tasks[0].last_feedback
    pytest_none = sandbox_pb2.SandboxResult(outcome=sandbox_pb2.SANDBOX_OUTCOME_FAILED, exit_code=5,
                                            stdout="collected 0 items\n\n=== no tests ran in 0.01s ===")
    assert "pytest collected none" in evidence.failure(pytest_none)
    cause = sandbox_pb2.SandboxResult(outcome=sandbox_pb2.SANDBOX_OUTCOME_ERROR, exit_code=-1,
                                      error="unable to find user sandbox")
    assert "unable to find user sandbox" in evidence.failure(cause)
    assert evidence.failure(sandbox_pb2.SandboxResult(outcome=sandbox_pb2.SANDBOX_OUTCOME_OK, stderr="Ran 2 tests")) \
        is None


def test_qa_may_reject_a_green_run():
    m = _mission()
    flow.on_agent_result(m, _plan(m), BIG)
    flow.on_agent_result(m, _files(m, {"a.py": "x"}), BIG)
    flow.on_sandbox_result(m, _green(m), BIG)
    step = flow.on_agent_result(m, _qa(m, False), BIG)
    assert "task.retry" in _types(step) and "qa.overruled" not in _types(step)


def test_a_change_past_the_workspace_limits_is_refused_with_the_reason():
    small = flow.Policy(max_retries=0, max_pending_work=100,
                        limits=flow.workspace.WorkspaceLimits(max_files=2, max_bytes=100, max_file_bytes=60))
    m = _mission()
    flow.on_agent_result(m, _plan(m), small)
    step = flow.on_agent_result(m, _files(m, {"a.py": "x" * 61}), small)
    assert "workspace.refused" in _types(step) and m.status == S.MISSION_STATUS_FAILED
    assert "61 bytes, more than the limit of 60" in m.error
    m = _mission()
    flow.on_agent_result(m, _plan(m), small)
    flow.on_agent_result(m, _files(m, {"a.py": "1", "b.py": "2", "c.py": "3"}), small)
    assert "3 files, more than the limit of 2" in m.error
    m = _mission()
    flow.on_agent_result(m, _plan(m), small)
    flow.on_agent_result(m, _files(m, {"../x.py": "1"}), small)
    assert "path separator" in m.error


def test_cost_estimated_is_said_once():
    m = _mission()
    flow.on_agent_result(m, _plan(m), BIG)
    r = _files(m, {"a.py": "x"})
    r.usage_estimated = True
    step = flow.on_agent_result(m, r, BIG)
    assert "cost.estimated" in _types(step) and m.cost_estimated


def test_pending_work_counts_work_items_and_retries_can_trip_backpressure():
    policy = flow.Policy(max_retries=3, max_pending_work=6)
    m = _mission()
    assert flow.pending_work(m) == 1
    flow.on_agent_result(m, _plan(m, titles=("a", "b")), policy)
    assert m.pending_work == 6 and m.status == S.MISSION_STATUS_EXECUTING
    flow.on_agent_result(m, _files(m, {"a.py": "x"}), policy)
    assert flow.pending_work(m) == 5
    flow.on_sandbox_result(m, _red(m), policy)
    assert flow.pending_work(m) == 4
    flow.on_agent_result(m, _qa(m, False), policy)  # a retry puts the task's work back: 6, at the bound
    assert m.status == S.MISSION_STATUS_EXECUTING and m.pending_work == 6
    policy.max_pending_work = 5
    flow.on_agent_result(m, _files(m, {"a.py": "y"}), policy)
    flow.on_sandbox_result(m, _red(m), policy)
    step = flow.on_agent_result(m, _qa(m, False), policy)
    assert m.status == S.MISSION_STATUS_PAUSED and m.status_reason == "backpressure" and not step.dispatch
    assert "backpressure" in _types(step)
    step, _, _ = flow.on_control(m, control_pb2.CONTROL_ACTION_RESUME, "ops", "", policy)
    assert m.status == S.MISSION_STATUS_EXECUTING and step.dispatch and m.pending_work_accepted == 6
    assert m.awaiting == "m-1.t0.eng.a3"

"""The mission state machine, as pure functions over a ``Mission`` message.

Each step mutates the mission and returns what should happen next (timeline events, whether
to dispatch the outstanding work item). The engine persists the mission with compare-and-set
and only then performs the effects, so a step can be retried safely.

The work a mission waits for is always derivable from its state (``awaiting`` and
``awaiting_kind``); :func:`next_work` rebuilds it, which is how a restarted orchestrator (or a
resume) dispatches it again under the same id (the bus deduplicates by that id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp

from coo.common import topology, workspace
from coo.orchestrator import evidence
from coo.v1 import agent_pb2, common_pb2, mission_pb2, sandbox_pb2

S = mission_pb2
FINAL = frozenset({S.MISSION_STATUS_COMPLETED, S.MISSION_STATUS_FAILED, S.MISSION_STATUS_CANCELLED,
                   S.MISSION_STATUS_BUDGET_EXCEEDED})
LIVE = frozenset({S.MISSION_STATUS_CREATED, S.MISSION_STATUS_PLANNING, S.MISSION_STATUS_AWAITING_APPROVAL,
                  S.MISSION_STATUS_EXECUTING, S.MISSION_STATUS_REVIEWING, S.MISSION_STATUS_PAUSED})
PAUSABLE = LIVE - {S.MISSION_STATUS_PAUSED}

KIND_PLAN, KIND_ENGINEER, KIND_SANDBOX, KIND_QA = "plan", "engineer", "sandbox", "qa"
# Work items a task still needs once its current item is: engineer → sandbox run → QA.
_REMAINING = {KIND_ENGINEER: 3, KIND_SANDBOX: 2, KIND_QA: 1}
WORK_PER_TASK = 3


Status: TypeAlias = mission_pb2.MissionStatus.ValueType   # (int at run time)


def status_name(status: Status) -> str:
    return S.MissionStatus.Name(status).removeprefix("MISSION_STATUS_").lower()


def status_value(name: str) -> Status:
    return S.MissionStatus.Value("MISSION_STATUS_" + name.upper())


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


@dataclass
class Event:
    type: str
    message: str
    level: str = "info"
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Policy:
    max_retries: int = 2
    # Work items (engineer answers, sandbox runs, QA verdicts) still ahead of a mission.
    max_pending_work: int = 12
    on_budget_exceeded: str = "fail"   # or "pause"
    limits: workspace.WorkspaceLimits = field(default_factory=workspace.WorkspaceLimits)


@dataclass
class Step:
    """What a transition asks the engine to do after the mission is stored."""

    events: list[Event] = field(default_factory=list)
    dispatch: bool = False
    finished: bool = False

    def event(self, type_: str, message: str, level: str = "info", **attributes: object) -> None:
        self.events.append(Event(type_, message, level, {k: str(v) for k, v in attributes.items()}))


# ------------------------------------------------------------------------ helpers

def _set_status(m: mission_pb2.Mission, status: Status, step: Step, reason: str = "") -> None:
    if m.status == status:
        return
    before = m.status
    m.status = status
    m.status_reason = reason
    m.updated_at.CopyFrom(now())
    step.event("status.changed", f"{status_name(before)} → {status_name(status)}" + (f": {reason}" if reason else ""),
               **{"from": status_name(before), "to": status_name(status)})
    if status in FINAL:
        m.finished_at.CopyFrom(now())
        m.awaiting = ""
        m.awaiting_kind = ""
        step.finished = True


def _await(m: mission_pb2.Mission, kind: str, step: Step) -> None:
    i = m.current_task
    gen = f".g{m.dispatch_generation}" if m.dispatch_generation else ""
    if kind == KIND_PLAN:
        m.awaiting = f"{m.mission_id}.plan{gen}"
    else:
        attempt = m.tasks[i].attempts
        short = {KIND_ENGINEER: "eng", KIND_SANDBOX: "run", KIND_QA: "qa"}[kind]
        m.awaiting = f"{m.mission_id}.t{i}.{short}.a{attempt}{gen}"
    m.awaiting_kind = kind
    step.dispatch = True


def finish(m: mission_pb2.Mission, status: Status, step: Step, reason: str) -> None:
    if status == S.MISSION_STATUS_FAILED:
        m.error = reason
    _set_status(m, status, step, reason)
    label = {S.MISSION_STATUS_COMPLETED: "mission.completed", S.MISSION_STATUS_FAILED: "mission.failed",
             S.MISSION_STATUS_CANCELLED: "mission.cancelled",
             S.MISSION_STATUS_BUDGET_EXCEEDED: "mission.budget_exceeded"}[status]
    step.event(label, reason or status_name(status),
               level="info" if status == S.MISSION_STATUS_COMPLETED else "warning",
               cost_usd=f"{m.usage.cost_usd:.6f}", retries=m.retries)


def _start_task(m: mission_pb2.Mission, index: int, step: Step) -> None:
    m.current_task = index
    task = m.tasks[index]
    task.status = S.TASK_STATUS_IN_PROGRESS
    task.attempts += 1
    if task.attempts == 1:
        task.started_at.CopyFrom(now())
    _set_status(m, S.MISSION_STATUS_EXECUTING, step)
    _await(m, KIND_ENGINEER, step)
    step.event("task.started", f"task {index + 1}/{len(m.tasks)} “{task.title}”, attempt {task.attempts}",
               task_id=task.task_id, attempt=task.attempts)


def _add_usage(m: mission_pb2.Mission, usage: common_pb2.Usage) -> None:
    m.usage.input_tokens += usage.input_tokens
    m.usage.output_tokens += usage.output_tokens
    m.usage.cost_usd += usage.cost_usd
    m.usage.calls += usage.calls


def pending_work(m: mission_pb2.Mission) -> int:
    """Work items still ahead of the mission, the outstanding one included: every queued task
    needs an engineer answer, a sandbox run and a QA verdict; the task in progress what is left of
    those. A retry puts its task's items back, so the count grows with rework."""
    if m.status in FINAL:
        return 0
    if m.awaiting_kind == KIND_PLAN:
        return 1
    total = 0
    for i, t in enumerate(m.tasks):
        if t.status == S.TASK_STATUS_PENDING:
            total += WORK_PER_TASK
        elif t.status == S.TASK_STATUS_IN_PROGRESS:
            current = i == m.current_task and m.awaiting_kind in _REMAINING
            total += _REMAINING[m.awaiting_kind] if current else WORK_PER_TASK
    return total


def _over_bound(m: mission_pb2.Mission, policy: Policy, step: Step) -> bool:
    """Backpressure: record the pending work; past the bound (or past what an operator accepted
    by resuming) the mission is hard-paused and only control messages move it."""
    m.pending_work = pending_work(m)
    bound = max(policy.max_pending_work, m.pending_work_accepted)
    if m.pending_work <= bound:
        return False
    step.event("backpressure", f"pending work {m.pending_work} > bound {bound}: hard pause "
               "(resume to accept it)", level="warning", pending_work=m.pending_work, bound=bound)
    m.paused_from = m.status if m.status != S.MISSION_STATUS_PLANNING else S.MISSION_STATUS_EXECUTING
    step.dispatch = False
    _set_status(m, S.MISSION_STATUS_PAUSED, step, "backpressure")
    return True


def _budget_exceeded(m: mission_pb2.Mission, reason: str, policy: Policy, step: Step) -> None:
    step.event("budget.exceeded", reason, level="warning")
    if policy.on_budget_exceeded == "pause":
        m.paused_from = m.status
        # A resume dispatches the refused work again under a new id, so bus dedup keeps it.
        m.dispatch_generation += 1
        _await(m, m.awaiting_kind, step)
        step.dispatch = False
        _set_status(m, S.MISSION_STATUS_PAUSED, step, f"budget exceeded: {reason}")
    else:
        m.error = reason
        finish(m, S.MISSION_STATUS_BUDGET_EXCEEDED, step, reason)


# ----------------------------------------------------------------------- creation

def create(m: mission_pb2.Mission) -> Step:
    """A new mission (fields from the API already set) starts planning."""
    step = Step()
    step.event("mission.created", f"mission created: {m.goal[:200]}", budget_usd=f"{m.budget_usd:.4f}",
               require_approval=m.require_approval)
    m.status = S.MISSION_STATUS_CREATED
    _set_status(m, S.MISSION_STATUS_PLANNING, step)
    _await(m, KIND_PLAN, step)
    return step


# ------------------------------------------------------------------------ results

def on_agent_result(m: mission_pb2.Mission, r: agent_pb2.AgentResult, policy: Policy) -> Step | None:
    """Apply an agent's result. ``None``: stale or duplicate, nothing changes."""
    if m.status in FINAL or r.task_id != m.awaiting:
        return None
    step = Step()
    if m.status == S.MISSION_STATUS_PAUSED:
        m.parked_result = r.SerializeToString()
        m.parked_type = r.DESCRIPTOR.full_name
        step.event("result.parked", f"{m.awaiting_kind} result held while paused", task_id=r.task_id)
        return step
    _add_usage(m, r.usage)
    if r.error_kind == agent_pb2.ERROR_KIND_BUDGET_EXCEEDED:
        _budget_exceeded(m, r.error or "budget exceeded", policy, step)
        return step
    kind = m.awaiting_kind
    if kind == KIND_PLAN:
        _on_plan(m, r, policy, step)
    elif kind == KIND_ENGINEER:
        _on_artifact(m, r, policy, step)
    elif kind == KIND_QA:
        _on_verdict(m, r, policy, step)
    else:
        return None
    return step


def _on_plan(m: mission_pb2.Mission, r: agent_pb2.AgentResult, policy: Policy, step: Step) -> None:
    if not r.ok or not r.plan:
        finish(m, S.MISSION_STATUS_FAILED, step, f"planning failed: {r.error or 'empty plan'}")
        return
    del m.tasks[:]
    for i, planned in enumerate(r.plan):
        task = m.tasks.add()
        task.CopyFrom(planned)
        task.task_id = f"{m.mission_id}.t{i}"
        task.status = S.TASK_STATUS_PENDING
        task.attempts = 0
    m.awaiting = ""
    m.awaiting_kind = ""
    step.event("mission.planned", f"planned {len(m.tasks)} task(s): " + "; ".join(t.title for t in m.tasks),
               tasks=len(m.tasks))
    next_status = S.MISSION_STATUS_AWAITING_APPROVAL if m.require_approval else S.MISSION_STATUS_EXECUTING
    if _over_bound(m, policy, step):
        m.paused_from = next_status
        return
    _after_plan(m, next_status, step)


def _after_plan(m: mission_pb2.Mission, next_status: Status, step: Step) -> None:
    if next_status == S.MISSION_STATUS_AWAITING_APPROVAL:
        _set_status(m, S.MISSION_STATUS_AWAITING_APPROVAL, step)
        step.event("approval.requested", "the plan waits for an operator's approval")
    else:
        _start_task(m, 0, step)


def _on_artifact(m: mission_pb2.Mission, r: agent_pb2.AgentResult, policy: Policy, step: Step) -> None:
    task = m.tasks[m.current_task]
    if not r.ok:
        if r.error_kind == agent_pb2.ERROR_KIND_INVALID_OUTPUT:
            _failed_attempt(m, f"the engineer's answer was invalid: {r.error}", policy, step)
        else:
            finish(m, S.MISSION_STATUS_FAILED, step, f"engineer failed on “{task.title}”: {r.error}")
        return
    if r.usage_estimated:
        _cost_estimated(m, step)
    try:
        candidate, changed, deleted = workspace.apply(m.workspace, r.artifact_files, r.deleted_files,
                                                      policy.limits)
    except workspace.WorkspaceError as exc:
        step.event("workspace.refused", f"the change of “{task.title}” was refused: {exc}", level="warning",
                   task_id=task.task_id, attempt=task.attempts)
        _failed_attempt(m, f"The workspace refused your change: {exc}. Change fewer or smaller files.",
                        policy, step)
        return
    del m.artifacts[:]
    m.artifacts.extend(candidate)
    del m.artifact_command[:]
    m.artifact_command.extend(r.artifact_command)
    m.workspace_versions.add(task_id=task.task_id, attempt=task.attempts, changed=changed, deleted=deleted,
                             files=len(candidate), bytes=workspace.size_of(candidate), outcome="candidate",
                             at=now())
    what = ", ".join(changed) or "no file"
    if deleted:
        what += "; deleted " + ", ".join(deleted)
    step.event("artifact.written", f"changed {what} (workspace: {len(candidate)} file(s))",
               task_id=task.task_id, attempt=task.attempts, changed=len(changed), deleted=len(deleted),
               workspace_files=len(candidate))
    _await(m, KIND_SANDBOX, step)


def _cost_estimated(m: mission_pb2.Mission, step: Step) -> None:
    if not m.cost_estimated:
        m.cost_estimated = True
        step.event("cost.estimated", "the LLM endpoint reported no token usage: the cost of such calls "
                   "is the reservation's estimate, not the provider's figure", level="warning")


def _close_version(m: mission_pb2.Mission, outcome: str) -> None:
    if m.workspace_versions and m.workspace_versions[-1].outcome == "candidate":
        m.workspace_versions[-1].outcome = outcome


def on_sandbox_result(m: mission_pb2.Mission, r: sandbox_pb2.SandboxResult, policy: Policy) -> Step | None:
    if m.status in FINAL or r.run_id != m.awaiting:
        return None
    step = Step()
    if m.status == S.MISSION_STATUS_PAUSED:
        m.parked_result = r.SerializeToString()
        m.parked_type = r.DESCRIPTOR.full_name
        step.event("result.parked", "sandbox result held while paused", run_id=r.run_id)
        return step
    m.last_sandbox_result.CopyFrom(r)
    outcome = evidence.outcome_name(r.outcome)
    cause = f": {r.error}" if r.error else ""
    step.event("sandbox.executed",
               f"{outcome}, exit code {r.exit_code}, {r.duration_seconds:.2f}s ({r.backend}){cause}",
               level="info" if outcome == "ok" else "warning", run_id=r.run_id, outcome=outcome,
               exit_code=r.exit_code, duration_seconds=f"{r.duration_seconds:.3f}", error=r.error[:500])
    _set_status(m, S.MISSION_STATUS_REVIEWING, step)
    _await(m, KIND_QA, step)
    return step


def _on_verdict(m: mission_pb2.Mission, r: agent_pb2.AgentResult, policy: Policy, step: Step) -> None:
    task = m.tasks[m.current_task]
    if not r.ok:
        finish(m, S.MISSION_STATUS_FAILED, step, f"QA failed on “{task.title}”: {r.error}")
        return
    if r.usage_estimated:
        _cost_estimated(m, step)
    v = r.verdict
    task.last_score = v.score
    step.event("task.reviewed", f"“{task.title}” {'passed' if v.passed else 'failed'} by QA (score {v.score:.2f})",
               level="info" if v.passed else "warning", task_id=task.task_id, passed=v.passed,
               attempt=task.attempts)
    red = evidence.failure(m.last_sandbox_result)
    if v.passed and red is not None:
        # QA may reject a green run; it can never approve a red one.
        step.event("qa.overruled", f"QA approved “{task.title}”, but {red}: the attempt fails",
                   level="warning", task_id=task.task_id, attempt=task.attempts, model=r.model or "unknown",
                   reason=red)
        tail = evidence.output_tail(m.last_sandbox_result)
        _failed_attempt(m, f"The run does not support a pass: {red}." + (f"\nOutput:\n{tail}" if tail else ""),
                        policy, step)
        return
    if v.passed:
        task.status = S.TASK_STATUS_PASSED
        task.finished_at.CopyFrom(now())
        task.last_feedback = v.feedback
        _close_version(m, "passed")
        del m.workspace[:]
        m.workspace.extend(m.artifacts)
        if m.current_task + 1 < len(m.tasks):
            _start_task(m, m.current_task + 1, step)
        else:
            finish(m, S.MISSION_STATUS_COMPLETED, step,
                    f"all {len(m.tasks)} task(s) passed; the workspace holds {len(m.workspace)} file(s)")
        m.pending_work = pending_work(m)
        return
    _failed_attempt(m, v.feedback or "QA rejected the artifact", policy, step)


def _failed_attempt(m: mission_pb2.Mission, feedback: str, policy: Policy, step: Step) -> None:
    task = m.tasks[m.current_task]
    task.last_feedback = feedback
    _close_version(m, "rejected")
    if task.attempts <= policy.max_retries:
        m.retries += 1
        step.event("task.retry", f"retry {task.attempts}/{policy.max_retries} of “{task.title}” with the feedback, "
                   "from the workspace as it was before the task",
                   level="warning", task_id=task.task_id, retries=m.retries)
        _start_task(m, m.current_task, step)
        _over_bound(m, policy, step)
    else:
        task.status = S.TASK_STATUS_FAILED
        task.finished_at.CopyFrom(now())
        finish(m, S.MISSION_STATUS_FAILED, step,
                f"“{task.title}” failed after {task.attempts} attempt(s): {feedback[:300]}")


# ----------------------------------------------------------------------- controls

class ControlRejected(ValueError):
    """The action does not apply to the mission's current state (HTTP 409)."""


def check_control(m: mission_pb2.Mission, action: int) -> None:
    name = status_name(m.status)
    if m.status in FINAL:
        raise ControlRejected(f"mission {m.mission_id} is {name}: it can no longer be changed")
    if action == 1 and m.status not in PAUSABLE:  # pause
        raise ControlRejected(f"mission {m.mission_id} is already paused")
    if action == 2 and m.status != S.MISSION_STATUS_PAUSED:  # resume
        raise ControlRejected(f"mission {m.mission_id} is not paused (it is {name})")
    if action == 4 and m.status != S.MISSION_STATUS_AWAITING_APPROVAL:  # approve
        raise ControlRejected(f"mission {m.mission_id} is not awaiting approval (it is {name})")


def on_control(m: mission_pb2.Mission, action: int, by: str, reason: str,
               policy: Policy) -> tuple[Step | None, bytes, str]:
    """Apply a control action. Returns (step, parked result bytes, parked type) — a parked result
    must be applied by the engine right after a resume."""
    from coo.v1 import control_pb2 as C

    try:
        check_control(m, action)
    except ControlRejected:
        return None, b"", ""
    step = Step()
    parked, parked_type = b"", ""
    who = by or "operator"
    if action == C.CONTROL_ACTION_PAUSE:
        m.paused_from = m.status
        _set_status(m, S.MISSION_STATUS_PAUSED, step, f"paused by {who}" + (f": {reason}" if reason else ""))
        step.event("mission.paused", f"paused by {who}", by=who)
    elif action == C.CONTROL_ACTION_RESUME:
        target = m.paused_from or S.MISSION_STATUS_EXECUTING
        was_backpressure = m.status_reason == "backpressure"
        m.paused_from = S.MISSION_STATUS_UNSPECIFIED
        step.event("mission.resumed", f"resumed by {who}", by=who)
        if was_backpressure:
            m.pending_work_accepted = pending_work(m)
        if was_backpressure and not m.awaiting:
            _after_plan(m, target, step)
        else:
            _set_status(m, target, step, f"resumed by {who}")
            parked, parked_type = m.parked_result, m.parked_type
            m.parked_result = b""
            m.parked_type = ""
            if not parked and m.awaiting:
                step.dispatch = True
    elif action == C.CONTROL_ACTION_CANCEL:
        finish(m, S.MISSION_STATUS_CANCELLED, step, f"cancelled by {who}" + (f": {reason}" if reason else ""))
    elif action == C.CONTROL_ACTION_APPROVE:
        m.approved_by = who
        m.approved_at.CopyFrom(now())
        step.event("mission.approved", f"plan approved by {who}", by=who)
        _start_task(m, 0, step)
    else:
        return None, b"", ""
    return step, parked, parked_type


# ------------------------------------------------------------------- next work

@dataclass
class SandboxDefaults:
    timeout_seconds: float = 20.0
    memory_mb: int = 256
    cpu_seconds: float = 10.0
    max_output_bytes: int = 64_000


def next_work(m: mission_pb2.Mission, sandbox: SandboxDefaults) -> tuple[str, object] | None:
    """The message the mission waits for, rebuilt from its state (subject, message)."""
    if not m.awaiting or m.status in FINAL:
        return None
    kind = m.awaiting_kind
    created = now()
    if kind == KIND_PLAN:
        return topology.task_subject("coo"), agent_pb2.AgentTask(
            task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_COO, attempt=1, goal=m.goal,
            model=m.model, created_at=created)
    task = m.tasks[m.current_task]
    if kind == KIND_ENGINEER:
        msg = agent_pb2.AgentTask(
            task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_ENGINEER, attempt=task.attempts,
            goal=m.goal, task=task, model=m.model, created_at=created, task_number=m.current_task + 1,
            feedback=task.last_feedback if task.attempts > 1 else "")
        msg.plan.extend(m.tasks)
        msg.workspace.extend(m.workspace)
        if task.attempts > 1:
            # The retry starts from the workspace before the task; what the last attempt changed
            # is shown so that it can be improved on rather than rewritten blind.
            msg.previous_files.extend(workspace.changes(m.workspace, m.artifacts)[0])
        return topology.task_subject("engineer"), msg
    if kind == KIND_SANDBOX:
        return topology.SANDBOX_RUNS, sandbox_pb2.SandboxRun(
            # files: the whole candidate workspace
            run_id=m.awaiting, mission_id=m.mission_id, task_id=task.task_id, files=m.artifacts,
            command=m.artifact_command, created_at=created,
            limits=sandbox_pb2.SandboxLimits(timeout_seconds=sandbox.timeout_seconds, memory_mb=sandbox.memory_mb,
                                             cpu_seconds=sandbox.cpu_seconds,
                                             max_output_bytes=sandbox.max_output_bytes))
    if kind == KIND_QA:
        return topology.task_subject("qa"), agent_pb2.AgentTask(
            task_id=m.awaiting, mission_id=m.mission_id, role=common_pb2.ROLE_QA, attempt=task.attempts,
            goal=m.goal, task=task, artifact_files=m.artifacts, artifact_command=m.artifact_command,
            sandbox_result=m.last_sandbox_result, model=m.model, created_at=created,
            workspace=m.workspace, task_number=m.current_task + 1)
    return None

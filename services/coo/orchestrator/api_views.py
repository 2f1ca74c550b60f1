"""What the orchestrator's REST API takes and answers: request bodies (pydantic) and the JSON views of
missions, workspaces, timeline events and budget scopes built from their protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from coo.common import workspace
from coo.orchestrator import flow
from coo.v1 import budget_pb2, control_pb2, mission_pb2, sandbox_pb2

ACTIONS = {
    "pause": control_pb2.CONTROL_ACTION_PAUSE,
    "resume": control_pb2.CONTROL_ACTION_RESUME,
    "cancel": control_pb2.CONTROL_ACTION_CANCEL,
    "approve": control_pb2.CONTROL_ACTION_APPROVE,
}


class MissionRequest(BaseModel):
    goal: str = Field(..., min_length=1, max_length=4000, description="what the agents should build")
    budget_usd: float | None = Field(None, gt=0, le=10_000, description="mission budget (default from config)")
    require_approval: bool | None = Field(None, description="wait for an operator's approval after planning")
    model: str | None = Field(None, max_length=100, pattern=r"^[A-Za-z0-9._:/-]*$")
    max_retries: int | None = Field(None, ge=0, le=10)
    labels: dict[str, str] = Field(default_factory=dict, max_length=20)


class ControlRequest(BaseModel):
    action: Literal["pause", "resume", "cancel", "approve"]
    reason: str = Field("", max_length=500)


class Accepted(BaseModel):
    control_id: str
    mission_id: str
    action: str


class Alert(BaseModel):
    status: str = Field(..., max_length=20)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str | None = None
    endsAt: str | None = None


class AlertmanagerWebhook(BaseModel):
    """The payload of Alertmanager's webhook_config (version 4)."""

    version: str = "4"
    status: str = ""
    receiver: str = ""
    alerts: list[Alert] = Field(default_factory=list, max_length=1000)


class ErrorBody(BaseModel):
    detail: str


def _ts(ts) -> str | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _outcome(value: int) -> str:
    name = sandbox_pb2.SandboxOutcome.Name(sandbox_pb2.SandboxOutcome.ValueType(value))
    return name.removeprefix("SANDBOX_OUTCOME_").lower()


def mission_view(m: mission_pb2.Mission, *, with_files: bool = True) -> dict[str, Any]:
    end = m.finished_at if m.finished_at.seconds else None
    duration = None
    if m.created_at.seconds:
        end_ns = end.ToNanoseconds() if end else int(datetime.now(UTC).timestamp() * 1e9)
        duration = round((end_ns - m.created_at.ToNanoseconds()) / 1e9, 3)
    view: dict[str, Any] = {
        "mission_id": m.mission_id,
        "goal": m.goal,
        "status": flow.status_name(m.status),
        "status_reason": m.status_reason,
        "paused_from": flow.status_name(m.paused_from) if m.paused_from else None,
        "created_at": _ts(m.created_at), "updated_at": _ts(m.updated_at), "finished_at": _ts(m.finished_at),
        "duration_seconds": duration,
        "budget_usd": m.budget_usd,
        "cost_usd": round(m.usage.cost_usd, 6),
        "tokens": {"input": m.usage.input_tokens, "output": m.usage.output_tokens},
        "llm_calls": m.usage.calls,
        "retries": m.retries,
        "max_retries": m.max_retries,
        "require_approval": m.require_approval,
        "approved_by": m.approved_by or None,
        "current_task": m.current_task if m.tasks else None,
        "awaiting": m.awaiting_kind or None,
        "pending_work": m.pending_work,
        "tasks": [{
            "task_id": t.task_id, "title": t.title, "description": t.description,
            "status": mission_pb2.TaskStatus.Name(t.status).removeprefix("TASK_STATUS_").lower(),
            "attempts": t.attempts, "last_feedback": t.last_feedback, "last_score": t.last_score,
        } for t in m.tasks],
        "trace_id": m.trace_id,
        "error": m.error or None,
        "labels": dict(m.labels),
        "model": m.model or None,
        "cost_estimated": m.cost_estimated,
        "workspace": {"files": len(m.workspace), "bytes": workspace.size_of(m.workspace)},
    }
    if m.last_sandbox_result.run_id:
        r = m.last_sandbox_result
        view["last_sandbox_result"] = {"run_id": r.run_id, "outcome": _outcome(r.outcome), "exit_code": r.exit_code,
                                       "duration_seconds": r.duration_seconds, "backend": r.backend,
                                       "error": r.error or None,
                                       "stdout": r.stdout[-2000:], "stderr": r.stderr[-2000:]}
    if with_files:
        view["artifacts"] = [{"name": f.name, "content": f.content} for f in m.artifacts]
        view["artifact_command"] = list(m.artifact_command)
    return view


def workspace_view(m: mission_pb2.Mission, candidate: bool = False) -> dict[str, Any]:
    files = m.artifacts if candidate else m.workspace
    return {
        "mission_id": m.mission_id,
        "status": flow.status_name(m.status),
        "final": m.status in flow.FINAL and not candidate,
        "candidate": candidate,
        "files": [{"name": f.name, "bytes": len(f.content.encode("utf-8"))} for f in files],
        "bytes": workspace.size_of(files),
        "command": list(m.artifact_command),
        "versions": [{"task_id": v.task_id, "attempt": v.attempt, "changed": list(v.changed),
                      "deleted": list(v.deleted), "files": v.files, "bytes": v.bytes, "outcome": v.outcome,
                      "at": _ts(v.at)} for v in m.workspace_versions],
    }


def event_view(e) -> dict[str, Any]:
    return {"event_id": e.event_id, "at": _ts(e.at), "type": e.type, "message": e.message, "level": e.level,
            "service": e.service, "status": flow.status_name(e.status) if e.status else None,
            "attributes": dict(e.attributes), "trace_id": e.trace_id or None}


def budget_scope_view(sc) -> dict[str, Any]:
    return {
        "scope": budget_pb2.BudgetScope.Name(sc.scope).removeprefix("BUDGET_SCOPE_").lower(),
        "key": sc.key,
        "limit_usd": round(sc.limit_usd, 6), "spent_usd": round(sc.spent_usd, 6),
        "reserved_usd": round(sc.reserved_usd, 6),
        "remaining_usd": round(sc.remaining_usd, 6) if sc.limit_usd > 0 else None,
        "limit_tokens": sc.limit_tokens, "spent_tokens": sc.spent_tokens, "reserved_tokens": sc.reserved_tokens,
        "remaining_tokens": sc.remaining_tokens if sc.limit_tokens > 0 else None,
        "reservations": sc.reservations, "updated_at": _ts(sc.updated_at),
    }


#: the error answers every authenticated call documents
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 401: {"model": ErrorBody},
                                          403: {"model": ErrorBody}}

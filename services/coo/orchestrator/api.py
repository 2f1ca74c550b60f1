"""The orchestrator's public REST API (FastAPI; the OpenAPI spec is at ``/openapi.json``).

Every call but the probes (``/healthz``, ``/readyz``), ``/metrics`` and the API's own description
(``/docs``, ``/openapi.json``) needs ``Authorization: Bearer <token>``: the operator's token
(``COO_API_TOKEN``) for anything, or the read-only token (``COO_API_READ_TOKEN``) for reads only; a
mutating call with the read-only token gets 403. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nats.js.errors import BadRequestError as NatsBadRequest
from nats.js.errors import NotFoundError as NatsNotFound
from pydantic import BaseModel, Field

from coo import __version__
from coo.budget import client as budget_client
from coo.common import timeline, workspace
from coo.common.bus import ServiceError
from coo.orchestrator import flow, history
from coo.orchestrator.engine import AdmissionRefused, Engine, MissionNotFound, NotReady
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


OPERATOR, READER = "operator", "reader"


def create_api(engine: Engine, token: str, read_token: str | None = None) -> FastAPI:
    """The API; ``token`` is the operator's (every call), ``read_token`` the read-only one (reads)."""
    app = FastAPI(
        title="COO orchestrator", version=__version__,
        description="Missions for teams of LLM agents: submit, follow, control. Every call needs a bearer "
                    "token: the operator's for anything, the read-only one for reads.",
    )
    bearer = HTTPBearer(auto_error=False)
    tokens = [(OPERATOR, token.encode())] + ([(READER, read_token.encode())] if read_token else [])

    def who_is(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:  # noqa: B008
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token (Authorization: Bearer …)",
                                headers={"WWW-Authenticate": "Bearer"})
        given = creds.credentials.encode()
        # every token compared, each in constant time: the answer's timing says nothing of which matched
        matches = [who for who, expected in tokens if hmac.compare_digest(given, expected)]
        if not matches:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        return matches[0]

    def require_token(who: str = Depends(who_is)) -> str:
        if who != OPERATOR:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the read-only token (COO_API_READ_TOKEN) cannot change "
                                "anything: this call needs the operator's token (COO_API_TOKEN)")
        return who

    reader = [Depends(who_is)]
    errors: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 401: {"model": ErrorBody},
                                              403: {"model": ErrorBody}}

    async def _mission(mission_id: str) -> mission_pb2.Mission:
        if len(mission_id) > 64:
            raise HTTPException(404, f"no mission {mission_id[:64]}…")
        try:
            return await engine.get(mission_id)
        except MissionNotFound:
            raise HTTPException(404, f"no mission {mission_id}") from None

    @app.post("/v1/missions", status_code=201, responses={**errors, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    async def create_mission(body: MissionRequest, response: Response, who: str = Depends(require_token)):
        """Submit a mission. Answers at once; follow it with GET /v1/missions/{id}."""
        try:
            m = await engine.create_mission(body.goal, budget_usd=body.budget_usd, require_approval=body.require_approval,
                                            submitted_by=who, model=body.model or "", labels=body.labels,
                                            max_retries=body.max_retries)
        except AdmissionRefused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})
        except (ServiceError, TimeoutError, RuntimeError) as exc:
            return JSONResponse({"detail": f"cannot admit the mission now: {exc}"}, status_code=503,
                                headers={"Retry-After": "5"})
        response.headers["Location"] = f"/v1/missions/{m.mission_id}"
        return mission_view(m)

    @app.get("/v1/missions", responses={**errors, 422: {"model": ErrorBody}}, dependencies=reader)
    async def list_missions(status_: str | None = Query(None, alias="status", pattern="^[a-z_,]+$", max_length=200,
                                                        description="a status, several comma-separated, or "
                                                                    "`live` / `final` for every live or final one"),
                            since: datetime | None = Query(  # noqa: B008
                                None, description="ISO-8601; missions created after"),
                            limit: int = Query(50, ge=1, le=1000),
                            cursor: str | None = Query(None, max_length=200,
                                                       description="the `next_cursor` of the previous page")):
        """Missions, newest first, a page at a time: ``next_cursor`` (null on the last page) gives the
        next one with the same filters; ``total`` is how many match the filters in all. Answered from
        the orchestrator's index of the history: a page costs the same whatever the history holds."""
        statuses: list[int] | None = None
        if status_ is not None:
            statuses = []
            for name in filter(None, status_.split(",")):
                if name in ("live", "final"):
                    statuses += sorted(flow.LIVE if name == "live" else flow.FINAL)
                    continue
                try:
                    statuses.append(flow.status_value(name))
                except ValueError:
                    raise HTTPException(422, f"unknown status {name!r}") from None
        try:
            before = history.decode_cursor(cursor) if cursor else None
        except history.BadCursor as exc:
            raise HTTPException(422, str(exc)) from None
        since_ns = None
        if since is not None:
            since_ns = int((since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp() * 1e9)
        missions, after, total = await engine.list_missions(statuses, since_ns=since_ns, before=before, limit=limit)
        out = [mission_view(m, with_files=False) for m in missions]
        return {"missions": out, "count": len(out), "total": total,
                "next_cursor": history.encode_cursor(after) if after else None}

    @app.get("/v1/missions/{mission_id}", responses=errors, dependencies=reader)
    async def get_mission(mission_id: str):
        return mission_view(await _mission(mission_id))

    candidate_query = Query(False, description="the current attempt's candidate instead of the workspace "
                                               "of passed tasks")

    @app.get("/v1/missions/{mission_id}/workspace", responses=errors, dependencies=reader)
    async def get_workspace(mission_id: str, candidate: bool = candidate_query):
        """The mission's workspace (every passed task's files; the mission's result once it is final):
        file list with sizes, and one entry per engineer attempt."""
        return workspace_view(await _mission(mission_id), candidate)

    @app.get("/v1/missions/{mission_id}/workspace/files/{name}", responses=errors,
             response_class=PlainTextResponse, dependencies=reader)
    async def get_workspace_file(mission_id: str, name: str, candidate: bool = candidate_query):
        """One file of the workspace, as text."""
        m = await _mission(mission_id)
        content = workspace.by_name(m.artifacts if candidate else m.workspace).get(name)
        if content is None:
            raise HTTPException(404, f"mission {mission_id} has no file {name[:255]!r} in its workspace")
        return PlainTextResponse(content, media_type="text/plain; charset=utf-8")

    @app.get("/v1/missions/{mission_id}/workspace.tar.gz", responses=errors, dependencies=reader)
    async def get_workspace_tarball(mission_id: str, candidate: bool = candidate_query):
        """The workspace as a gzip-compressed tar, every file under ``<mission id>/``."""
        m = await _mission(mission_id)
        data = workspace.tarball(m.artifacts if candidate else m.workspace, m.mission_id)
        return Response(data, media_type="application/gzip",
                        headers={"Content-Disposition": f'attachment; filename="{m.mission_id}.tar.gz"'})

    @app.get("/v1/missions/{mission_id}/timeline", responses=errors, dependencies=reader)
    async def get_timeline(mission_id: str):
        await _mission(mission_id)
        events = await timeline.read(engine.bus, mission_id)
        return {"mission_id": mission_id, "events": [event_view(e) for e in events]}

    @app.post("/v1/missions/{mission_id}/control", status_code=202,
              responses={**errors, 409: {"model": ErrorBody}}, response_model=Accepted)
    async def control(mission_id: str, body: ControlRequest, who: str = Depends(require_token)):
        """Pause, resume, cancel or approve a mission (a CONTROL message on the bus)."""
        await _mission(mission_id)
        try:
            control_id = await engine.request_control(mission_id, ACTIONS[body.action], by=who, reason=body.reason)
        except flow.ControlRejected as exc:
            raise HTTPException(409, str(exc)) from None
        return Accepted(control_id=control_id, mission_id=mission_id, action=body.action)

    @app.get("/v1/dlq", responses=errors, dependencies=reader)
    async def dlq(limit: int = Query(100, ge=1, le=1000)):
        """Dead letters: messages terminated as invalid or past their delivery limit."""
        entries = await engine.bus.dead_letters(limit)
        return {"dead_letters": entries, "count": len(entries)}

    @app.post("/v1/dlq/{dlq_id}/replay", responses=errors)
    async def replay(dlq_id: int = FastApiPath(..., ge=1, le=2**63 - 1), who: str = Depends(require_token)):
        """Publish a dead letter's original message again."""
        try:
            return await engine.bus.replay(dlq_id)
        except (LookupError, NatsNotFound, NatsBadRequest):
            raise HTTPException(404, f"no dead letter {dlq_id} (or its original message has expired)") from None

    @app.get("/v1/status", responses=errors, dependencies=reader)
    async def admission_status():
        """Admission state: budget scopes closed by the budget-exceeded alert, and until when."""
        blocks = await engine.active_admission_blocks()
        return {"admission": "closed" if blocks else "open", "blocked_scopes": blocks}

    @app.get("/v1/budget", responses={**errors, 503: {"model": ErrorBody}}, dependencies=reader)
    async def budget(mission_id: str | None = Query(None, max_length=64,
                                                    description="also the scope of this mission")):
        """Spent, reserved and remaining per budget scope (the day, the month, and the mission if asked),
        as the budget service reports them."""
        if mission_id:
            await _mission(mission_id)
        try:
            # The budget service's status verb (what BudgetClient.status sends), but without binding the
            # mission to the call: a read must not start a second trace tagged with the mission's id
            # (Jaeger finds a mission by that tag: one mission, one trace).
            reply = await engine.bus.request(budget_client.SUBJECT_STATUS,
                                             budget_pb2.BudgetStatusRequest(mission_id=mission_id or ""),
                                             budget_pb2.BudgetStatusReply, timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - no responders, timeout, a service error
            return JSONResponse({"detail": f"the budget service did not answer: {type(exc).__name__} {exc}".strip()},
                                status_code=503, headers={"Retry-After": "5"})
        if not reply.ok and not reply.scopes:
            return JSONResponse({"detail": f"the budget service refused: {reply.reason}"}, status_code=503)
        return {"mission_id": mission_id or None, "scopes": [budget_scope_view(sc) for sc in reply.scopes]}

    @app.get("/v1/system/timeline", responses=errors, dependencies=reader)
    async def system_timeline():
        """Events that concern no single mission (admission closed and opened by budget alerts)."""
        from coo.orchestrator.engine import SYSTEM_TIMELINE

        events = await timeline.read(engine.bus, SYSTEM_TIMELINE)
        return {"events": [event_view(e) for e in events]}

    @app.post("/v1/alerts")
    async def alerts(payload: AlertmanagerWebhook, who: str = Depends(require_token)):
        """Alertmanager's webhook receiver (BudgetExceeded closes admission in its scope)."""
        return await engine.on_alerts(payload.model_dump())

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        from coo.common.telemetry import get_logger

        get_logger("coo.orchestrator.api").error("request failed", path=request.url.path,
                                                  error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app

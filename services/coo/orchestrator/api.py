"""The orchestrator's public REST API (FastAPI; the OpenAPI spec is at ``/openapi.json``).

Every call but the probes (``/healthz``, ``/readyz``), ``/metrics`` and the API's own description
(``/docs``, ``/openapi.json``) needs ``Authorization: Bearer <token>``: the operator's token
(``COO_API_TOKEN``) for anything, or the read-only token (``COO_API_READ_TOKEN``) for reads only; a
mutating call with the read-only token gets 403. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nats.js.errors import BadRequestError as NatsBadRequest
from nats.js.errors import NotFoundError as NatsNotFound

from coo import __version__
from coo.budget import client as budget_client
from coo.common import timeline, workspace
from coo.common.bus import ServiceError
from coo.common.telemetry import get_logger
from coo.orchestrator import flow, history
from coo.orchestrator.api_views import (
    ACTIONS,
    ERRORS,
    Accepted,
    AlertmanagerWebhook,
    ControlRequest,
    ErrorBody,
    MissionRequest,
    budget_scope_view,
    event_view,
    mission_view,
    workspace_view,
)
from coo.orchestrator.engine import SYSTEM_TIMELINE, AdmissionRefused, Engine, MissionNotFound, NotReady
from coo.v1 import budget_pb2, mission_pb2

__all__ = ["budget_scope_view", "create_api", "event_view", "mission_view", "workspace_view"]

OPERATOR, READER = "operator", "reader"

# ------------------------------------------------------------------------------ dependencies

bearer = HTTPBearer(auto_error=False)


def who_is(request: Request,
           creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """Whose token the call carries (OPERATOR or READER); 401 without a valid one."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token (Authorization: Bearer …)",
                            headers={"WWW-Authenticate": "Bearer"})
    given = creds.credentials.encode()
    # every token compared, each in constant time: the answer's timing says nothing of which matched
    matches = [who for who, expected in request.app.state.api_tokens if hmac.compare_digest(given, expected)]
    if not matches:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    return matches[0]


def require_token(who: Annotated[str, Depends(who_is)]) -> str:
    """The operator's token: a change with the read-only one gets 403."""
    if who != OPERATOR:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the read-only token (COO_API_READ_TOKEN) cannot change "
                            "anything: this call needs the operator's token (COO_API_TOKEN)")
    return who


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]
reader = [Depends(who_is)]

# ------------------------------------------------------------------------- missions and ops

missions_router = APIRouter()
ops_router = APIRouter()


async def _mission(engine: Engine, mission_id: str) -> mission_pb2.Mission:
    if len(mission_id) > 64:
        raise HTTPException(404, f"no mission {mission_id[:64]}…")
    try:
        return await engine.get(mission_id)
    except MissionNotFound:
        raise HTTPException(404, f"no mission {mission_id}") from None


@missions_router.post("/v1/missions", status_code=201,
                      responses={**ERRORS, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def create_mission(engine: EngineDep, body: MissionRequest, response: Response,
                         who: str = Depends(require_token)):
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


@missions_router.get("/v1/missions", responses={**ERRORS, 422: {"model": ErrorBody}}, dependencies=reader)
async def list_missions(engine: EngineDep,
                        status_: str | None = Query(None, alias="status", pattern="^[a-z_,]+$", max_length=200,
                                                    description="a status, several comma-separated, or "
                                                                "`live` / `final` for every live or final one"),
                        since: datetime | None = Query(  # noqa: B008 - FastAPI reads its parameters' defaults
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


@missions_router.get("/v1/missions/{mission_id}", responses=ERRORS, dependencies=reader)
async def get_mission(engine: EngineDep, mission_id: str):
    return mission_view(await _mission(engine, mission_id))


candidate_query = Query(False, description="the current attempt's candidate instead of the workspace "
                                           "of passed tasks")


@missions_router.get("/v1/missions/{mission_id}/workspace", responses=ERRORS, dependencies=reader)
async def get_workspace(engine: EngineDep, mission_id: str, candidate: bool = candidate_query):
    """The mission's workspace (every passed task's files; the mission's result once it is final):
    file list with sizes, and one entry per engineer attempt."""
    return workspace_view(await _mission(engine, mission_id), candidate)


@missions_router.get("/v1/missions/{mission_id}/workspace/files/{name}", responses=ERRORS,
         response_class=PlainTextResponse, dependencies=reader)
async def get_workspace_file(engine: EngineDep, mission_id: str, name: str, candidate: bool = candidate_query):
    """One file of the workspace, as text."""
    m = await _mission(engine, mission_id)
    content = workspace.by_name(m.artifacts if candidate else m.workspace).get(name)
    if content is None:
        raise HTTPException(404, f"mission {mission_id} has no file {name[:255]!r} in its workspace")
    return PlainTextResponse(content, media_type="text/plain; charset=utf-8")


@missions_router.get("/v1/missions/{mission_id}/workspace.tar.gz", responses=ERRORS, dependencies=reader)
async def get_workspace_tarball(engine: EngineDep, mission_id: str, candidate: bool = candidate_query):
    """The workspace as a gzip-compressed tar, every file under ``<mission id>/``."""
    m = await _mission(engine, mission_id)
    data = workspace.tarball(m.artifacts if candidate else m.workspace, m.mission_id)
    return Response(data, media_type="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="{m.mission_id}.tar.gz"'})


@missions_router.get("/v1/missions/{mission_id}/timeline", responses=ERRORS, dependencies=reader)
async def get_timeline(engine: EngineDep, mission_id: str):
    await _mission(engine, mission_id)
    events = await timeline.read(engine.bus, mission_id)
    return {"mission_id": mission_id, "events": [event_view(e) for e in events]}


@missions_router.post("/v1/missions/{mission_id}/control", status_code=202,
          responses={**ERRORS, 409: {"model": ErrorBody}}, response_model=Accepted)
async def control(engine: EngineDep, mission_id: str, body: ControlRequest, who: str = Depends(require_token)):
    """Pause, resume, cancel or approve a mission (a CONTROL message on the bus)."""
    await _mission(engine, mission_id)
    try:
        control_id = await engine.request_control(mission_id, ACTIONS[body.action], by=who, reason=body.reason)
    except flow.ControlRejected as exc:
        raise HTTPException(409, str(exc)) from None
    return Accepted(control_id=control_id, mission_id=mission_id, action=body.action)


@ops_router.get("/v1/dlq", responses=ERRORS, dependencies=reader)
async def dlq(engine: EngineDep, limit: int = Query(100, ge=1, le=1000)):
    """Dead letters: messages terminated as invalid or past their delivery limit."""
    entries = await engine.bus.dead_letters(limit)
    return {"dead_letters": entries, "count": len(entries)}


@ops_router.post("/v1/dlq/{dlq_id}/replay", responses=ERRORS)
async def replay(engine: EngineDep, dlq_id: int = FastApiPath(..., ge=1, le=2**63 - 1),
                 who: str = Depends(require_token)):
    """Publish a dead letter's original message again."""
    try:
        return await engine.bus.replay(dlq_id)
    except (LookupError, NatsNotFound, NatsBadRequest):
        raise HTTPException(404, f"no dead letter {dlq_id} (or its original message has expired)") from None


@ops_router.get("/v1/status", responses=ERRORS, dependencies=reader)
async def admission_status(engine: EngineDep):
    """Admission state: budget scopes closed by the budget-exceeded alert, and until when."""
    blocks = await engine.active_admission_blocks()
    return {"admission": "closed" if blocks else "open", "blocked_scopes": blocks}


@ops_router.get("/v1/budget", responses={**ERRORS, 503: {"model": ErrorBody}}, dependencies=reader)
async def budget(engine: EngineDep, mission_id: str | None = Query(None, max_length=64,
                                                description="also the scope of this mission")):
    """Spent, reserved and remaining per budget scope (the day, the month, and the mission if asked),
    as the budget service reports them."""
    if mission_id:
        await _mission(engine, mission_id)
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


@ops_router.get("/v1/system/timeline", responses=ERRORS, dependencies=reader)
async def system_timeline(engine: EngineDep):
    """Events that concern no single mission (admission closed and opened by budget alerts)."""
    events = await timeline.read(engine.bus, SYSTEM_TIMELINE)
    return {"events": [event_view(e) for e in events]}


@ops_router.post("/v1/alerts")
async def alerts(engine: EngineDep, payload: AlertmanagerWebhook, who: str = Depends(require_token)):
    """Alertmanager's webhook receiver (BudgetExceeded closes admission in its scope)."""
    return await engine.on_alerts(payload.model_dump())


# ---------------------------------------------------------------------------- error handlers


async def not_ready(request: Request, exc: NotReady):
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def unexpected(request: Request, exc: Exception):
    get_logger("coo.orchestrator.api").error("request failed", path=request.url.path,
                                              error=f"{type(exc).__name__}: {exc}")
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def create_api(engine: Engine, token: str, read_token: str | None = None) -> FastAPI:
    """The API; ``token`` is the operator's (every call), ``read_token`` the read-only one (reads)."""
    app = FastAPI(
        title="COO orchestrator", version=__version__,
        description="Missions for teams of LLM agents: submit, follow, control. Every call needs a bearer "
                    "token: the operator's for anything, the read-only one for reads.",
    )
    app.state.engine = engine
    app.state.api_tokens = [(OPERATOR, token.encode())] + ([(READER, read_token.encode())] if read_token else [])
    app.include_router(missions_router)
    app.include_router(ops_router)
    # Starlette types every handler as taking Exception, though it calls each with its own class only
    app.add_exception_handler(NotReady, not_ready)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
    return app

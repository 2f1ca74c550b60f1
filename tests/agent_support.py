"""The agent's test bench: a scripted OpenAI-compatible endpoint, a fake budget responder on the
bus, a results collector and an agent run in-process (fixtures in ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from coo.agent import roles
from coo.agent.service import start
from coo.agent.settings import AgentSettings
from coo.common import topology
from coo.common.bus import Bus
from coo.common.service import serve_service
from coo.v1 import agent_pb2, budget_pb2
from tests.natsserver import free_port

SECRET_KEY = "sk-test-agentKEY0123456789abcdefDoNotLeak"
GOAL = "write a function that parses ISO dates, with tests"


# ------------------------------------------------------------------------ HTTP servers
class ThreadServer:
    """An ASGI app served by uvicorn in a background thread on a free loopback port."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)


class Scripted:
    """An OpenAI-compatible chat endpoint answering from a script (content strings or HTTP errors)."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict] = []
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            step = self.script.pop(0) if self.script else "{}"
            if isinstance(step, int):
                return JSONResponse({"error": {"message": f"scripted {step}", "type": "server_error",
                                               "param": None, "code": None}}, status_code=step)
            if isinstance(step, str):
                step = {"content": step}
            if "status" in step:  # an HTTP error with the provider's own message
                return JSONResponse({"error": {"message": step["message"], "type": "invalid_request_error",
                                               "param": step.get("param"), "code": None}},
                                    status_code=step["status"], headers=step.get("headers"))
            answer = {
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": step.get("finish_reason", "stop"),
                             "message": {"role": "assistant", "content": step.get("content"),
                                         "refusal": step.get("refusal")}}],
                "usage": {"prompt_tokens": 100 + len(self.requests), "completion_tokens": 7,
                          "total_tokens": 107 + len(self.requests)},
            }
            if step.get("no_usage"):
                del answer["usage"]
            return JSONResponse(answer)


# --------------------------------------------------------------------------- the bus side
@dataclass
class FakeBudget:
    """Approves every reservation except for the missions in ``refuse``; prices 1 $/Mtok in, 2 $/Mtok out."""

    refuse: dict[str, str] = field(default_factory=dict)
    reserves: list[budget_pb2.ReserveRequest] = field(default_factory=list)
    settles: list[budget_pb2.SettleRequest] = field(default_factory=list)
    releases: list[budget_pb2.ReleaseRequest] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    async def reserve(self, req: budget_pb2.ReserveRequest) -> budget_pb2.ReserveReply:
        self.reserves.append(req)
        self.events.append(f"reserve {req.reservation_id}")
        if req.mission_id in self.refuse:
            return budget_pb2.ReserveReply(ok=False, reservation_id=req.reservation_id,
                                           reason=self.refuse[req.mission_id], scope=budget_pb2.BUDGET_SCOPE_MISSION)
        return budget_pb2.ReserveReply(ok=True, reservation_id=req.reservation_id, remaining_usd=10.0,
                                       reserved_usd=(req.input_tokens + 2 * req.max_output_tokens) / 1e6)

    async def settle(self, req: budget_pb2.SettleRequest) -> budget_pb2.SettleReply:
        self.settles.append(req)
        self.events.append(f"settle {req.reservation_id}")
        return budget_pb2.SettleReply(ok=True, cost_usd=(req.input_tokens + 2 * req.output_tokens) / 1e6,
                                      remaining_usd=9.0)

    async def release(self, req: budget_pb2.ReleaseRequest) -> budget_pb2.ReleaseReply:
        self.releases.append(req)
        self.events.append(f"release {req.reservation_id}")
        return budget_pb2.ReleaseReply(ok=True)


class Results:
    def __init__(self, bus: Bus) -> None:
        self.items: dict[str, agent_pb2.AgentResult] = {}
        bus.consume("orchestrator-agent-results", self._on, [agent_pb2.AgentResult])

    async def _on(self, result: agent_pb2.AgentResult, delivery) -> None:
        self.items[result.task_id] = result

    async def wait(self, task_id: str, timeout: float = 20.0) -> agent_pb2.AgentResult:
        deadline = time.monotonic() + timeout
        while task_id not in self.items:
            assert time.monotonic() < deadline, f"no result for {task_id}"
            await asyncio.sleep(0.02)
        return self.items[task_id]


@asynccontextmanager
async def running_agent(nats_url: str, llm_url: str, **overrides):
    values = {"nats_url": nats_url, "agent_port": free_port(), "llm_base_url": llm_url, "llm_api_key": SECRET_KEY,
              "agent_heartbeat_seconds": 0.2}
    values.update(overrides)
    settings = AgentSettings(**values)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_service("agent", settings.agent_port, settings, start, stop=stop,
                                             install_signals=False))
    try:
        yield settings
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def make_task(role: int, task_id: str, mission_id: str = "m-1", **fields) -> agent_pb2.AgentTask:
    task = agent_pb2.AgentTask(task_id=task_id, mission_id=mission_id, role=role, attempt=1, goal=GOAL, **fields)
    return task


async def publish(bus: Bus, task: agent_pb2.AgentTask, role: str | None = None) -> None:
    role = role or roles.ROLE_NAMES[task.role]
    await bus.publish(topology.task_subject(role), task, msg_id=task.task_id, mission_id=task.mission_id)


async def wait_spans(spans, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in spans.get_finished_spans() if predicate(s)]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)

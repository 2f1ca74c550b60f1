"""The orchestrator process: the REST API and the mission engine on one event loop."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from coo.common.service import ServiceContext, serve_service
from coo.common.telemetry import get_logger
from coo.orchestrator.api import create_api
from coo.orchestrator.engine import Engine
from coo.orchestrator.settings import OrchestratorSettings

log = get_logger("coo.orchestrator")


def build(settings: OrchestratorSettings) -> tuple[Engine, FastAPI]:
    engine = Engine(None, settings)  # the bus is attached when the service connects
    app = create_api(engine, settings.resolve_api_token(), settings.resolve_api_read_token())
    return engine, app


async def serve(settings: OrchestratorSettings | None = None, *, stop: asyncio.Event | None = None,
                install_signals: bool = True) -> None:
    settings = settings or OrchestratorSettings()
    engine, app = build(settings)

    async def start(ctx: ServiceContext) -> None:
        engine.bus = ctx.bus
        await engine.start()
        ctx.on_stop.append(engine.stop)
        log.info("API token files", path=str(settings.token_path()) if settings.api_token is None else "(from env)",
                 read_only=str(settings.read_token_path()) if settings.api_read_token is None else "(from env)")

    await serve_service("orchestrator", settings.orchestrator_port, settings, start, app=app,
                        host=settings.orchestrator_host, stop=stop, install_signals=install_signals)

"""What every bus service shares: telemetry, the NATS connection, an HTTP port with
``/healthz``, ``/readyz`` and ``/metrics``, and a graceful shutdown.

A service is an ``async def start(ctx)`` that registers its consumers/endpoints on ``ctx.bus``
and returns; ``run_service`` then waits for SIGTERM/SIGINT, says why it stops, stops taking
work, lets in-flight handlers finish (or hands them back: JetStream redelivers anything not
acked), and flushes its telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request

from coo.common.bus import Bus
from coo.common.config import CommonSettings, service_host
from coo.common.retry import Policy, Stopped
from coo.common.telemetry import Telemetry, configure_logging, get_logger, setup_telemetry, telemetry_installed

log = get_logger("coo.service")

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass
class ServiceContext:
    name: str
    settings: CommonSettings
    bus: Bus
    app: FastAPI
    telemetry: Telemetry
    stop: asyncio.Event
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def metrics_response(request: Request) -> Response:
    """Prometheus text, or OpenMetrics (which carries exemplars) when the scraper asks for it."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(REGISTRY), headers={"Content-Type": content_type})


def add_ops_routes(app: FastAPI, checks: dict[str, ReadinessCheck], service: str) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(response: Response) -> dict[str, Any]:
        results = {}
        ok = True
        for name, check in checks.items():
            try:
                passed, detail = await check()
            except Exception as exc:  # noqa: BLE001 - a check that raises is a failed check
                passed, detail = False, f"{type(exc).__name__}: {exc}"
            results[name] = {"ok": passed, "detail": detail}
            ok = ok and passed
        response.status_code = 200 if ok else 503
        return {"status": "ready" if ok else "not ready", "service": service, "checks": results}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return metrics_response(request)


def instrument_app(app: FastAPI) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # One SERVER span per request: the ASGI "http receive"/"http send" children carry nothing an
    # operator reads and were a fifth of a mission's spans (their creation and export with them).
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"])


#: NATS not up yet (the stack starts in any order, a server restarting): try again, longer each time.
_CONNECT = Policy("nats connect", attempts=None, initial=0.2, maximum=5.0)


async def connect_bus(name: str, settings: CommonSettings, stop: asyncio.Event) -> Bus | None:
    """Connect and declare the topology, retrying (each retry logged with its cause) until it works
    or ``stop`` is set (then None)."""

    async def connect() -> Bus:
        bus = await Bus.connect(name, settings)
        try:
            await bus.ensure_topology()
        except BaseException:
            await bus.close()      # no connection left behind by a failed try
            raise
        return bus

    try:
        async for attempt in _CONNECT.bind(nats_url=settings.nats_url).retrying(stop_event=stop):
            with attempt:
                return await connect()
    except Stopped:
        return None
    return None


async def serve_service(name: str, port: int, settings: CommonSettings,
                        start: Callable[[ServiceContext], Awaitable[None]], *,
                        app: FastAPI | None = None, host: str | None = None,
                        stop: asyncio.Event | None = None, install_signals: bool = True) -> None:
    """Serve service ``name``: its HTTP port on ``host`` (default: :func:`service_host`, i.e.
    ``COO_<NAME>_HOST``, else loopback), the bus, and ``start``; until SIGTERM/SIGINT or ``stop``."""
    host = host or service_host(name)
    telemetry = setup_telemetry(name)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    why: list[str] = []  # why the service stops: the signal, else the error, else a stop event
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, name, sig, stop, why)
    app = app or FastAPI(title=f"coo {name}", docs_url=None, redoc_url=None)
    started = asyncio.Event()

    async def started_check() -> tuple[bool, str]:
        return started.is_set(), "started" if started.is_set() else "connecting to NATS and starting"

    # Not ready until connected and started: the HTTP port answers /healthz from the first moment.
    checks: dict[str, ReadinessCheck] = {"started": started_check}
    add_ops_routes(app, checks, name)
    instrument_app(app)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           lifespan="off"))
    server_task = asyncio.create_task(server.serve(), name=f"http:{name}")
    bus = await connect_bus(name, settings, stop)
    ctx = None
    try:
        if bus is not None:
            async def nats_check() -> tuple[bool, str]:
                return bus.nc.is_connected, "connected" if bus.nc.is_connected else "disconnected"

            checks["nats"] = nats_check
            ctx = ServiceContext(name, settings, bus, app, telemetry, stop, checks)
            await start(ctx)
            started.set()
            log.info("service started", host=host, port=port, nats_url=settings.nats_url)
            if telemetry.debug:
                await _debug_dump(ctx)
            await stop.wait()
    except BaseException as exc:
        why.append(f"{type(exc).__name__}: {exc}" if not isinstance(exc, asyncio.CancelledError) else "cancelled")
        raise
    finally:
        log.info("service stopping: no new work; finishing in-flight messages", service=name,
                 reason=why[0] if why else "stop requested", grace_seconds=settings.shutdown_grace_seconds)
        if ctx is not None:
            for hook in ctx.on_stop:
                try:
                    await hook()
                except Exception as exc:  # noqa: BLE001 - one failing hook must not skip the others
                    log.warning("stop hook failed", error=str(exc))
        if bus is not None:
            await bus.close()
        server.should_exit = True
        try:
            await asyncio.wait_for(server_task, timeout=5)
        except (TimeoutError, asyncio.CancelledError):
            server_task.cancel()
        log.info("service stopped; flushing telemetry", service=name)
        telemetry.shutdown()


def config_dump(settings: CommonSettings) -> dict[str, Any]:
    """The service's configuration as it runs: every setting (secrets as ``**********``: pydantic's
    ``SecretStr``), and the standard ``OTEL_*`` variables. The log line carrying it is scrubbed too."""
    out = settings.model_dump(mode="json")
    out["otel"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("OTEL_") and "HEADERS" not in k}
    return out


async def _debug_dump(ctx: ServiceContext) -> None:
    """COO_DEBUG: what the service was configured with and the state it starts in, one DEBUG line each."""
    log.debug("debug: configuration", service=ctx.name, config=config_dump(ctx.settings))
    checks = {}
    for name, check in ctx.checks.items():
        try:
            ok, detail = await check()
        except Exception as exc:  # noqa: BLE001 - a check that raises is a failed check
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks[name] = {"ok": ok, "detail": detail}
    try:
        bus = await ctx.bus.debug_state()
    except Exception as exc:  # noqa: BLE001 - a dump never fails a start
        bus = {"error": f"{type(exc).__name__}: {exc}"}
    log.debug("debug: state at start", service=ctx.name, checks=checks, bus=bus,
              debug_log=str(ctx.telemetry.debug_log) if ctx.telemetry.debug_log else None)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM/SIGINT and stops uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _on_signal(name: str, sig: signal.Signals, stop: asyncio.Event, why: list[str]) -> None:
    log.info("stop requested", service=name, signal=sig.name)
    why.append(sig.name)
    stop.set()


def run(name: str, port: int | Callable[[Any], int], settings: CommonSettings | Callable[[], CommonSettings],
        start: Callable[[ServiceContext], Awaitable[None]], **kwargs: Any) -> None:
    """Entry point of ``python -m coo.<service>``. ``settings`` may be the settings class (or any
    factory) and ``port`` a function of the settings: then a configuration error is a crash like
    any other, logged as one (:func:`run_main`)."""

    def main() -> Coroutine[Any, Any, None]:
        s = settings() if callable(settings) else settings
        return serve_service(name, port(s) if callable(port) else port, s, start, **kwargs)

    run_main(name, main)


def run_main(name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` (which builds the service's settings and serves it) to its end. An unhandled
    exception, a configuration error included, logs one critical line (JSON, scrubbed, with the
    traceback) before the process exits with status 1."""
    try:
        asyncio.run(main())
    except Exception as exc:  # the last line of a crashing service
        if not telemetry_installed():
            configure_logging(name)
        log.critical("service crashed", service=name, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        raise SystemExit(1) from None

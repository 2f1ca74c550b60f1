"""Run mockllm: ``python -m coo.mockllm`` (COO_MOCKLLM_HOST / COO_MOCKLLM_PORT, default
127.0.0.1:8090; COO_MOCKLLM_SCENARIO sets server-wide scenario defaults)."""

from __future__ import annotations

import structlog
import uvicorn

from .app import Settings, create_app

log = structlog.get_logger(__name__)


def main() -> None:
    settings = Settings()
    app = create_app(settings)
    log.info("mockllm.starting", host=settings.host, port=settings.port,
             scenario=app.state.default_scenario.names)
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), access_log=False)


if __name__ == "__main__":
    main()

"""One embedded stack for the whole test session (registered by tests/conftest.py's pytest_plugins):
the end-to-end checks (tests/test_stack_e2e.py) and the browser checks (tests/test_stack_ui.py) share
it, so `make test` starts the collector, Jaeger, Prometheus, Alertmanager, the trace UI and the
services once."""

from __future__ import annotations

import os

import pytest

from tests.harness import embedded_stack, missing_stack_tools


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """(StackSettings, API token) of the running stack; skipped where its tools are missing."""
    if why := missing_stack_tools():
        pytest.skip(f"the embedded stack is incomplete here ({why}); make test builds it")
    saved = dict(os.environ)
    with embedded_stack(tmp_path_factory.mktemp("fullstack"), {"COO_SPANMETRICS_FLUSH_INTERVAL": "2s"}) as started:
        # supervisord keeps the environment the services were started with; the rest of the session
        # (other test modules) runs with its own
        os.environ.clear()
        os.environ.update(saved)
        yield started

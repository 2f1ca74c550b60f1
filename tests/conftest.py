"""Shared fixtures: real servers on loopback, an in-memory span exporter for assertions."""

from __future__ import annotations

import os

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coo.budget.client import SUBJECT_RELEASE as RELEASE_SUBJECT
from coo.budget.client import SUBJECT_RESERVE as RESERVE_SUBJECT
from coo.budget.client import SUBJECT_SETTLE as SETTLE_SUBJECT
from coo.common.bus import Bus
from coo.common.config import CommonSettings
from coo.v1 import budget_pb2
from tests.agent_support import FakeBudget, Results, Scripted, ThreadServer
from tests.natsserver import NatsServer

os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never a real collector by accident

_SPANS = InMemorySpanExporter()


def pytest_configure(config):
    from coo.common.telemetry import setup_telemetry

    setup_telemetry("coo-tests", span_exporter=_SPANS)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _SPANS.clear()
    return _SPANS


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(data_dir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


# ------------------------------------------------------------------- the agent's test bench
@pytest.fixture(scope="module")
def mock_llm():
    from coo.mockllm import Settings, create_app

    with ThreadServer(create_app(Settings())) as url:
        yield url


@pytest.fixture(scope="module")
def scripted_server():
    scripted = Scripted()
    with ThreadServer(scripted.app) as url:
        yield scripted, url


@pytest.fixture
def scripted(scripted_server):
    s, url = scripted_server
    s.script.clear()
    s.requests.clear()
    return s, url


@pytest.fixture
async def env(nats_server):
    """A bus with the topology, a fake budget service answering on it, and the agents' results."""
    settings = CommonSettings(nats_url=nats_server.url)
    bus = await Bus.connect("test-orchestrator", settings)
    await bus.ensure_topology()
    budget_bus = await Bus.connect("test-budget", settings)
    budget = FakeBudget()
    await budget_bus.serve("budget", {
        RESERVE_SUBJECT: (budget_pb2.ReserveRequest, budget.reserve),
        SETTLE_SUBJECT: (budget_pb2.SettleRequest, budget.settle),
        RELEASE_SUBJECT: (budget_pb2.ReleaseRequest, budget.release),
    })
    results = Results(bus)
    try:
        yield bus, budget, results, nats_server.url
    finally:
        await bus.close()
        await budget_bus.close()


# the session's one embedded stack (fixture `embedded`)
pytest_plugins = ["tests.stack_fixture"]

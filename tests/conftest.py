"""Shared fixtures: real servers on loopback, an in-memory span exporter for assertions."""

from __future__ import annotations

import os

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coo.common.natsserver import NatsServer

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

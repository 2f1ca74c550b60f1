"""The GenAI telemetry against OpenTelemetry semantic conventions v1.41.0.

The tables below are written from open-telemetry/semantic-conventions at tag v1.41.0
(``model/gen-ai/spans.yaml``, ``model/gen-ai/metrics.yaml``; rendered in
``docs/gen-ai/gen-ai-agent-spans.md``, ``gen-ai-spans.md`` and ``gen-ai-metrics.md``), the last
release that holds the GenAI conventions. For each span and metric COO emits: its kind or
instrument, its name, the attributes the convention makes ``required``, those it makes
``conditionally_required`` (on error, or "when available", which COO always has), and the values
it fixes. Real spans and metrics are checked: an agent on a real nats-server against the real
mock LLM (with the bus's messaging spans around it, checked against the messaging conventions of
the same release), and the sandbox service on a run."""

from __future__ import annotations

import asyncio
import time

from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from coo.common import spans as genai
from coo.common import topology
from coo.common.bus import Bus
from coo.sandbox.service import SandboxService
from coo.sandbox.settings import SandboxSettings
from coo.v1 import common_pb2, sandbox_pb2
from tests.agent_support import make_task, publish, running_agent, wait_spans

SEMCONV_VERSION = "1.41.0"

# ---------------------------------------------------------------- v1.41.0, spans.yaml
SPANS = {
    # span.gen_ai.invoke_agent.internal (extends attributes.gen_ai.invoke_agent.internal -> .common -> gen_ai.common)
    "invoke_agent": {
        "kind": SpanKind.INTERNAL,
        "name": "invoke_agent {gen_ai.agent.name}",
        "required": {"gen_ai.operation.name", "gen_ai.provider.name"},
        "if_error": {"error.type"},
        "when_available": {"gen_ai.request.model", "gen_ai.agent.name", "gen_ai.conversation.id"},
        "values": {"gen_ai.operation.name": "invoke_agent"},
    },
    # span.gen_ai.execute_tool.internal
    "execute_tool": {
        "kind": SpanKind.INTERNAL,
        "name": "execute_tool {gen_ai.tool.name}",
        "required": {"gen_ai.operation.name", "gen_ai.tool.name"},
        "if_error": {"error.type"},
        "when_available": {"gen_ai.tool.call.id"},     # recommended "if available": COO always has the run id
        "values": {"gen_ai.operation.name": "execute_tool"},
    },
    # span.gen_ai.inference.client: made by opentelemetry-instrumentation-openai-v2, not by COO
    "chat": {
        "kind": SpanKind.CLIENT,
        "name": "{gen_ai.operation.name} {gen_ai.request.model}",
        "required": {"gen_ai.operation.name", "gen_ai.provider.name"},
        "if_error": {"error.type"},
        "when_available": {"gen_ai.request.model"},
        "values": {"gen_ai.operation.name": "chat"},
    },
}

# ------------------------------------------ v1.41.0, model/messaging/spans.yaml (the bus's spans)
# attributes.messaging.trace.minimal + messaging.attributes: operation name and system required,
# operation type "if applicable", destination name for a single message, error.type on error.
MESSAGING = {
    SpanKind.PRODUCER: {"operation": "send"},
    SpanKind.CONSUMER: {"operation": "process"},
}
MESSAGING_REQUIRED = {"messaging.operation.name", "messaging.system"}
MESSAGING_WHEN_APPLICABLE = {"messaging.operation.type", "messaging.destination.name"}


# --------------------------------------------------------------- v1.41.0, metrics.yaml
# metric_attributes.gen_ai: gen_ai.operation.name and gen_ai.provider.name required,
# gen_ai.request.model conditionally required "If available"; Prometheus names and labels as the
# OTel -> Prometheus translation gives them (unit {token} dropped, s -> _seconds, dots -> _).
METRICS = {
    "gen_ai.client.token.usage": {
        "prometheus": "gen_ai_client_token_usage",
        "instrument": "histogram",
        "required": {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.token.type"},
        "if_error": set(),
        "when_available": {"gen_ai.request.model"},
        "buckets": [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864],
        "values": {"gen_ai.token.type": {"input", "output"}},
    },
    "gen_ai.client.operation.duration": {
        "prometheus": "gen_ai_client_operation_duration_seconds",
        "instrument": "histogram",
        "required": {"gen_ai.operation.name", "gen_ai.provider.name"},
        "if_error": {"error.type"},
        "when_available": {"gen_ai.request.model"},
        "buckets": [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92],
        "values": {},
    },
}


def _check_span(span, convention: str) -> None:
    rule = SPANS[convention]
    attrs = dict(span.attributes)
    assert span.kind is rule["kind"], (span.name, span.kind)
    expected_name = rule["name"]
    for key, value in attrs.items():
        expected_name = expected_name.replace("{" + key + "}", str(value))
    assert span.name == expected_name, (span.name, expected_name)
    wanted = set(rule["required"]) | set(rule["when_available"])
    if span.status.status_code is StatusCode.ERROR:
        wanted |= rule["if_error"]
    missing = {k for k in wanted if attrs.get(k) in (None, "")}
    assert not missing, f"{span.name}: missing {sorted(missing)} (semantic conventions v{SEMCONV_VERSION})"
    for key, value in rule["values"].items():
        assert attrs[key] == value


def _families() -> dict:
    return {family.name: family for family in REGISTRY.collect()}


def _errors(name: str) -> float:
    """Observations of ``name`` with its error label set, so far in this process (the registry is
    the process's: earlier tests' failed calls are in it too)."""
    rule = METRICS[name]
    family = _families().get(rule["prometheus"])
    keys = [k.replace(".", "_") for k in rule["if_error"]]
    return sum(s.value for s in (family.samples if family else []) if s.name.endswith("_count")
               and any(s.labels.get(k) for k in keys))


def _check_metric(name: str, errors_before: float) -> None:
    """Every observation carries the convention's attributes; this test's calls added no error."""
    rule = METRICS[name]
    family = _families()[rule["prometheus"]]
    assert family.type == rule["instrument"]
    buckets = sorted({float(s.labels["le"]) for s in family.samples
                      if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"})
    assert buckets == [float(b) for b in rule["buckets"]]
    counts = [s for s in family.samples if s.name.endswith("_count") and s.value > 0]
    assert counts, f"nothing observed in {rule['prometheus']}"
    for sample in counts:
        labels = sample.labels
        wanted = rule["required"] | rule["when_available"]
        missing = {k for k in wanted if not labels.get(k.replace(".", "_"))}
        assert not missing, f"{rule['prometheus']}{labels}: missing {sorted(missing)}"
        for key, allowed in rule["values"].items():
            assert labels[key.replace(".", "_")] in allowed
        for key in rule["if_error"]:      # the label exists; empty (absent in Prometheus) when the call succeeded
            assert key.replace(".", "_") in labels
    assert _errors(name) == errors_before


async def test_agent_spans_and_llm_metrics_follow_the_conventions(env, mock_llm, spans):
    bus, budget, results, nats_url = env
    budget.refuse["m-poor"] = "mission budget exhausted"
    errors_before = {name: _errors(name) for name in METRICS}
    async with running_agent(nats_url, mock_llm):
        await publish(bus, make_task(common_pb2.ROLE_COO, "t-sc-ok", mission_id="m-sc"))
        await publish(bus, make_task(common_pb2.ROLE_COO, "t-sc-poor", mission_id="m-poor"))
        ok, poor = await results.wait("t-sc-ok"), await results.wait("t-sc-poor")
    assert ok.ok and not poor.ok
    agents = await wait_spans(spans, lambda s: s.name == "invoke_agent coo", timeout=10)
    by_mission = {s.attributes["gen_ai.conversation.id"]: s for s in agents}
    assert set(by_mission) == {"m-sc", "m-poor"}
    for mission_id, span in by_mission.items():
        _check_span(span, "invoke_agent")
        assert span.attributes["mission.id"] == mission_id and span.attributes["gen_ai.agent.name"] == "coo"
    assert by_mission["m-poor"].status.status_code is StatusCode.ERROR
    assert by_mission["m-poor"].attributes["error.type"] == "budget_exceeded"

    # one chat span per LLM call, from the openai-v2 instrumentation, under the agent's span: not ours
    chats = [s for s in spans.get_finished_spans() if s.name.startswith("chat ")]
    assert len(chats) == 1 and chats[0].parent.span_id == by_mission["m-sc"].context.span_id
    assert chats[0].instrumentation_scope.name != "coo.agent"
    _check_span(chats[0], "chat")

    bus_spans = [s for s in spans.get_finished_spans() if s.kind in MESSAGING]
    assert {s.kind for s in bus_spans} == set(MESSAGING)
    for span in bus_spans:
        attrs = dict(span.attributes)
        wanted = MESSAGING_REQUIRED | MESSAGING_WHEN_APPLICABLE | ({"error.type"} if span.status.status_code is
                                                                  StatusCode.ERROR else set())
        assert not {k for k in wanted if attrs.get(k) in (None, "")}, (span.name, attrs)
        operation = MESSAGING[span.kind]["operation"]
        assert attrs["messaging.system"] == "nats" and attrs["messaging.operation.type"] == operation
        destination = attrs.get("messaging.destination.template", attrs["messaging.destination.name"])
        assert span.name == f"{attrs['messaging.operation.name']} {destination}"
        if span.kind is SpanKind.CONSUMER:   # "conditionally required if applicable": a durable or a queue group
            group = attrs.get("messaging.consumer.group.name", "")
            assert group.startswith(("agent-", "sandbox-", "orchestrator-")) or group == "q", (span.name, group)

    _check_metric("gen_ai.client.token.usage", errors_before["gen_ai.client.token.usage"])
    _check_metric("gen_ai.client.operation.duration", errors_before["gen_ai.client.operation.duration"])
    usage = {(s.labels["gen_ai_token_type"], s.labels["gen_ai_request_model"]): s.value
             for s in _families()["gen_ai_client_token_usage"].samples if s.name.endswith("_sum")}
    assert usage[("input", "mock-large")] >= ok.usage.input_tokens
    assert usage[("output", "mock-large")] >= ok.usage.output_tokens


def _run(run_id: str) -> sandbox_pb2.SandboxRun:
    run = sandbox_pb2.SandboxRun(run_id=run_id, mission_id="m-tool", task_id="t0")
    run.files.append(common_pb2.File(name="main.py", content="print('hi')"))
    run.command.extend(["python3", "main.py"])
    run.limits.CopyFrom(sandbox_pb2.SandboxLimits(timeout_seconds=5, memory_mb=128, cpu_seconds=2))
    return run


async def test_a_sandbox_run_is_an_execute_tool_span(nats_server, spans, monkeypatch):
    # a Docker backend with no engine: the run fails at once, so the error attributes are checked too
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent-coo-test/docker.sock")
    settings = SandboxSettings(nats_url=nats_server.url, sandbox_backend="docker")
    bus = await Bus.connect("sandbox", settings)
    try:
        await bus.ensure_topology()
        await SandboxService(bus, settings).start()
        await bus.publish(topology.SANDBOX_RUNS, _run("r-tool-1"), mission_id="m-tool")
        deadline = time.monotonic() + 30
        found = []
        while not found and time.monotonic() < deadline:
            found = [s for s in spans.get_finished_spans() if s.name == f"execute_tool {genai.SANDBOX_TOOL}"]
            await asyncio.sleep(0.05)
    finally:
        await bus.close()
    (span,) = found
    _check_span(span, "execute_tool")
    assert span.attributes["gen_ai.tool.name"] == "sandbox" and span.attributes["gen_ai.tool.call.id"] == "r-tool-1"
    assert span.attributes["mission.id"] == "m-tool"
    assert span.status.status_code is StatusCode.ERROR and span.attributes["error.type"] == "sandbox_docker"

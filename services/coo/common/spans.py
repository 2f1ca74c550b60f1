"""GenAI spans and metric labels after the OpenTelemetry semantic conventions v1.41.

v1.41 is the last release of open-telemetry/semantic-conventions that holds the GenAI
conventions (they move to a repository of their own). What COO emits:

* an agent's work on a task: an INTERNAL span ``invoke_agent {role}`` with
  ``gen_ai.operation.name=invoke_agent``, ``gen_ai.provider.name``, ``gen_ai.agent.name`` (the
  role), ``gen_ai.request.model`` and ``gen_ai.conversation.id`` = the mission id;
* a sandbox run: an INTERNAL span ``execute_tool sandbox`` with ``gen_ai.operation.name=execute_tool``,
  ``gen_ai.tool.name=sandbox`` and ``gen_ai.tool.call.id`` = the run id;
* each LLM call: the ``chat {model}`` CLIENT span comes from opentelemetry-instrumentation-openai-v2,
  not from here; its duration and tokens also go to the Prometheus histograms
  ``gen_ai_client_operation_duration_seconds`` and ``gen_ai_client_token_usage``
  (``coo.common.metrics``), labelled with the attributes below, dots made underscores.

The attribute names are spelled here: opentelemetry-semantic-conventions has the GenAI ones only
in its private ``_incubating`` package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

SEMCONV_VERSION = "1.41.0"

GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"  # noqa: S105 - an attribute's name, not a password

# gen_ai.operation.name values
CHAT = "chat"
INVOKE_AGENT = "invoke_agent"
EXECUTE_TOOL = "execute_tool"
# gen_ai.token.type values
INPUT = "input"
OUTPUT = "output"

SANDBOX_TOOL = "sandbox"


def invoke_agent_attributes(role: str, *, provider: str, model: str, mission_id: str) -> dict[str, Any]:
    """What an ``invoke_agent`` span carries from its start (the sampling-relevant ones included)."""
    return {GEN_AI_OPERATION_NAME: INVOKE_AGENT, GEN_AI_PROVIDER_NAME: provider, GEN_AI_AGENT_NAME: role,
            GEN_AI_REQUEST_MODEL: model, GEN_AI_CONVERSATION_ID: mission_id}


@contextmanager
def invoke_agent(tracer: trace.Tracer, role: str, *, provider: str, model: str, mission_id: str,
                 attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """The current INTERNAL span ``invoke_agent {role}``; the caller records errors and status."""
    with tracer.start_as_current_span(
            f"{INVOKE_AGENT} {role}", kind=SpanKind.INTERNAL,
            attributes={**invoke_agent_attributes(role, provider=provider, model=model, mission_id=mission_id),
                        **(attributes or {})},
            record_exception=False, set_status_on_exception=False) as span:
        yield span


@contextmanager
def execute_tool(tracer: trace.Tracer, tool: str, call_id: str,
                 attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """The current INTERNAL span ``execute_tool {tool}`` (an exception escaping it is recorded)."""
    with tracer.start_as_current_span(
            f"{EXECUTE_TOOL} {tool}", kind=SpanKind.INTERNAL,
            attributes={GEN_AI_OPERATION_NAME: EXECUTE_TOOL, GEN_AI_TOOL_NAME: tool, GEN_AI_TOOL_CALL_ID: call_id,
                        **(attributes or {})}) as span:
        yield span

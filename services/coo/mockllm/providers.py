"""Provider personalities (``[mock:provider=NAME]``): how other OpenAI-compatible servers differ
from OpenAI in the ways that break an agent written only against OpenAI.

``deepseek``
    ``response_format`` of type ``json_schema`` is refused: HTTP 400, message exactly
    "This response_format type is unavailable now" (param ``response_format``), as DeepSeek's
    API answers. ``json_object`` and no ``response_format`` get the raw JSON answer.
``ollama``
    An open-model server without structured output: any ``response_format`` of type
    ``json_schema`` or ``json_object`` is refused (400, "response_format is not supported by
    this server"). Answers are one sentence of prose, the JSON in a ```json fence, and (for the
    engineer and QA) a closing sentence.
``reasoning``
    A reasoning model: a request with ``max_tokens`` is refused (400, code
    ``unsupported_parameter``, param ``max_tokens``); ``max_completion_tokens`` is the limit.
    Every answer's message carries ``reasoning_content`` (a few sentences of thinking), counted
    in ``usage.completion_tokens`` and reported as ``completion_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError, bad_request
from .inputs import one_line
from .scenarios import strip_markers

DEEPSEEK = "deepseek"
OLLAMA = "ollama"
REASONING = "reasoning"

DEEPSEEK_FORMAT_ERROR = "This response_format type is unavailable now"
OLLAMA_FORMAT_ERROR = "response_format is not supported by this server"
REASONING_MAX_TOKENS_ERROR = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)

_PROSE_BEFORE = {
    "coo_plan": "Here is a plan that breaks the goal into small, ordered tasks:",
    "engineer_artifact": "Sure! Here are the files for this task and the command that runs "
    "its tests:",
    "qa_verdict": "I have reviewed the change and the sandbox run; here is my verdict:",
}
_PROSE_AFTER = {
    "engineer_artifact": "Let me know if you would like any changes.",
    "qa_verdict": "I hope this helps.",
}


def check(provider: str | None, response_format: dict[str, Any] | None,
          max_tokens: int | None) -> None:
    """Raise the error this provider gives to a request it does not accept."""
    rf_type = (response_format or {}).get("type")
    if provider == DEEPSEEK and rf_type == "json_schema":
        raise APIError(400, DEEPSEEK_FORMAT_ERROR, "invalid_request_error",
                       "invalid_request_error", "response_format")
    if provider == OLLAMA and rf_type in ("json_schema", "json_object"):
        raise bad_request(OLLAMA_FORMAT_ERROR, "response_format", "unsupported_parameter")
    if provider == REASONING and max_tokens is not None:
        raise bad_request(REASONING_MAX_TOKENS_ERROR, "max_tokens", "unsupported_parameter")


def render(provider: str | None, schema: str | None, text: str) -> str:
    """The message content this provider writes around a JSON answer ``text``."""
    if provider != OLLAMA or schema is None:
        return text
    out = f"{_PROSE_BEFORE[schema]}\n\n```json\n{text}\n```\n"
    after = _PROSE_AFTER.get(schema)
    return f"{out}\n{after}" if after else out


def _field(data: Any, *keys: str) -> str:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return one_line(strip_markers(data), 100) if isinstance(data, str) else ""


def reasoning(provider: str | None, schema: str | None, inp: dict[str, Any] | None) -> str | None:
    """The ``reasoning_content`` of a reasoning model's answer (None for other providers)."""
    if provider != REASONING:
        return None
    if schema == "coo_plan":
        return (
            f"The goal is: {_field(inp, 'goal') or 'not stated'}. I should split it into small "
            "tasks that each write one module and its unittest file. Later tasks can import "
            "the modules of earlier ones, so the order matters. Let me list them in dependency "
            "order and keep within max_tasks."
        )
    if schema == "engineer_artifact":
        return (
            f"The task is '{_field(inp, 'task', 'title') or 'unnamed'}'. The files of earlier "
            "tasks are already in the workspace, so I only send what this task adds or changes. "
            "I need the module, its tests, and a command that really runs them. Let me check "
            "the QA feedback first, if there is any."
        )
    if schema == "qa_verdict":
        sandbox = (inp or {}).get("sandbox")
        outcome = sandbox.get("outcome") if isinstance(sandbox, dict) else None
        exit_code = sandbox.get("exit_code") if isinstance(sandbox, dict) else None
        return (
            f"The sandbox says outcome {outcome}, exit code {exit_code}. Before passing the "
            "task I should check that tests actually ran and that none failed. Then I compare "
            "the change with what the task asked for."
        )
    return "There is no role in this request. I will explain how to ask for a structured answer."

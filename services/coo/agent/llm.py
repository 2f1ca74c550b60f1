"""LLM calls: the official ``openai`` SDK against any OpenAI-compatible endpoint.

* ``AsyncOpenAI(base_url, api_key, max_retries, timeout)``: the SDK retries 408/409/429/5xx and
  connection errors itself (``COO_LLM_MAX_RETRIES``, default 2) with its own backoff.
* Spans: ``opentelemetry-instrumentation-openai-v2`` makes the ``chat {model}`` CLIENT span with
  the ``gen_ai.*`` attributes and token usage (installed once by :func:`instrument_openai`);
  prompt/completion content is captured only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
  asks for it (read by the instrumentation; this version takes ``span_only`` / ``event_only`` /
  ``span_and_event``).
* Cost on the chat span: an HTTP response hook of the SDK's HTTP client runs while the chat span
  is current; it reads the usage of the successful response, hands it to the caller's
  ``on_usage`` callback (the agent settles the budget reservation there) and sets
  ``coo.cost.usd`` on that span. If the hook could not (no usage in the body, say), the caller's
  callback runs after the call instead, with ``response.usage`` or an estimate.
* Token estimate: no tokenizer is available offline, so prompts are measured deterministically
  as ``ceil(chars / 4)`` per message + 4 tokens of message overhead + 3 tokens of priming, plus
  the JSON of ``response_format`` (the same rule the mock LLM uses to report usage).
* Any OpenAI-compatible provider. Structured output (``COO_LLM_STRUCTURED_OUTPUT``) is asked for
  as ``json_schema`` (strict), ``json_object`` or ``prompt`` (the schema in the system message);
  in ``auto`` a 400 that names the response format steps down once per mode, and the choice is
  remembered per model of this endpoint (logged, and shown by the agent's health check). The
  output cap goes out as ``max_tokens`` or, for models that want it, ``max_completion_tokens``
  (``COO_LLM_MAX_COMPLETION_TOKENS_MODELS``, or learnt from a 400 that asks for it). A refusal
  (``message.refusal``) is returned as such, never parsed as an answer.
* Rate limits: :mod:`coo.agent.ratelimit` queues calls beyond the provider's requests and tokens
  per minute; a 429 seen by the HTTP hook holds every call to that model for its Retry-After.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import openai
from opentelemetry import trace

from coo.agent.ratelimit import Limits, RateLimiter, retry_after_seconds
from coo.agent.settings import AgentSettings
from coo.common.telemetry import get_logger

log = get_logger("coo.agent.llm")

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
PRIMING_TOKENS = 3

COST_ATTRIBUTE = "coo.cost.usd"

# (input_tokens, output_tokens, usage_reported) -> cost in USD (None if unknown). Never raises.
UsageCallback = Callable[[int, int, bool], Awaitable[float | None]]


# ---------------------------------------------------------------------------- estimates
def estimate_text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: list[dict[str, str]], response_format: dict[str, Any] | None = None) -> int:
    """Deterministic prompt size: ~4 characters a token (documented in the module docstring)."""
    total = PRIMING_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(message.get("content") or "")
    if response_format is not None:
        total += estimate_text_tokens(json.dumps(response_format, sort_keys=True))
    return total


def response_format_for(schema_name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": schema_name, "strict": True, "schema": schema}}


# ------------------------------------------------------------------- structured output
STRUCTURED_MODES = ("json_schema", "json_object", "prompt")
_NAMES_RESPONSE_FORMAT = re.compile(r"response[_ ]format|json[_ ]schema|json[_ ]object|structured output",
                                    re.IGNORECASE)
_WANTS_COMPLETION_TOKENS = re.compile(r"max_completion_tokens", re.IGNORECASE)


def schema_instructions(schema_name: str, schema: dict[str, Any]) -> str:
    """The schema in words, for providers that cannot be given it as a response format."""
    body = json.dumps(schema, separators=(",", ":"))
    return (f"Your answer must be exactly one JSON object that matches this JSON schema "
            f"(\"{schema_name}\"), with no other text:\n{body}")


def request_shape(mode: str, schema_name: str, schema: dict[str, Any],
                  messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """``(messages, response_format)`` of one call in ``mode``: json_object and prompt carry the
    schema in the system message (json_object only promises JSON, not this shape)."""
    if mode == "json_schema":
        return messages, response_format_for(schema_name, schema)
    extra = schema_instructions(schema_name, schema)
    if messages and messages[0].get("role") == "system":
        shaped = [{**messages[0], "content": f"{messages[0]['content']}\n\n{extra}"}, *messages[1:]]
    else:
        shaped = [{"role": "system", "content": extra}, *messages]
    return shaped, ({"type": "json_object"} if mode == "json_object" else None)


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    param = body.get("param") if isinstance(body.get("param"), str) else ""
    return f"{exc.message} {param}"


# ------------------------------------------------------------------------ instrumentation
def instrument_openai() -> bool:
    """Install the openai-v2 instrumentation once per process. A broken install is logged and the
    agent runs on without chat spans (LLM calls matter more than their telemetry)."""
    try:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        instrumentor = OpenAIInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
        return True
    except Exception as exc:  # noqa: BLE001 - e.g. an incompatible opentelemetry-util-genai
        log.error("openai instrumentation unavailable; LLM calls will have no chat spans",
                  error=f"{type(exc).__name__}: {_short(exc)}")
        return False


# --------------------------------------------------------------------------------- errors
class LLMError(Exception):
    """An LLM call that failed after the SDK's own retries.

    ``kind`` is a bounded label (metrics); ``transient`` says whether a later redelivery of the
    task may succeed (timeouts, connection errors, 429, 5xx).
    """

    def __init__(self, kind: str, message: str, *, transient: bool, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.status = status
        # The provider's Retry-After of a 429/503, in seconds.
        self.retry_after = retry_after
        # The usage was already handed to on_usage (the reservation is settled, not to release).
        self.settled = False


_STATUS_KINDS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 408: "timeout",
                 409: "conflict", 413: "too_large", 422: "bad_request", 429: "rate_limit"}


def _short(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify(exc: Exception) -> LLMError:
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("timeout", "the LLM request timed out", transient=True)
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("connection", f"cannot reach the LLM endpoint: {_short(exc)}", transient=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status >= 500:
            return LLMError("server_error", f"LLM endpoint error {status}: {_short(exc.message)}",
                            transient=True, status=status)
        kind = _STATUS_KINDS.get(status, "status_error")
        retry_after = retry_after_seconds(exc.response.headers, 0.0) if status == 429 else None
        return LLMError(kind, f"LLM endpoint refused the request ({status}): {_short(exc.message)}",
                        transient=status in (408, 409, 429), status=status, retry_after=retry_after)
    if isinstance(exc, openai.OpenAIError):
        return LLMError("api_error", f"LLM client error: {_short(exc)}", transient=False)
    return LLMError("other", f"{type(exc).__name__}: {_short(exc)}", transient=False)


# ------------------------------------------------------------------------------ the client
@dataclass
class Completion:
    text: str
    model: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    usage_reported: bool
    cost_usd: float | None
    # How the structured answer was asked for (json_schema, json_object, prompt).
    structured_output: str = "json_schema"
    # The model's refusal (message.refusal), when it refused.
    refusal: str | None = None


@dataclass
class _Call:
    on_usage: UsageCallback
    model: str = ""
    seen: bool = False
    cost_usd: float | None = None


_CURRENT: ContextVar[_Call | None] = ContextVar("coo_agent_llm_call", default=None)


class LLMClient:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        # Learnt per model of this endpoint: the structured-output mode and the output-cap parameter.
        self.modes: dict[str, str] = {}
        self.token_parameters: dict[str, str] = {}
        self.limiter = RateLimiter(
            Limits(settings.llm_requests_per_minute, settings.llm_tokens_per_minute),
            {model: Limits(int(v.get("rpm", 0)), int(v.get("tpm", 0)))
             for model, v in settings.llm_rate_limits.items()})
        self._http = openai.DefaultAsyncHttpxClient(
            timeout=settings.llm_timeout_seconds, event_hooks={"response": [self._on_response]})
        self._client = openai.AsyncOpenAI(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key.get_secret_value(),
            max_retries=settings.llm_max_retries,
            timeout=settings.llm_timeout_seconds,
            http_client=self._http,
        )

    async def close(self) -> None:
        await self._client.close()

    async def _on_response(self, response) -> None:
        """Runs inside the instrumentation's chat span, once per HTTP response (SDK retries too)."""
        call = _CURRENT.get()
        if call is not None and response.status_code == 429:
            self.limiter.throttled(call.model, retry_after_seconds(response.headers, 1.0))
            return
        if call is None or call.seen or response.status_code != 200:
            return
        try:
            if not response.request.url.path.endswith("/chat/completions"):
                return
            await response.aread()
            usage = (json.loads(response.content) or {}).get("usage") or {}
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if not isinstance(prompt, int) or not isinstance(completion, int):
                return
        except Exception as exc:  # noqa: BLE001 - the SDK reports a bad body itself
            log.debug("usage not readable from the response", error=_short(exc))
            return
        call.seen = True
        call.cost_usd = await call.on_usage(prompt, completion, True)
        if call.cost_usd is not None:
            trace.get_current_span().set_attribute(COST_ATTRIBUTE, call.cost_usd)

    # ------------------------------------------------------------ what this endpoint wants
    def mode_for(self, model: str) -> str:
        configured = self.settings.llm_structured_output
        return configured if configured != "auto" else self.modes.get(model, "json_schema")

    def token_parameter_for(self, model: str) -> str:
        configured = self.settings.llm_token_parameter
        if configured != "auto":
            return configured
        learnt = self.token_parameters.get(model)
        if learnt:
            return learnt
        patterns = self.settings.llm_max_completion_tokens_models
        return "max_completion_tokens" if any(fnmatch.fnmatch(model, p) for p in patterns) else "max_tokens"

    def describe(self) -> str:
        """One line for the health check: what was learnt about the endpoint."""
        modes = ", ".join(f"{m}={v}" for m, v in sorted(self.modes.items())) or "none learnt yet"
        params = ", ".join(f"{m}={v}" for m, v in sorted(self.token_parameters.items()))
        return (f"structured output {self.settings.llm_structured_output} ({modes})"
                + (f"; output cap as {params}" if params else ""))

    async def wait_turn(self, model: str, tokens: int) -> float:
        """Queue behind the provider's rate limits; the seconds waited."""
        return await self.limiter.acquire(model, tokens)

    def _adapt(self, model: str, mode: str, token_parameter: str, exc: openai.BadRequestError) -> bool:
        """After a 400: switch what the provider refused and say so. False: nothing to switch."""
        text = _error_text(exc)
        auto = self.settings.llm_token_parameter == "auto"  # noqa: S105 - a parameter's name, not a password
        if token_parameter == "max_tokens" and _WANTS_COMPLETION_TOKENS.search(text) and auto:  # noqa: S105 - same
            self.token_parameters[model] = "max_completion_tokens"
            log.warning("the LLM endpoint wants max_completion_tokens for this model; switching",
                        model=model, endpoint=self.settings.llm_base_url)
            return True
        if self.settings.llm_structured_output == "auto" and mode != "prompt" and _NAMES_RESPONSE_FORMAT.search(text):
            lower = STRUCTURED_MODES[STRUCTURED_MODES.index(mode) + 1]
            self.modes[model] = lower
            log.warning("the LLM endpoint refused the response format; stepping down", model=model,
                        endpoint=self.settings.llm_base_url, refused=mode, now=lower, error=_short(exc.message, 200))
            return True
        return False

    async def chat(self, *, model: str, messages: list[dict[str, str]], max_tokens: int,
                   schema_name: str, schema: dict[str, Any], on_usage: UsageCallback) -> Completion:
        """One chat completion. Raises :class:`LLMError`; ``on_usage`` runs exactly once on success.

        A 400 that names the response format or the output-cap parameter is answered by switching
        (in ``auto``) and sending again at once: a refused request uses no tokens."""
        call = _Call(on_usage, model)
        token = _CURRENT.set(call)
        try:
            for _ in range(len(STRUCTURED_MODES) + 1):
                mode, token_parameter = self.mode_for(model), self.token_parameter_for(model)
                shaped, response_format = request_shape(mode, schema_name, schema, messages)
                kwargs: dict[str, Any] = {"model": model, "messages": shaped, token_parameter: max_tokens}
                if response_format is not None:
                    kwargs["response_format"] = response_format
                if self.settings.llm_temperature is not None:
                    kwargs["temperature"] = self.settings.llm_temperature
                try:
                    response = await self._client.chat.completions.create(**kwargs)
                    break
                except openai.BadRequestError as exc:
                    if not self._adapt(model, mode, token_parameter, exc):
                        error = classify(exc)
                        error.settled = call.seen
                        raise error from exc
                except Exception as exc:
                    error = classify(exc)
                    error.settled = call.seen
                    raise error from exc
            else:
                raise LLMError("bad_request", "the LLM endpoint refused every request shape", transient=False)
        finally:
            _CURRENT.reset(token)
        choice = response.choices[0] if response.choices else None
        message = choice.message if choice else None
        text = (message.content if message else None) or ""
        refusal = getattr(message, "refusal", None) if message else None
        usage = response.usage
        if call.seen:
            input_tokens, output_tokens, reported = usage.prompt_tokens, usage.completion_tokens, True
        elif usage is not None:
            input_tokens, output_tokens, reported = usage.prompt_tokens, usage.completion_tokens, True
            call.cost_usd = await on_usage(input_tokens, output_tokens, True)
        else:  # a provider without usage: settle the estimate rather than nothing
            input_tokens = estimate_prompt_tokens(shaped, response_format)
            output_tokens = max(1, estimate_text_tokens(text or refusal or ""))
            reported = False
            call.cost_usd = await on_usage(input_tokens, output_tokens, False)
        return Completion(text=text, model=response.model or model,
                          finish_reason=choice.finish_reason if choice else None,
                          input_tokens=input_tokens, output_tokens=output_tokens,
                          usage_reported=reported, cost_usd=call.cost_usd, structured_output=mode,
                          refusal=refusal or None)

"""mockllm: an OpenAI-compatible, deterministic, role-aware chat completions server.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /healthz``, ``GET /metrics``. Errors use OpenAI's JSON shape
(``{"error": {"message", "type", "param", "code"}}``) and status codes, so the ``openai`` SDK
raises the matching exception classes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram, make_asgi_app
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import roles, scenarios
from .scenarios import OnceSet

log = structlog.get_logger(__name__)

SERVICE = "mockllm"
SYSTEM_FINGERPRINT = "fp_mockllm_v1"
CHARS_PER_TOKEN = 4
MAX_MODEL_LABELS = 32


class Settings(BaseSettings):
    """Configuration from ``COO_MOCKLLM_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="COO_MOCKLLM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8090
    #: server-wide scenario defaults, e.g. "slow=0.5,flaky" (same names as the goal markers)
    scenario: str = ""
    #: ids listed by GET /v1/models (any other requested model is accepted too)
    models: str = "mock-small,mock-large"
    #: how many goal+schema keys `http-error` remembers
    http_error_memory: int = 4096
    log_level: str = "info"


# --------------------------------------------------------------------------------------------
# metrics (default registry; defined once per process)

REQUESTS = Counter(
    "mockllm_requests_total",
    "Chat completion requests answered by mockllm.",
    ["model", "schema", "outcome"],
)
TOKENS = Counter(
    "mockllm_tokens_total",
    "Tokens reported in usage by mockllm.",
    ["model", "type"],
)
DURATION = Histogram(
    "mockllm_request_duration_seconds",
    "Time to answer a chat completion request, including scenario delays.",
    ["schema"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


class _ASGIEndpoint:
    """Lets a bare ASGI callable serve an exact route (Starlette would wrap a function)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------------------------
# errors


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers


def error_response(exc: APIError) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param,
                      "code": exc.code}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", code, param)


# --------------------------------------------------------------------------------------------
# request parsing

_FENCE = re.compile(r"```json[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ROLE_HINT = re.compile(r"\brole\s*[:=]\s*(coo|engineer|qa)\b", re.IGNORECASE)
_MESSAGE_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    response_format: dict[str, Any] | None


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"Invalid type for '{key}': expected an integer.", key, "invalid_type")
    if value < 1:
        raise _bad(f"Invalid '{key}': integer below minimum value 1.", key,
                   "integer_below_min_value")
    return value


def parse_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_body")
    model = body.get("model")
    if model is None:
        raise _bad("You must provide a model parameter.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _bad("Invalid 'model': expected a non-empty string.", "model", "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise _bad("Missing required parameter: 'messages'.", "messages",
                   "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("Invalid 'messages': expected a non-empty array.", "messages", "invalid_value")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _MESSAGE_ROLES:
            raise _bad(f"Invalid 'messages[{i}]': expected an object with a valid 'role'.",
                       f"messages[{i}]", "invalid_value")
    if body.get("stream"):
        raise _bad("mockllm does not support 'stream': true.", "stream", "unsupported_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("mockllm only supports n=1.", "n", "unsupported_value")
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise _bad("Invalid type for 'temperature': expected a number.", "temperature",
                       "invalid_type")
        if not 0 <= temperature <= 2:
            raise _bad("Invalid 'temperature': must be between 0 and 2.", "temperature",
                       "invalid_value")
    limits = [v for v in (_optional_int(body, "max_tokens"),
                          _optional_int(body, "max_completion_tokens")) if v is not None]
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise _bad("Invalid 'response_format': expected an object.", "response_format",
                   "invalid_type")
    return ChatRequest(model=model, messages=messages,
                       max_tokens=min(limits) if limits else None,
                       response_format=response_format)


def detect_schema(req: ChatRequest) -> str | None:
    """The answer schema: from response_format, else from a 'role: X' system message."""
    rf = req.response_format
    if rf is not None:
        rf_type = rf.get("type")
        if rf_type == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("name"), str):
                raise _bad("Missing required parameter: 'response_format.json_schema.name'.",
                           "response_format.json_schema", "missing_required_parameter")
            name = js["name"]
            if name not in roles.SCHEMA_ROLES:
                raise _bad(
                    f"Unknown response_format.json_schema.name {name!r}; mockllm answers "
                    f"{', '.join(sorted(roles.SCHEMA_ROLES))}.",
                    "response_format.json_schema.name", "unknown_schema",
                )
            return name
        if rf_type not in ("json_object", "text"):
            raise _bad(f"Invalid 'response_format.type': {rf_type!r}.", "response_format.type",
                       "invalid_value")
    for msg in req.messages:
        if msg.get("role") in ("system", "developer"):
            m = _ROLE_HINT.search(message_text(msg))
            if m:
                return roles.ROLE_SCHEMAS[m.group(1).lower()]
    return None


def last_user_text(req: ChatRequest) -> str:
    for msg in reversed(req.messages):
        if msg.get("role") == "user":
            return message_text(msg)
    return ""


def extract_input(text: str) -> dict[str, Any]:
    """The last fenced ```json block of ``text`` (or ``text`` itself if it is JSON)."""
    blocks = _FENCE.findall(text)
    candidate = blocks[-1] if blocks else text
    try:
        value = json.loads(candidate)
    except ValueError as exc:
        where = "the last ```json block" if blocks else "the last user message"
        raise _bad(f"Could not parse {where} as JSON ({exc}); put the structured input in a "
                   "```json fenced block of the last user message.", "messages",
                   "invalid_input") from None
    if not isinstance(value, dict):
        raise _bad("The structured input must be a JSON object.", "messages", "invalid_input")
    return value


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(req: ChatRequest) -> int:
    """Deterministic estimate: ~4 characters a token, 4 tokens per message, 3 for priming."""
    total = 3
    for msg in req.messages:
        total += 4 + estimate_tokens(message_text(msg))
    if req.response_format is not None:
        total += estimate_tokens(json.dumps(req.response_format, sort_keys=True))
    return total


# --------------------------------------------------------------------------------------------
# the app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    defaults = scenarios.parse_defaults(settings.scenario)
    listed_models = [m.strip() for m in settings.models.split(",") if m.strip()]
    errored_once = OnceSet(settings.http_error_memory)
    model_labels: set[str] = set(listed_models)
    started = int(time.time())

    app = FastAPI(title="mockllm", version="1.0.0",
                  description="OpenAI-compatible deterministic LLM for COO demos and tests.")
    app.state.settings = settings
    app.state.default_scenario = defaults
    app.state.errored_once = errored_once

    def model_label(model: str) -> str:
        if model in model_labels:
            return model
        if len(model_labels) < MAX_MODEL_LABELS:
            model_labels.add(model)
            return model
        return "other"

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} not allowed for {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(APIError(exc.status_code, message, "invalid_request_error",
                                       None if exc.status_code != 404 else "unknown_url"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_bad(f"Invalid request: {exc.errors()}", None, "invalid_value"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("mockllm.unexpected_error")
        return error_response(APIError(500, "The mock server had an error while processing "
                                       "your request.", "server_error", "internal_error"))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": SERVICE, "scenario": defaults.names}

    def model_object(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": started, "owned_by": "mockllm"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object(m) for m in listed_models]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return model_object(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        label_model, label_schema = "unknown", "unknown"
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError:
                raise _bad("We could not parse the JSON body of your request. (HINT: send a "
                           "JSON object with Content-Type: application/json.)", None,
                           "invalid_json") from None
            req = parse_request(body)
            label_model = model_label(req.model)
            schema = detect_schema(req)
            label_schema = schema or "none"
            user_text = last_user_text(req)

            if schema is None:
                goal = user_text
                sc = scenarios.resolve(goal, defaults)
                answer_text = roles.plain_text()
            else:
                inp = extract_input(user_text)
                goal = inp.get("goal") if isinstance(inp.get("goal"), str) else user_text
                sc = scenarios.resolve(goal, defaults)
                try:
                    answer = roles.answer(schema, inp, sc)
                except roles.InputError as exc:
                    raise _bad(f"Invalid {schema} input: {exc}", exc.param,
                               "invalid_input") from None
                answer_text = json.dumps(answer, ensure_ascii=False)

            if sc.http_error is not None:
                key = hashlib.sha256(f"{label_schema}\0{goal}".encode()).hexdigest()
                if errored_once.first_time(key):
                    code = sc.http_error
                    headers = {"retry-after-ms": "100"} if code == 429 else None
                    raise APIError(
                        code,
                        "mockllm injected error (scenario http-error); retry the request.",
                        "rate_limit_error" if code == 429 else "server_error",
                        "mock_http_error", None, headers,
                    )

            if sc.slow:
                await asyncio.sleep(sc.slow)

            n_prompt = prompt_tokens(req)
            n_completion = max(1, estimate_tokens(answer_text))
            finish_reason = "stop"
            if sc.expensive is not None:
                # A provider never bills past max_tokens: with a cap the answer runs to it and is
                # cut off (finish_reason "length"); without one it reports the huge usage.
                n_completion = max(sc.expensive, n_completion)
            if req.max_tokens is not None and n_completion > req.max_tokens:
                answer_text = answer_text[: req.max_tokens * CHARS_PER_TOKEN]
                n_completion = req.max_tokens
                finish_reason = "length"

            outcome = "ok" if finish_reason == "stop" else "length"
            response = {
                "id": f"chatcmpl-mock{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "service_tier": "default",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": answer_text, "refusal": None,
                                "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }],
                "usage": {
                    "prompt_tokens": n_prompt,
                    "completion_tokens": n_completion,
                    "total_tokens": n_prompt + n_completion,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {
                        "reasoning_tokens": 0, "audio_tokens": 0,
                        "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
                    },
                },
            }
            REQUESTS.labels(label_model, label_schema, outcome).inc()
            TOKENS.labels(label_model, "prompt").inc(n_prompt)
            TOKENS.labels(label_model, "completion").inc(n_completion)
            DURATION.labels(label_schema).observe(time.perf_counter() - t0)
            log.info(
                "mockllm.chat_completion",
                model=req.model, schema=label_schema, outcome=outcome,
                finish_reason=finish_reason, prompt_tokens=n_prompt,
                completion_tokens=n_completion, scenario=sc.names,
                duration_ms=round((time.perf_counter() - t0) * 1000, 1),
            )
            return JSONResponse(response)
        except APIError as exc:
            outcome = "injected_error" if exc.code == "mock_http_error" else (
                "invalid_request" if exc.status < 500 else "error")
            REQUESTS.labels(label_model, label_schema, outcome).inc()
            DURATION.labels(label_schema).observe(time.perf_counter() - t0)
            log.info("mockllm.chat_completion", model=label_model, schema=label_schema,
                     outcome=outcome, status=exc.status, error=exc.message[:200])
            return error_response(exc)

    app.router.routes.append(Route("/metrics", _ASGIEndpoint(make_asgi_app()),
                                   methods=["GET"]))
    return app

"""mockllm: an OpenAI-compatible, deterministic, role-aware chat completions server.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /healthz``, ``GET /metrics``. Errors use OpenAI's JSON shape
(``{"error": {"message", "type", "param", "code"}}``) and status codes, so the ``openai`` SDK
raises the matching exception classes (``errors``).

A request's role comes from ``response_format.json_schema.name`` or a ``role: coo|engineer|qa``
system message, its input from the last ```json block of the last user message, its scenario
from ``[mock:...]`` markers in the goal (``scenarios``; server-wide defaults from
``COO_MOCKLLM_SCENARIO``). The answer is built by ``roles`` (``engineer``, ``qa``, the
``catalog``), written the way the scenario's provider personality writes it (``providers``) and
billed in ``completion``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram, make_asgi_app
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import completion, providers, roles, scenarios
from .completion import CHARS_PER_TOKEN, Answer, estimate_tokens
from .errors import APIError, bad_request, error_response
from .scenarios import OnceSet, Scenario

log = structlog.get_logger(__name__)

SERVICE = "mockllm"
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
# request parsing

_FENCE = re.compile(r"```json[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ROLE_HINT = re.compile(r"\brole\s*[:=]\s*(coo|engineer|qa)\b", re.IGNORECASE)
_MESSAGE_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    max_completion_tokens: int | None
    response_format: dict[str, Any] | None

    @property
    def limit(self) -> int | None:
        """The output limit: the smaller of max_tokens and max_completion_tokens."""
        given = [v for v in (self.max_tokens, self.max_completion_tokens) if v is not None]
        return min(given) if given else None


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
        raise bad_request(f"Invalid type for '{key}': expected an integer.", key,
                          "invalid_type")
    if value < 1:
        raise bad_request(f"Invalid '{key}': integer below minimum value 1.", key,
                          "integer_below_min_value")
    return value


def parse_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_body")
    model = body.get("model")
    if model is None:
        raise bad_request("You must provide a model parameter.", "model",
                          "missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("Invalid 'model': expected a non-empty string.", "model",
                          "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", "messages",
                          "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("Invalid 'messages': expected a non-empty array.", "messages",
                          "invalid_value")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _MESSAGE_ROLES:
            raise bad_request(f"Invalid 'messages[{i}]': expected an object with a valid "
                              "'role'.", f"messages[{i}]", "invalid_value")
    if body.get("stream"):
        raise bad_request("mockllm does not support 'stream': true.", "stream",
                          "unsupported_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("mockllm only supports n=1.", "n", "unsupported_value")
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise bad_request("Invalid type for 'temperature': expected a number.",
                              "temperature", "invalid_type")
        if not 0 <= temperature <= 2:
            raise bad_request("Invalid 'temperature': must be between 0 and 2.", "temperature",
                              "invalid_value")
    max_tokens = _optional_int(body, "max_tokens")
    max_completion_tokens = _optional_int(body, "max_completion_tokens")
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise bad_request("Invalid 'response_format': expected an object.", "response_format",
                          "invalid_type")
    return ChatRequest(model=model, messages=messages, max_tokens=max_tokens,
                       max_completion_tokens=max_completion_tokens,
                       response_format=response_format)


def detect_schema(req: ChatRequest) -> str | None:
    """The answer schema: from response_format, else from a 'role: X' system message."""
    rf = req.response_format
    if rf is not None:
        rf_type = rf.get("type")
        if rf_type == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("name"), str):
                raise bad_request(
                    "Missing required parameter: 'response_format.json_schema.name'.",
                    "response_format.json_schema", "missing_required_parameter")
            name = js["name"]
            if name not in roles.SCHEMA_ROLES:
                raise bad_request(
                    f"Unknown response_format.json_schema.name {name!r}; mockllm answers "
                    f"{', '.join(sorted(roles.SCHEMA_ROLES))}.",
                    "response_format.json_schema.name", "unknown_schema",
                )
            return name
        if rf_type not in ("json_object", "text"):
            raise bad_request(f"Invalid 'response_format.type': {rf_type!r}.",
                              "response_format.type", "invalid_value")
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
        raise bad_request(f"Could not parse {where} as JSON ({exc}); put the structured input "
                          "in a ```json fenced block of the last user message.", "messages",
                          "invalid_input") from None
    if not isinstance(value, dict):
        raise bad_request("The structured input must be a JSON object.", "messages",
                          "invalid_input")
    return value


def prompt_tokens(req: ChatRequest) -> int:
    """Deterministic estimate: ~4 characters a token, 4 tokens per message, 3 for priming."""
    total = 3
    for msg in req.messages:
        total += 4 + estimate_tokens(message_text(msg))
    if req.response_format is not None:
        total += estimate_tokens(json.dumps(req.response_format, sort_keys=True))
    return total


# --------------------------------------------------------------------------------------------
# one request's answer


@dataclass
class Turn:
    """What a request asks: the role's schema (None: no role), its input, goal and scenario."""

    schema: str | None
    inp: dict[str, Any] | None
    goal: str
    scenario: Scenario


def read_turn(req: ChatRequest, defaults: Scenario) -> Turn:
    schema = detect_schema(req)
    user_text = last_user_text(req)
    if schema is None:
        return Turn(None, None, user_text, scenarios.resolve(user_text, defaults))
    try:
        inp = extract_input(user_text)
    except APIError:
        # a provider that refuses the request's parameters does so before reading its input
        providers.check(defaults.provider, req.response_format, req.max_tokens)
        raise
    goal = inp["goal"] if isinstance(inp.get("goal"), str) else user_text
    return Turn(schema, inp, goal, scenarios.resolve(goal, defaults))


def compose_answer(turn: Turn) -> Answer:
    """The model's answer to ``turn``: a refusal, the role's JSON, or the plain greeting, as
    the scenario's provider writes it (with its reasoning, for a reasoning model)."""
    sc, schema = turn.scenario, turn.schema
    reasoning = providers.reasoning(sc.provider, schema, turn.inp)
    if sc.refuses(roles.SCHEMA_ROLES.get(schema or "")):
        return Answer(None, roles.REFUSAL, reasoning)
    if schema is None or turn.inp is None:
        text = roles.plain_text()
        if sc.long is not None:
            text = roles.pad_text(text, sc.long * CHARS_PER_TOKEN)
    else:
        try:
            ans = roles.answer(schema, turn.inp, sc)
        except roles.InputError as exc:
            raise bad_request(f"Invalid {schema} input: {exc}", exc.param,
                              "invalid_input") from None
        if sc.long is not None:
            ans = roles.pad_to(schema, ans, sc.long * CHARS_PER_TOKEN)
        text = json.dumps(ans, ensure_ascii=False)
    return Answer(providers.render(sc.provider, schema, text), None, reasoning)


# --------------------------------------------------------------------------------------------
# the app


class MockState:
    """What the routes share, kept on ``app.state.mock``: the settings, the server-wide scenario
    defaults, the model ids listed and the bounded set of model labels seen."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.defaults = scenarios.parse_defaults(settings.scenario)
        self.listed_models = [m.strip() for m in settings.models.split(",") if m.strip()]
        self.errored_once = OnceSet(settings.http_error_memory)
        self.model_labels: set[str] = set(self.listed_models)
        self.started = int(time.time())

    def model_label(self, model: str) -> str:
        """``model`` as a metric label; past MAX_MODEL_LABELS different ones, "other"."""
        if model in self.model_labels:
            return model
        if len(self.model_labels) < MAX_MODEL_LABELS:
            self.model_labels.add(model)
            return model
        return "other"

    def model_object(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.started, "owned_by": "mockllm"}


def _mock(request: Request) -> MockState:
    return request.app.state.mock


# -------------------------------------------------------------------------------- error handlers

async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed for {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(APIError(exc.status_code, message, "invalid_request_error",
                                   None if exc.status_code != 404 else "unknown_url"))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(bad_request(f"Invalid request: {exc.errors()}", None,
                                      "invalid_value"))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("mockllm.unexpected_error")
    return error_response(APIError(500, "The mock server had an error while processing "
                                   "your request.", "server_error", "internal_error"))


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's JSON shape, so the ``openai`` SDK raises the matching class."""
    # Starlette types every handler as taking Exception, though it calls each with its own class only
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


# ------------------------------------------------------------------------------------ the routes

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    return {"status": "ok", "service": SERVICE, "scenario": _mock(request).defaults.names}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    mock = _mock(request)
    return {"object": "list", "data": [mock.model_object(m) for m in mock.listed_models]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return _mock(request).model_object(model_id)


async def _read_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("We could not parse the JSON body of your request. (HINT: "
                          "send a JSON object with Content-Type: application/json.)",
                          None, "invalid_json") from None


def _inject_http_error(mock: MockState, turn: Turn, schema: str) -> None:
    """Scenario http-error: the first request of a goal+schema fails (429 with retry-after-ms, or 5xx)."""
    code = turn.scenario.http_error
    if code is None:
        return
    key = hashlib.sha256(f"{schema}\0{turn.goal}".encode()).hexdigest()
    if mock.errored_once.first_time(key):
        headers = {"retry-after-ms": "100"} if code == 429 else None
        raise APIError(
            code,
            "mockllm injected error (scenario http-error); retry the request.",
            "rate_limit_error" if code == 429 else "server_error",
            "mock_http_error", None, headers,
        )


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> JSONResponse:
    mock = _mock(request)
    t0 = time.perf_counter()
    label_model, label_schema = "unknown", "unknown"
    try:
        req = parse_request(await _read_body(request))
        label_model = mock.model_label(req.model)
        turn = read_turn(req, mock.defaults)
        label_schema = turn.schema or "none"
        sc = turn.scenario
        providers.check(sc.provider, req.response_format, req.max_tokens)
        answer = compose_answer(turn)
        _inject_http_error(mock, turn, label_schema)
        if sc.slow:
            await asyncio.sleep(sc.slow)
        n_prompt = prompt_tokens(req)
        billed = completion.bill(answer, req.limit, sc.expensive)
        response = completion.completion(req.model, billed, n_prompt, with_usage=not sc.no_usage)
        outcome = ("refusal" if answer.content is None
                   else "ok" if billed.finish_reason == "stop" else "length")
        REQUESTS.labels(label_model, label_schema, outcome).inc()
        if not sc.no_usage:
            TOKENS.labels(label_model, "prompt").inc(n_prompt)
            TOKENS.labels(label_model, "completion").inc(billed.completion_tokens)
        DURATION.labels(label_schema).observe(time.perf_counter() - t0)
        log.info(
            "mockllm.chat_completion",
            model=req.model, schema=label_schema, outcome=outcome,
            finish_reason=billed.finish_reason, prompt_tokens=n_prompt,
            completion_tokens=billed.completion_tokens,
            reasoning_tokens=billed.reasoning_tokens, usage_reported=not sc.no_usage,
            scenario=sc.names, duration_ms=round((time.perf_counter() - t0) * 1000, 1),
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


def create_app(settings: Settings | None = None) -> FastAPI:
    mock = MockState(settings or Settings())
    app = FastAPI(title="mockllm", version="1.0.0",
                  description="OpenAI-compatible deterministic LLM for COO demos and tests.")
    app.state.mock = mock
    app.state.settings = mock.settings
    app.state.default_scenario = mock.defaults
    app.state.errored_once = mock.errored_once
    _add_error_handlers(app)
    app.include_router(router)
    app.router.routes.append(Route("/metrics", _ASGIEndpoint(make_asgi_app()),
                                   methods=["GET"]))
    return app

"""Configuration of the agent service (``COO_*`` environment variables).

Models: a task's own ``model`` field wins, then ``COO_LLM_MODEL_<ROLE>``, then ``COO_LLM_MODEL``,
then the built-in role default (``mock-large`` for coo and engineer, ``mock-small`` for qa).
The API key is a ``SecretStr``: it is never logged, put on a span or passed on a command line.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from coo.common.config import CommonSettings

ROLES = ("coo", "engineer", "qa")

ROLE_DEFAULT_MODELS = {"coo": "mock-large", "engineer": "mock-large", "qa": "mock-small"}


class AgentSettings(CommonSettings):
    agent_port: int = Field(8081, description="HTTP port of /healthz, /readyz and /metrics")
    agent_roles: Annotated[tuple[str, ...], NoDecode] = Field(
        ROLES, description="roles served by this process, comma-separated (coo,engineer,qa)")

    # ---------------------------------------------------------------- the LLM endpoint
    llm_base_url: str = Field("http://127.0.0.1:8090/v1", description="OpenAI-compatible base URL")
    llm_api_key: SecretStr = Field(SecretStr("not-needed"), description="API key of the endpoint")
    llm_provider_name: str = Field("openai", description="gen_ai.provider.name on invoke_agent spans")
    llm_model: str | None = Field(None, description="model of every role without its own setting")
    llm_model_coo: str | None = None
    llm_model_engineer: str | None = None
    llm_model_qa: str | None = None
    llm_max_output_tokens_coo: int = Field(2048, ge=1)
    llm_max_output_tokens_engineer: int = Field(4096, ge=1)
    llm_max_output_tokens_qa: int = Field(1024, ge=1)
    llm_context_tokens: int = Field(16000, ge=256, description="context window of a model not in the map")
    llm_context_tokens_by_model: dict[str, int] = Field(
        default_factory=dict, description='JSON map, e.g. {"gpt-4o-mini": 128000}')
    llm_timeout_seconds: float = Field(120.0, gt=0, description="timeout of one HTTP request to the LLM")
    llm_max_retries: int = Field(2, ge=0, description="SDK retries of 408/409/429/5xx and connection errors")
    llm_temperature: float | None = Field(None, ge=0, le=2, description="sent only when set")
    llm_structured_output: str = Field(
        "auto", pattern="^(auto|json_schema|json_object|prompt)$",
        description="how answers are constrained: json_schema (strict), json_object, prompt (schema in the "
        "prompt, JSON extracted from the answer); auto steps down on a 400 naming the response format")
    llm_token_parameter: str = Field(
        "auto", pattern="^(auto|max_tokens|max_completion_tokens)$",
        description="parameter of the output cap; auto: max_completion_tokens for the models below or when "
        "a 400 asks for it, else max_tokens")
    llm_max_completion_tokens_models: Annotated[tuple[str, ...], NoDecode] = Field(
        ("o1*", "o3*", "o4*", "gpt-5*"), description="models (glob patterns, comma-separated) that take "
        "max_completion_tokens")
    llm_max_output_tokens_ceiling: int = Field(
        16384, ge=1, description="largest output cap of the one retry after an answer cut off by the limit")
    llm_requests_per_minute: int = Field(0, ge=0, description="provider rate limit per model (0: none)")
    llm_tokens_per_minute: int = Field(0, ge=0, description="provider token rate limit per model (0: none)")
    llm_rate_limits: dict[str, dict[str, int]] = Field(
        default_factory=dict, description='per-model limits, JSON: {"gpt-4o": {"rpm": 500, "tpm": 30000}}')

    # ------------------------------------------------------------------------- the work
    # Tasks in flight per role: LLM calls are I/O (one asyncio task each), so hundreds fit in one
    # replica; the bound that matters is the provider's rate limit (llm_requests_per_minute, ...).
    agent_concurrency_coo: int = Field(256, ge=1)
    agent_concurrency_engineer: int = Field(512, ge=1)
    agent_concurrency_qa: int = Field(512, ge=1)
    agent_max_plan_tasks: int = Field(5, ge=1, description="max_tasks given to the coo role")
    agent_heartbeat_seconds: float = Field(10.0, gt=0, description="in_progress() interval during a task")
    agent_final_delivery: int = Field(
        4, ge=1, description="from this delivery on, a transient LLM error is a final ok=false result")
    agent_workspace_tokens: int = Field(
        6000, ge=0, description="tokens of workspace file contents an engineer prompt may carry; a larger "
        "workspace is shown as a listing plus the files the task touches")
    agent_repair_attempts: int = Field(1, ge=0, description="repair calls after an invalid answer")

    # ---------------------------------------------------------------------------- budget
    agent_budget_timeout_seconds: float = Field(5.0, gt=0, description="timeout of one budget request")
    # Not COO_BUDGET_RESERVATION_TTL_SECONDS: that one is the budget service's own default.
    agent_reservation_ttl_seconds: float = Field(
        0, ge=0, description="TTL asked for each reservation (0: LLM timeout x (retries + 1) + 60 s)")

    @field_validator("agent_roles", mode="before")
    @classmethod
    def _parse_roles(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [r for r in (p.strip().lower() for p in value.split(",")) if r]
        roles = tuple(value)
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; expected some of {list(ROLES)}")
        if not roles:
            raise ValueError("at least one role is required")
        return tuple(dict.fromkeys(roles))

    @field_validator("llm_max_completion_tokens_models", mode="before")
    @classmethod
    def _parse_patterns(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        return tuple(value)

    @field_validator("llm_context_tokens_by_model", "llm_rate_limits", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        return value

    # ------------------------------------------------------------------------- helpers
    def model_for(self, role: str, override: str = "") -> str:
        return override or getattr(self, f"llm_model_{role}") or self.llm_model or ROLE_DEFAULT_MODELS[role]

    def max_output_tokens_for(self, role: str, override: int = 0) -> int:
        return override if override > 0 else getattr(self, f"llm_max_output_tokens_{role}")

    def context_tokens_for(self, model: str) -> int:
        return self.llm_context_tokens_by_model.get(model, self.llm_context_tokens)

    def concurrency_for(self, role: str) -> int:
        return getattr(self, f"agent_concurrency_{role}")

    def reservation_ttl(self) -> int:
        if self.agent_reservation_ttl_seconds:
            return max(1, int(self.agent_reservation_ttl_seconds))
        return int(self.llm_timeout_seconds * (self.llm_max_retries + 1) + 60)

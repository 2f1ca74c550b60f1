"""Orchestrator configuration (``COO_*`` variables)."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr

from coo.common.config import CommonSettings


class OrchestratorSettings(CommonSettings):
    orchestrator_port: int = 8080
    orchestrator_host: str = "127.0.0.1"
    api_token: SecretStr | None = Field(None, description="the operator's bearer token: every API call")
    api_token_file: Path | None = Field(None, description="file holding the token (default <data_dir>/api-token)")
    api_read_token: SecretStr | None = Field(None, description="a read-only bearer token: reads only")
    api_read_token_file: Path | None = Field(
        None, description="file holding the read-only token (default <data_dir>/api-read-token)")
    max_retries: int = Field(2, ge=0, le=10, description="engineer retries per task after a failed QA verdict")
    require_approval: bool = Field(False, description="default of the approval gate after planning")
    max_pending_work: int = Field(
        12, ge=1, description="backpressure: a mission with more pending work items (3 per queued task: engineer, "
        "sandbox run, QA; the rest of the task in progress) is hard-paused until resumed")
    workspace_max_files: int = Field(200, ge=1, description="files a mission's workspace may hold")
    workspace_max_bytes: int = Field(256_000, ge=1, description="bytes a mission's workspace may hold")
    workspace_max_file_bytes: int = Field(128_000, ge=1, description="bytes of one workspace file")
    max_live_missions: int = Field(200, ge=1, description="admission: more live missions are refused (429)")
    default_budget_usd: float = Field(1.0, gt=0)
    budget_on_exceeded: str = Field("fail", pattern="^(fail|pause)$",
                                     description="a refused reservation ends the mission, or pauses it")
    sandbox_timeout_seconds: float = 20.0
    sandbox_memory_mb: int = 256
    sandbox_cpu_seconds: float = 10.0
    sandbox_max_output_bytes: int = 64_000
    mission_deadline_seconds: float = Field(1800.0, description="a live mission older than this fails")
    mission_retention_seconds: float = Field(
        30 * 86400, ge=0, description="finished missions are deleted this long after they finished (0: no age limit)")
    mission_retention_count: int = Field(
        10_000, ge=0, description="at most this many finished missions are kept, the oldest finished deleted "
        "first (0: no count limit)")
    mission_retention_interval_seconds: float = Field(
        60.0, gt=0, description="how often one replica (a lease in the bucket) looks for missions to delete")

    def token_path(self) -> Path:
        return self.api_token_file or (self.data_dir / "api-token")

    def read_token_path(self) -> Path:
        return self.api_read_token_file or (self.data_dir / "api-read-token")

    def resolve_api_token(self) -> str:
        """The configured token, else the one in the token file, else a new one written there (0600)."""
        return _resolve(self.api_token, self.token_path())

    def resolve_api_read_token(self) -> str:
        """The read-only token, found or made like the operator's; never equal to it."""
        token = _resolve(self.api_read_token, self.read_token_path())
        if token == self.resolve_api_token():
            raise ValueError("COO_API_READ_TOKEN is the operator's token (COO_API_TOKEN): give reads a token "
                             "of their own, or leave it unset to have one generated")
        return token


def _resolve(value: SecretStr | None, path: Path) -> str:
    if value is not None and value.get_secret_value().strip():
        return value.get_secret_value().strip()
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token)
    return token

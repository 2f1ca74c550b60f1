"""Configuration shared by every service (pydantic-settings, ``COO_*`` variables).

Each service subclasses :class:`CommonSettings` with its own prefix-free fields so one
``.env``-style environment configures the whole stack.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COO_", extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated")
    nats_user: str | None = Field(None, description="NATS user of this service")
    nats_ping_interval_seconds: float = Field(
        5.0, gt=0, description="how often the connection pings its server (nats-py's default is 120 s)")
    nats_max_outstanding_pings: int = Field(
        3, ge=1, description="unanswered pings after which the server counts as gone and the client reconnects "
        "to another one: a hung server is left within about interval x (this + 1)")
    nats_replicas: int = Field(
        1, ge=1, le=5, description="copies of every stream and KV bucket (1 on one server, 3 on a cluster of three); "
        "changing it on a running system scales them (see docs/operations.md)")
    nats_password: SecretStr | None = Field(None, description="NATS password of this service")
    nats_password_file: Path | None = Field(
        None, description="file holding the NATS password (preferred: no secret in the environment)")
    debug: bool = Field(False, description="DEBUG level and a readable console log renderer")
    data_dir: Path = Field(Path("var"), description="where services keep local files")
    max_payload_bytes: int = Field(1_000_000, description="bus messages larger than this are dead-lettered")
    # Event types switched off (comma-separated timeline event types, e.g. "budget.warning").
    disabled_events: str = ""
    # Retention of the per-mission timeline and the dead-letter stream.
    timeline_max_age_seconds: float = 30 * 86400
    timeline_max_bytes: int = 1 << 30
    dlq_max_age_seconds: float = 14 * 86400
    dlq_max_bytes: int = 256 << 20
    work_max_age_seconds: float = 7 * 86400
    shutdown_grace_seconds: float = Field(
        8.0, ge=0, description="on SIGTERM, how long handlers in flight may finish before what they hold is "
        "handed back (nak: JetStream redelivers it at once, to another replica or after a restart)")

    @model_validator(mode="after")
    def _read_nats_password_file(self) -> CommonSettings:
        """``COO_NATS_PASSWORD_FILE`` fills ``nats_password`` (an explicit password wins)."""
        if self.nats_password is None and self.nats_password_file is not None:
            try:
                password = Path(self.nats_password_file).read_text().strip()
            except OSError as exc:
                raise ValueError(f"COO_NATS_PASSWORD_FILE {self.nats_password_file}: {exc.strerror or exc}") from None
            if not password:
                raise ValueError(f"COO_NATS_PASSWORD_FILE {self.nats_password_file} is empty")
            self.nats_password = SecretStr(password)
        return self

    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]

    def disabled_event_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.disabled_events.split(",") if t.strip())


#: The address a service's HTTP port (health, readiness, metrics, API) binds when nothing is set.
DEFAULT_HOST = "127.0.0.1"


def service_host(name: str) -> str:
    """The address service ``name`` binds its HTTP port to: ``COO_<NAME>_HOST`` (e.g.
    ``COO_AGENT_HOST=0.0.0.0`` in a container, where loopback cannot be scraped), else loopback.

    The one setting every service reads the same way (orchestrator, agent, budget, sandbox and
    mockllm): an IP address or a host name, never empty."""
    var = f"COO_{name.upper()}_HOST"
    value = os.environ.get(var, "").strip()
    if not value:
        return DEFAULT_HOST
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not all(part and part.replace("-", "").isalnum() for part in value.split(".")):
            raise ValueError(f"{var}={value!r} is neither an IP address nor a host name") from None
    return value

"""Sandbox service configuration (``COO_SANDBOX_*``)."""

from __future__ import annotations

import os

from pydantic import Field

from coo.common.config import CommonSettings


class SandboxSettings(CommonSettings):
    sandbox_port: int = 8083
    sandbox_backend: str = Field("auto", pattern="^(auto|docker|bubblewrap)$",
                                 description="docker when an engine answers, else bubblewrap")
    # A run is a short burst of CPU (bwrap, Python start-up, the tests) around waits: more runs than
    # cores keeps the cores busy (measured: 100 missions at once, 2 runs at a time 23 s, 8 at a time 17 s).
    sandbox_concurrency: int = Field(default_factory=lambda: min(16, 4 * (os.cpu_count() or 1)), ge=1, le=64,
                                     description="runs at once per replica (default 4 per CPU, at most 16)")
    # Ceilings: a request may ask for less, never for more.
    sandbox_max_timeout_seconds: float = 60.0
    sandbox_max_memory_mb: int = 512
    sandbox_max_cpu_seconds: int = 30
    sandbox_max_output_bytes: int = 256_000
    sandbox_max_processes: int = 64
    sandbox_tmpfs_mb: int = 64
    sandbox_max_file_mb: int = 16
    # A run still "running" in the store this long after its own deadline was lost in a crash.
    sandbox_crash_grace_seconds: float = 30.0

"""Sandbox execution backends: run artifact code under hard limits.

``choose_backend("auto")`` gives the Docker backend when a Docker engine answers
(and has the sandbox image), otherwise the embedded bubblewrap backend.
"""

from __future__ import annotations

from .base import (
    OUTCOMES,
    InvalidArtifact,
    RunOutcome,
    RunSpec,
    SandboxBackend,
    validate_file_name,
    validate_spec,
)
from .bubblewrap import BubblewrapBackend
from .docker_backend import DockerBackend, build_archive, container_config

__all__ = [
    "OUTCOMES",
    "BubblewrapBackend",
    "DockerBackend",
    "InvalidArtifact",
    "RunOutcome",
    "RunSpec",
    "SandboxBackend",
    "build_archive",
    "choose_backend",
    "container_config",
    "validate_file_name",
    "validate_spec",
]

PREFERENCES = ("auto", "docker", "bubblewrap")


def choose_backend(preference: str = "auto") -> SandboxBackend:
    """``"docker"``/``"bubblewrap"`` force a backend; ``"auto"`` prefers Docker.

    Auto picks Docker only when ``DockerBackend().available()`` holds (an engine
    answers a ping within 2 s and has the image), else bubblewrap. A forced
    backend is returned even when unavailable: its runs then come back with
    outcome ``"error"`` and the reason, and ``available()`` says why.
    """
    pref = (preference or "auto").strip().lower()
    if pref in ("bwrap", "bubblewrap"):
        return BubblewrapBackend()
    if pref == "docker":
        return DockerBackend()
    if pref != "auto":
        raise ValueError(f"unknown sandbox backend {preference!r}; use one of {PREFERENCES}")
    docker_backend = DockerBackend()
    if docker_backend.available()[0]:
        return docker_backend
    return BubblewrapBackend()

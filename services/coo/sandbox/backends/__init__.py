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
    "select_backend",
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
    return select_backend(preference)[0]


def select_backend(preference: str = "auto") -> tuple[SandboxBackend, str]:
    """:func:`choose_backend` and why that backend: the sandbox service logs it at start and its
    readiness check (``coo health``) shows it."""
    pref = (preference or "auto").strip().lower()
    if pref in ("bwrap", "bubblewrap"):
        return BubblewrapBackend(), "COO_SANDBOX_BACKEND=bubblewrap"
    if pref == "docker":
        return DockerBackend(), "COO_SANDBOX_BACKEND=docker"
    if pref != "auto":
        raise ValueError(f"unknown sandbox backend {preference!r}; use one of {PREFERENCES}")
    docker_backend = DockerBackend()
    ok, why = docker_backend.available()
    if ok:
        return docker_backend, f"COO_SANDBOX_BACKEND=auto and {why}"
    return BubblewrapBackend(), f"COO_SANDBOX_BACKEND=auto and Docker not usable ({why})"

"""mockllm: an OpenAI-compatible, deterministic, role-aware LLM server for demos and tests.

``create_app()`` builds the ASGI app; ``python -m coo.mockllm`` serves it with uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Settings, create_app

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:  # lazy, so importing the catalog needs no web stack
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)

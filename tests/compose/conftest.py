"""The Docker stack on a real engine (``make test-compose``): skipped unless ``COO_COMPOSE_TEST=1``,
so plain ``make test`` never starts a Docker engine."""

from __future__ import annotations

import os
import shutil
import time

import pytest

ENABLED = os.environ.get("COO_COMPOSE_TEST", "").strip().lower() in ("1", "true", "yes", "on")

if not ENABLED:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    from tests.compose.engine import Engine, setup_problem

    if why := setup_problem():
        pytest.fail(f"the compose test cannot run here: {why}; run `make test-compose`, which sets it up")
    root = tmp_path_factory.mktemp("engine")
    eng = Engine(root)
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()
        # overlay2 layers and volumes of this run: nothing is reused by the next one
        shutil.rmtree(root / "data", ignore_errors=True)


@pytest.fixture(scope="session")
def images(engine) -> dict[str, float]:
    """The stand-ins and the project's images, built once into the test's engine (seconds per step)."""
    from tests.compose.engine import build_images

    return build_images(engine)


@pytest.fixture(scope="session")
def stack(engine, images, tmp_path_factory):
    from tests.compose.engine import ComposeStack, _log, compose_binary

    took = dict(images)
    s = ComposeStack(engine, compose_binary(), tmp_path_factory.mktemp("compose"))
    t = time.monotonic()
    try:
        s.up()
        took["compose up to healthy"] = time.monotonic() - t
        _log("set-up: " + ", ".join(f"{k} {v:.0f}s" for k, v in took.items())
             + f"; {sum(took.values()):.0f}s in all")
        yield s
    finally:
        s.down()

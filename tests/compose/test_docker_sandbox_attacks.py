"""The sandbox attack suite (tests/reliability/test_sandbox_attacks.py, the same attacks and checks
as on bubblewrap) on the Docker backend on a real engine: a sandbox service on the host, forced onto
the Docker backend, talking to the test's own dockerd, each run in a coo-sandbox:latest container
built from sandbox/Dockerfile. Its rows go to docs/reliability.md beside the bubblewrap ones."""

from __future__ import annotations

import pytest

from tests.reliability import figures as f
from tests.reliability.test_sandbox_attacks import run_attack_suite

AREA = "sandbox on Docker"
COMMAND = "make test-compose PYTEST_ARGS='-k attacks'"


@pytest.mark.timeout(600)
def test_sandbox_attacks_are_contained_on_the_docker_backend(engine, images, tmp_path, request):
    server = engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    rec = f.Recorder(request.node.nodeid)
    try:
        run_attack_suite(tmp_path, rec, backend="docker", area=AREA,
                         env={"DOCKER_HOST": engine.host, "COO_SANDBOX_IMAGE": "coo-sandbox:latest"},
                         note=f"a real engine: Debian's dockerd {server} (overlay2, cgroup v1), started by the "
                              "compose test; image coo-sandbox:latest from sandbox/Dockerfile")
    finally:
        mine = [fig for fig in f.FIGURES if fig.nodeid == rec.nodeid]
        for fig in mine:
            fig.command = COMMAND
        if mine:
            f.write_doc(mine)

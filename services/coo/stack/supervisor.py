"""The local stack under supervisord: config written from the component table, started
daemonized, read and stopped over its XML-RPC unix socket (no hand-written process manager)."""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from supervisor.xmlrpc import SupervisorTransport

from coo.stack.components import Component, StackSettings, components, prepare


@dataclass
class ComponentStatus:
    name: str
    kind: str
    state: str          # supervisord's state, or "not started" / "unavailable"
    healthy: bool
    url: str
    detail: str = ""
    links: dict[str, str] = field(default_factory=dict)  # pages for people (the component's links)


def _paths(s: StackSettings) -> dict[str, Path]:
    state = s.state
    return {
        "state": state,
        "conf": state / "supervisord.conf",
        "sock": state / "supervisord.sock",
        "pid": state / "supervisord.pid",
        "logs": state / "logs",
    }


def _env_line(env: dict[str, str]) -> str:
    # supervisord's environment= syntax: KEY="value",KEY2="value2" (% escaped as %%)
    return ",".join(f'{k}="{v.replace("%", "%%")}"' for k, v in sorted(env.items()))


def write_config(s: StackSettings, parts: list[Component]) -> Path:
    p = _paths(s)
    p["logs"].mkdir(parents=True, exist_ok=True)
    (p["state"] / "data").mkdir(parents=True, exist_ok=True)
    lines = [
        "[unix_http_server]", f"file={p['sock']}", "chmod=0700", "",
        "[supervisord]", f"logfile={p['logs'] / 'supervisord.log'}", f"pidfile={p['pid']}",
        "logfile_maxbytes=10MB", "logfile_backups=3", "loglevel=info", f"directory={Path.cwd()}", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{p['sock']}", "",
    ]
    for c in parts:
        if c.missing:
            continue
        lines += [
            f"[program:{c.name}]",
            f"command={' '.join(shlex.quote(a) for a in c.command)}",
            f"priority={c.priority}", "autostart=true", "autorestart=true", f"startsecs={c.startsecs}",
            "startretries=10", "stopsignal=TERM", "stopwaitsecs=15", "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true", f"stdout_logfile={p['logs'] / (c.name + '.log')}",
            "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=3",
        ]
        if c.env:
            lines.append(f"environment={_env_line(c.env)}")
        lines.append("")
    p["conf"].write_text("\n".join(lines))
    p["conf"].chmod(0o600)
    return p["conf"]


def rpc(s: StackSettings) -> xmlrpc.client.ServerProxy:
    sock = _paths(s)["sock"]
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{sock}"))


class _SupervisorApi(Protocol):
    """The calls of supervisord's XML-RPC interface used here (supervisord.org/api.html), with the
    shapes of their answers (xmlrpc.client types every answer as any marshallable value)."""

    def getState(self) -> dict[str, Any]: ...
    def reloadConfig(self) -> list[list[list[str]]]: ...   # [[added, changed, removed]]
    def stopProcess(self, name: str) -> bool: ...
    def removeProcessGroup(self, name: str) -> bool: ...
    def addProcessGroup(self, name: str) -> bool: ...
    def shutdown(self) -> bool: ...
    def getAllProcessInfo(self) -> list[dict[str, Any]]: ...


def _api(s: StackSettings) -> _SupervisorApi:
    return cast("_SupervisorApi", rpc(s).supervisor)


def running(s: StackSettings) -> bool:
    try:
        return _api(s).getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Fault):
        return False


def start(s: StackSettings, parts: list[Component]) -> None:
    prepare(s)
    conf = write_config(s, parts)
    if running(s):
        server = _api(s)
        added, changed, removed = server.reloadConfig()[0]
        for name in removed:
            server.stopProcess(name)
            server.removeProcessGroup(name)
        for name in changed:
            server.stopProcess(name)
            server.removeProcessGroup(name)
            server.addProcessGroup(name)
        for name in added:
            server.addProcessGroup(name)
        return
    supervisord = Path(sys.executable).parent / "supervisord"
    subprocess.run([str(supervisord), "-c", str(conf)], check=True)
    deadline = time.monotonic() + 10
    while not running(s):
        if time.monotonic() > deadline:
            raise RuntimeError(f"supervisord did not start; see {_paths(s)['logs'] / 'supervisord.log'}")
        time.sleep(0.1)


def stop(s: StackSettings, timeout: float = 30.0) -> bool:
    """Stop every component and supervisord. Returns False if nothing was running."""
    pidfile = _paths(s)["pid"]
    if not running(s):
        return False
    with contextlib.suppress(OSError, xmlrpc.client.Fault):  # already going down
        _api(s).shutdown()
    deadline = time.monotonic() + timeout
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        if pid:
            with contextlib.suppress(ProcessLookupError):  # it exited after all
                os.kill(pid, signal.SIGKILL)
    return True


def healthy(url: str | None, timeout: float = 1.0) -> tuple[bool, str]:
    if not url:
        return True, ""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the stack's own http URLs
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return False, str(reason)
    except http.client.HTTPException as exc:  # something that is not HTTP answers on that port
        return False, f"{type(exc).__name__}: {str(exc)[:80]}"


def status(s: StackSettings | None = None) -> list[ComponentStatus]:
    s = s or StackSettings()
    states: dict[str, str] = {}
    if running(s):
        for info in _api(s).getAllProcessInfo():
            states[info["name"]] = info["statename"]
    out = []
    for c in components(s):
        if c.missing:
            out.append(ComponentStatus(c.name, c.kind, "unavailable", False, c.url, c.missing))
            continue
        ok, detail = healthy(c.health_url)
        out.append(ComponentStatus(c.name, c.kind, states.get(c.name, "not started"), ok, c.url, detail,
                                   links=dict(c.links)))
    return out


def wait_healthy(s: StackSettings, timeout: float = 120.0) -> list[ComponentStatus]:
    """Poll until every component is healthy; raise with the unhealthy ones after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        rows = status(s)
        if all(r.healthy for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"stack not healthy after {timeout:.0f}s: "
                               f"{[(r.name, r.detail) for r in rows if not r.healthy]}")
        time.sleep(0.5)

"""Sandbox attacks, run through the real sandbox service over NATS (a SandboxRun published on
``coo.sandbox.runs``, the SandboxResult read from ``coo.results.sandbox``), so "the service's
secrets" are the real service's: a canary in its environment and a canary file in its data dir.

Each attack is one row: what it tried, the run's outcome, and whether it was contained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from coo.common import topology
from coo.v1 import common_pb2, sandbox_pb2
from tests.natsserver import NatsServer
from tests.reliability import helpers

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

CANARY = "coo-canary-" + uuid.uuid4().hex
MARK = "coo-attack-" + uuid.uuid4().hex[:10]
OUTCOMES = {v: k.removeprefix("SANDBOX_OUTCOME_").lower() for k, v in sandbox_pb2.SandboxOutcome.items()}


@dataclass
class Attack:
    name: str
    code: str | None                      # main.py; None: ``command`` alone
    check: Callable[[dict, Ctx], tuple[bool, str]]
    command: list[str] | None = None
    limits: dict | None = None
    files: dict | None = None


class Ctx:
    """What the checks compare against: host-side listeners, paths, the service process."""

    def __init__(self, root, stack, backend: str = "bubblewrap") -> None:
        self.root, self.stack, self.backend = root, stack, backend
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.abstract_name = f"\0{MARK}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind(self.abstract_name)
        self.abstract.listen(8)
        self.abstract.setblocking(False)
        self.unix_path = str(root / f"{MARK}.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.unix.listen(8)
        self.unix.setblocking(False)
        self.secret_file = root / "data" / "sandbox" / "service-secret.txt"
        self.secret_file.parent.mkdir(parents=True, exist_ok=True)
        self.secret_file.write_text(CANARY + "\n")
        self.outside = f"/usr/local/{MARK}"

    def reached(self) -> list[str]:
        """Host listeners that anything from a sandbox reached."""
        hits = []
        for name, sock in (("tcp", self.tcp), ("abstract unix", self.abstract), ("unix", self.unix)):
            try:
                conn, _ = sock.accept()
                conn.close()
                hits.append(name)
            except (BlockingIOError, OSError):
                pass
        try:
            self.udp.recvfrom(4096)
            hits.append("udp")
        except (BlockingIOError, OSError):
            pass
        return hits

    def close(self) -> None:
        for s in (self.tcp, self.udp, self.abstract, self.unix):
            s.close()


def probe(result: dict) -> dict:
    try:
        return json.loads(result["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def leftovers() -> list[int]:
    """Host processes still carrying this session's attack marker in their argv."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if MARK.encode() in fh.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


# ---------------------------------------------------------------------------- attacks
NET = """
import json, socket, ctypes
out = {}
def attempt(name, fn):
    try:
        fn(); out[name] = "connected"
    except OSError as exc:
        out[name] = type(exc).__name__ + ": " + (exc.strerror or str(exc))
def tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2); s.close()
attempt("tcp", lambda: tcp(TCP_PORT))
attempt("tcp_nats", lambda: tcp(NATS_PORT))
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x" * 32, ("127.0.0.1", UDP_PORT))
attempt("udp", udp)
def dns_query():   # a DNS query to a resolver on loopback (the sandbox has no resolv.conf: glibc's default)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.sendto(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x03coo\\x07invalid\\x00\\x00\\x01\\x00\\x01",
             ("127.0.0.1", UDP_PORT))
attempt("dns_udp", dns_query)
try:
    socket.getaddrinfo("coo-sandbox-probe.invalid", 80); out["getaddrinfo"] = "resolved"
except OSError as exc:
    out["getaddrinfo"] = type(exc).__name__
import os
out["resolv_conf"] = os.path.exists("/etc/resolv.conf")
def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(2); s.connect(path); s.close()
attempt("unix_abstract", lambda: unix(ABSTRACT))
attempt("unix_path", lambda: unix(UNIX_PATH))
for p in ("/run/dbus/system_bus_socket", "/var/run/docker.sock", "/run/systemd/journal/socket"):
    attempt("unix " + p, lambda: unix(p))
ifaces = [n for _, n in socket.if_nameindex()]
out["interfaces"] = ifaces
print(json.dumps(out))
"""


def check_net(r, ctx):
    info = probe(r)
    if not info:
        return False, f"no probe output ({r['outcome']}: {r['stderr'][-200:]})"
    connected = [k for k, v in info.items() if v == "connected" and not k.startswith(("udp", "dns"))]
    reached = ctx.reached()
    # Docker mounts the host's /etc/resolv.conf even into a container without network (the engine's
    # doing, not the run's): the resolver's address is readable there, and with no interface but
    # lo nothing can reach it. Bubblewrap runs have no resolv.conf at all.
    resolv_ok = not info.get("resolv_conf") or (ctx.backend == "docker" and info.get("interfaces") == ["lo"])
    ok = not connected and not reached and info.get("getaddrinfo") != "resolved" and resolv_ok
    return ok, (f"TCP to a host listener and to NATS: {info.get('tcp', '')[:40]}; UDP/DNS packets received on "
                f"the host: {len([x for x in reached if x == 'udp'])}; getaddrinfo: {info.get('getaddrinfo')}; "
                f"unix (abstract, path, dbus/docker/journal): refused; interfaces {info.get('interfaces')}"
                + ("; /etc/resolv.conf is there (the engine mounts the host's; the nameserver's address is "
                   "readable, nothing can reach it)" if info.get("resolv_conf") else "")
                + (f"; CONNECTED: {connected} {reached}" if not ok else ""))


FORK_BOMB = """
import os, sys
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
MEMORY_BOMB = "blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))\n"
CPU_LOOP = "while True:\n    pass\n"
OUTPUT = "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n"
DISK_FILL = """
import json, os
written, err = 0, ""
try:
    with open("fill.bin", "wb") as fh:
        while True:
            fh.write(b"0" * (1 << 20)); fh.flush(); written += 1
except OSError as exc:
    err = exc.strerror
print(json.dumps({"mib": written, "err": err}))
"""
OUTSIDE = """
import json
res = {}
for path in ["/x", "/usr/x", "OUTSIDE", "/etc/x", "/dev/x", "/tmp/x", "/proc/sys/kernel/hostname", "/proc/x",
             "/work/ok"]:
    try:
        with open(path, "w") as fh:
            fh.write("data")
        res[path] = "written"
    except OSError as exc:
        res[path] = type(exc).__name__
print(json.dumps(res))
"""
INODES = """
import json, os
made, err = 0, ""
try:
    while made < 1_000_000:
        open(f"f{made}", "w").close(); made += 1
except OSError as exc:
    err = exc.strerror
print(json.dumps({"files": made, "err": err}))
"""
# A daemon: double fork, a new session, the parent exits at once; the grandchild (MARK in its
# argv) would sleep for five minutes after the run ended if nothing killed it.
OUTLIVE = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "300", "MARK"])
    os._exit(0)
time.sleep(0.5)
print("parent leaves")
"""
LEAVE = "open('leftover-MARK.txt', 'w').write('from an earlier run')\nprint('{}')\n"
LOOK = "import json, os\nprint(json.dumps({'work': sorted(os.listdir('.')), 'tmp': os.path.exists('/tmp')}))\n"
SECRETS = """
import json, os, glob
def raw(path):
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return type(exc).__name__
found = {"env": dict(os.environ), "pid1_environ": raw("/proc/1/environ"), "pid1_cmdline": raw("/proc/1/cmdline"),
         "self_environ": raw("/proc/self/environ"), "parent_environ": raw(f"/proc/{os.getppid()}/environ"),
         "secret_file": raw("SECRET_FILE"), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
for p in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    found[p] = raw(p)
print(json.dumps(found))
"""
USERNS = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.unshare(0x10000000)   # CLONE_NEWUSER
err = ctypes.get_errno()
rc2 = libc.unshare(0x00020000)  # CLONE_NEWNS
print(json.dumps({"userns": rc, "errno": os.strerror(err) if err else "", "mountns": rc2}))
"""
SYMLINK = """
import json, os
res = {}
for target in ["/etc/shadow", "/proc/1/root/etc/shadow", "/proc/1/cwd/../../etc/shadow", "SECRET_FILE",
               "/proc/self/root/../../../etc/hostname", "/root/.ssh/id_rsa"]:
    link = "l" + str(len(res))
    try:
        os.symlink(target, link)
        with open(link) as fh:
            data = fh.read()
        res[target] = "READ " + data[:40]
    except OSError as exc:
        res[target] = type(exc).__name__
print(json.dumps(res))
"""
SIGNALS = """
import json, os, signal
res = {"ppid": os.getppid()}
for name, pid in (("parent", os.getppid()), ("pid1", 1), ("everyone", -1)):
    try:
        os.kill(pid, signal.SIGKILL)
        res[name] = "sent"
    except OSError as exc:
        res[name] = type(exc).__name__
print(json.dumps(res), flush=True)
"""


def check_outcome(*wanted: str, max_seconds: float | None = None):
    def check(r, ctx):
        ok = r["outcome"] in wanted and (max_seconds is None or r["duration_seconds"] <= max_seconds)
        left = leftovers()
        return ok and not left, (f"{r['duration_seconds']:.1f}s" + (f"; {len(left)} processes outlived it" if left
                                                                        else "; nothing left running")
                                 + (f"; stderr: {r['stderr'][-120:]}" if not ok else ""))
    return check


def check_output(r, ctx):
    ok = r["outcome"] == "output_limit" and r["stdout_truncated"] and len(r["stdout"].encode()) <= 10_000
    return ok, f"stdout cut at {len(r['stdout'].encode())} bytes after {r['duration_seconds']:.1f}s"


def check_disk(r, ctx):
    info = probe(r)
    ok = bool(info) and info.get("err") in ("No space left on device", "File too large") and info["mib"] <= 16
    return ok, f"wrote {info.get('mib')} MiB then '{info.get('err')}' (tmpfs work dir, 16 MiB cap)"


def check_inodes(r, ctx):
    from coo.sandbox.backends.base import DEFAULT_MAX_INODES

    info = probe(r)
    ok = bool(info) and info.get("err") == "No space left on device" and info["files"] < DEFAULT_MAX_INODES
    return ok, (f"created {info.get('files')} empty files then '{info.get('err')}' "
                f"(work dir capped at {DEFAULT_MAX_INODES} inodes; a size cap alone allowed a million)")


def check_outlive(r, ctx):
    left = leftovers()
    ok = r["outcome"] == "ok" and "parent leaves" in r["stdout"] and not left
    return ok, (f"a double-forked, setsid'd daemon: {len(left)} process(es) still alive after the run"
                + ("" if left else "; the run's cgroup (or pid namespace) took it down"))


def check_outside(r, ctx):
    info = probe(r)
    written = [p for p, v in info.items() if v == "written" and p != "/work/ok"]
    ok = bool(info) and info.get("/work/ok") == "written" and not written and not os.path.exists(ctx.outside)
    return ok, ("/, /usr, /usr/local, /etc, /dev, /tmp, /proc: " + ", ".join(sorted({
        v for p, v in info.items() if p != "/work/ok"}))) if ok else f"WRITTEN: {written}"


def check_secrets(r, ctx):
    if r["outcome"] != "ok":
        return False, f"probe failed: {r['outcome']} {r['stderr'][-200:]}"
    text = r["stdout"]
    info = probe(r)
    leaked = CANARY in text
    return not leaked, (f"no canary in env, /proc/1/environ, /proc/1/cmdline, /proc/self/environ, the parent's "
                        f"environ or the service's secret file ({str(info.get('secret_file'))[:20]}); "
                        f"{len(info.get('pids', []))} pids visible") if not leaked else "CANARY READ"


def check_userns(r, ctx):
    info = probe(r)
    ok = bool(info) and info.get("userns") == -1 and info.get("mountns") == -1
    return ok, f"unshare(CLONE_NEWUSER) → {info.get('errno') or info.get('userns')}, unshare(CLONE_NEWNS) refused"


def check_symlink(r, ctx):
    info = probe(r)
    read = {k: v for k, v in info.items() if v.startswith("READ")}
    leaked = CANARY in r["stdout"]
    ok = bool(info) and not leaked and not any(k in ("/etc/shadow", "/proc/1/root/etc/shadow", "/root/.ssh/id_rsa")
                                               for k in read)
    return ok, "links to /etc/shadow, /proc/1/root, the service's secret file: " + ", ".join(
        sorted({v.split(':')[0][:30] for v in info.values()}))


def check_signals(r, ctx):
    info = probe(r)
    proc = ctx.stack.procs.get("sandbox")
    alive = proc is not None and proc.poll() is None and helpers.healthy(ctx.stack.parts["sandbox"].health_url)
    return alive, f"kill(parent/1/-1, SIGKILL) inside: {info.get('parent')}, {info.get('pid1')}, " \
                  f"{info.get('everyone')}; the sandbox service {'is still up' if alive else 'DIED'}"


def attacks(ctx: Ctx) -> list[Attack]:
    net = (NET.replace("TCP_PORT", str(ctx.tcp.getsockname()[1])).replace("UDP_PORT", str(ctx.udp.getsockname()[1]))
           .replace("NATS_PORT", str(ctx.stack.nats.port)).replace("ABSTRACT", repr(ctx.abstract_name))
           .replace("UNIX_PATH", repr(ctx.unix_path)))
    return [
        Attack("network egress: TCP, UDP, DNS, unix sockets", net, check_net),
        Attack("fork bomb", FORK_BOMB, check_outcome("timeout", "killed", "failed", max_seconds=8),
               limits={"timeout_seconds": 3, "max_processes": 32}),
        Attack("memory bomb", MEMORY_BOMB, check_outcome("memory"), limits={"memory_mb": 128}),
        Attack("CPU loop", CPU_LOOP, check_outcome("timeout", max_seconds=15),
               limits={"cpu_seconds": 1, "timeout_seconds": 20}),
        Attack("long sleep", None, check_outcome("timeout", max_seconds=5),
               command=["sh", "-c", "sleep 3600; true", MARK], limits={"timeout_seconds": 2}),
        Attack("endless output", OUTPUT, check_output, limits={"max_output_bytes": 10_000, "timeout_seconds": 10}),
        Attack("disk fill", DISK_FILL, check_disk, limits={"tmpfs_mb": 16, "max_file_mb": 16}),
        Attack("inode exhaustion: a million empty files", INODES, check_inodes, limits={"timeout_seconds": 30}),
        Attack("a process that outlives its run", OUTLIVE, check_outlive),
        Attack("writes outside the work dir", OUTSIDE.replace("OUTSIDE", ctx.outside), check_outside),
        Attack("host environment, /proc/1/environ and cmdline, the service's secrets",
               SECRETS.replace("SECRET_FILE", str(ctx.secret_file)), check_secrets),
        Attack("creating a user namespace", USERNS, check_userns),
        Attack("symlink escape", SYMLINK.replace("SECRET_FILE", str(ctx.secret_file)), check_symlink),
        Attack("signalling the parent, pid 1 and everyone", SIGNALS, check_signals),
    ]


async def run_all(stack, runs: list[tuple[str, sandbox_pb2.SandboxRun]], timeout: float = 120) -> dict[str, dict]:
    import nats

    nc = await nats.connect(stack.nats.url)
    results: dict[str, dict] = {}
    done = asyncio.Event()

    async def on_result(msg):
        r = sandbox_pb2.SandboxResult.FromString(msg.data)
        results[r.run_id] = {"outcome": OUTCOMES.get(r.outcome, str(r.outcome)), "stdout": r.stdout,
                             "stderr": r.stderr, "exit_code": r.exit_code, "duration_seconds": r.duration_seconds,
                             "stdout_truncated": r.stdout_truncated, "error": r.error}
        if all(run.run_id in results for _, run in runs):
            done.set()

    await nc.subscribe(topology.SANDBOX_RESULTS, cb=on_result)
    js = nc.jetstream()
    for _, run in runs:
        await js.publish(topology.SANDBOX_RUNS, run.SerializeToString(),
                         headers={"Coo-Type": "coo.v1.SandboxRun", "Nats-Msg-Id": run.run_id})
    with contextlib.suppress(TimeoutError):  # the results that came are the findings
        await asyncio.wait_for(done.wait(), timeout)
    await nc.close()
    return results


def make_run(attack: Attack, mission: str) -> sandbox_pb2.SandboxRun:
    run = sandbox_pb2.SandboxRun(run_id=f"{MARK}-{uuid.uuid4().hex[:8]}", mission_id=mission, task_id="attack")
    files = dict(attack.files or {})
    if attack.code is not None:
        files["main.py"] = attack.code.replace("MARK", MARK)
    run.files.extend(common_pb2.File(name=n, content=c) for n, c in files.items())
    run.command.extend(attack.command or ["python3", "main.py", MARK])
    limits = {"timeout_seconds": 10, "memory_mb": 256, "cpu_seconds": 5, "max_output_bytes": 64_000,
              **(attack.limits or {})}
    run.limits.CopyFrom(sandbox_pb2.SandboxLimits(**limits))
    return run


@pytest.mark.timeout(300)
def test_sandbox_attacks_are_contained(tmp_path, figures):
    from coo.sandbox.backends import DockerBackend

    docker_ok, docker_why = DockerBackend().available()
    run_attack_suite(tmp_path, figures, backend="bubblewrap", area="sandbox",
                     note="Docker backend: " + ("an engine answers, but these attacks ran on bubblewrap (the "
                                                "Docker rows: make test-compose)" if docker_ok
                                                else f"not run here — {docker_why}; make test-compose runs them "
                                                "on a real engine"))


def run_attack_suite(tmp_path, figures, *, backend: str, area: str, note: str, env: dict | None = None) -> None:
    """Every attack through a real sandbox service forced onto ``backend`` (``env`` adds to its
    environment, e.g. DOCKER_HOST); one figure row per attack in ``area``. The Docker rows come from
    the compose test (tests/compose), on a real engine."""
    nats = NatsServer(data_dir=tmp_path / "nats").start()
    secrets = {"OPENAI_API_KEY": CANARY, "COO_LLM_API_KEY": CANARY, "COO_RELIABILITY_CANARY_SECRET": CANARY,
               "COO_SANDBOX_CONCURRENCY": "4", "COO_SANDBOX_BACKEND": backend, **(env or {})}
    stack = helpers.make_stack(tmp_path, nats, env=secrets, services=("sandbox",))
    ctx = None
    try:
        helpers.ensure_topology(nats.url)   # no orchestrator here to declare the streams
        stack.start()
        ctx = Ctx(tmp_path, stack, backend)
        sandbox_pid = stack.procs["sandbox"].pid
        figures.add(area, "backend attacked", backend, note=note)
        # one canary run first proves the canary really is in the service's environment
        with open(f"/proc/{sandbox_pid}/environ", "rb") as fh:
            assert CANARY.encode() in fh.read(), "the canary is not in the sandbox service's environment"

        plan = attacks(ctx)
        runs = [(a.name, make_run(a, "m-attack")) for a in plan
                if a.name != "signalling the parent, pid 1 and everyone"]
        leave = make_run(Attack("leave", LEAVE, None), "m-attack")
        look = make_run(Attack("look", LOOK, None), "m-attack")
        bad_name = make_run(Attack("bad", "print(1)", None, files={"../escape.py": "x"}), "m-attack")
        started = time.monotonic()
        results = asyncio.run(run_all(stack, [*runs, ("leave", leave), ("bad name", bad_name)]))
        second = asyncio.run(run_all(stack, [("look", look)]))
        # signals last, alone: if it could kill the service, nothing else should be lost with it
        sig = next(a for a in plan if a.name.startswith("signalling"))
        sig_run = make_run(sig, "m-attack")
        third = asyncio.run(run_all(stack, [(sig.name, sig_run)], timeout=60))
        elapsed = time.monotonic() - started

        rows = []
        for attack in plan:
            run = sig_run if attack is sig else next(r for n, r in runs if n == attack.name)
            res = (third if attack is sig else results).get(run.run_id)
            if res is None:
                rows.append((attack.name, "no result", False, "the service never answered"))
                continue
            contained, detail = attack.check(res, ctx)
            rows.append((attack.name, res["outcome"], contained, detail))
        look_res = second.get(look.run_id, {})
        seen = probe(look_res).get("work") if look_res else None
        rows.append(("files left for the next run", look_res.get("outcome", "no result"),
                     seen == ["main.py"], f"the next run's work dir holds {seen}"))
        bad = results.get(bad_name.run_id, {})
        rows.append(("artifact named ../escape.py", bad.get("outcome", "no result"),
                     bad.get("outcome") == "error" and "invalid" in bad.get("error", ""),
                     bad.get("error", "")[:90]))
        alive = stack.procs["sandbox"].poll() is None and stack.procs["sandbox"].pid == sandbox_pid
        rows.append(("the sandbox service after all attacks", "up" if alive else "DOWN", alive,
                     f"same process, healthy; {len(rows)} attacks in {elapsed:.0f}s"))
        for name, outcome, contained, detail in rows:
            figures.add(area, name, f"{outcome}, {'contained' if contained else 'NOT CONTAINED'}",
                        target="contained", ok=contained, note=detail)
        escaped = [r for r in rows if not r[2]]
        assert not escaped, escaped
    finally:
        if ctx is not None:
            ctx.close()
        stack.stop()
        nats.cleanup()

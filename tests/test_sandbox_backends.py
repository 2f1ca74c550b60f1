"""Sandbox execution backends: real bubblewrap runs and attacks, Docker config checks.

The bubblewrap tests run real sandboxes (skipped with a reason when ``bwrap`` is
not on PATH); the Docker tests check the exact container settings, and run a real
container only when an engine answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from coo.sandbox.backends import (
    BubblewrapBackend,
    DockerBackend,
    InvalidArtifact,
    RunOutcome,
    RunSpec,
    build_archive,
    choose_backend,
    container_config,
    validate_file_name,
)
from coo.sandbox.backends.base import DEFAULT_MAX_INODES, OutputCapture, classify
from coo.sandbox.backends.bubblewrap import processes_of_uid

HAVE_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(
    not HAVE_BWRAP, reason="bwrap is not on PATH (apt-get install -y bubblewrap)"
)

FIZZBUZZ = """\
def fizzbuzz(n):
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)
"""

TEST_FIZZBUZZ = """\
import unittest
from fizzbuzz import fizzbuzz

class FizzBuzzTest(unittest.TestCase):
    def test_numbers(self):
        self.assertEqual(fizzbuzz(1), "1")
        self.assertEqual(fizzbuzz(3), "Fizz")
        self.assertEqual(fizzbuzz(5), "Buzz")
        self.assertEqual(fizzbuzz(30), "FizzBuzz")

if __name__ == "__main__":
    unittest.main()
"""


@pytest.fixture(scope="module")
def bwrap() -> BubblewrapBackend:
    if not HAVE_BWRAP:
        pytest.skip("bwrap is not on PATH (apt-get install -y bubblewrap)")
    backend = BubblewrapBackend()
    ok, reason = backend.available()
    if not ok:
        pytest.skip(f"bubblewrap backend unavailable here: {reason}")
    return backend


def spec(files: dict[str, str] | None = None, command: list[str] | None = None, **kw) -> RunSpec:
    return RunSpec(
        run_id=kw.pop("run_id", "test-run"),
        files=files or {},
        command=["python3", "main.py"] if command is None else command,
        **kw,
    )


def py(code: str, **kw) -> RunSpec:
    """A run of one Python file, main.py."""
    return spec({"main.py": code}, ["python3", "main.py"], **kw)


def pool_processes(backend: BubblewrapBackend) -> list[int]:
    if not backend.is_root:
        return []
    return [
        pid
        for uid in range(backend.uid_base, backend.uid_base + backend.uid_count)
        for pid in processes_of_uid(uid)
    ]


def assert_no_leftovers(backend: BubblewrapBackend) -> None:
    deadline = time.monotonic() + 3
    while pool_processes(backend) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_processes(backend) == [], "processes of a sandbox uid outlived the run"


def probe(result: RunOutcome) -> dict:
    """The JSON document a probe script printed as its last stdout line."""
    assert result.outcome == "ok", result
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "/etc", "a\\b", "..", "a..b", ".hidden", "x" * 129, "sp ace", "é.py", "a\x00b",
     "semi;colon", "star*"],
)
def test_invalid_file_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidArtifact):
        validate_file_name(name)


@pytest.mark.parametrize("name", ["main.py", "test_fizzbuzz.py", "A-b_c.9", "x" * 128])
def test_valid_file_names_pass(name: str) -> None:
    validate_file_name(name)


def test_invalid_artifact_is_a_value_error() -> None:
    assert issubclass(InvalidArtifact, ValueError)


@pytest.mark.parametrize("backend_cls", [BubblewrapBackend, DockerBackend])
@pytest.mark.parametrize(
    "bad",
    [
        spec({"../escape.py": "x"}, ["python3", "x"]),
        spec({".bashrc": "x"}, ["python3", "x"]),
        spec({"ok.py": "x"}, []),
        spec({"ok.py": "x"}, "python3 ok.py"),  # a shell string, not an argv
        spec({"ok.py": "x"}, ["python3"], timeout_seconds=0),
        spec({"ok.py": "x" * (2 * 1024 * 1024)}, ["python3"], max_file_mb=1),
    ],
)
async def test_invalid_specs_come_back_as_error(backend_cls, bad: RunSpec) -> None:
    result = await backend_cls().run(bad)
    assert result.outcome == "error"
    assert result.error
    assert result.exit_code is None


def test_output_capture_caps_and_keeps_tail() -> None:
    cap = OutputCapture(10)
    assert cap.feed(b"12345") is False
    assert cap.feed(b"678901234") is True
    assert cap.data == b"1234567890" and cap.truncated and cap.total == 14
    assert cap.tail.endswith(b"1234")


def test_classify_signals() -> None:
    common = {"deadline_hit": False, "output_limited": False, "stderr_tail": b"", "cpu_seconds": 5}
    assert classify(exit_code=0, signal=None, duration=0.1, **common) == "ok"
    assert classify(exit_code=2, signal=None, duration=0.1, **common) == "failed"
    assert classify(exit_code=152, signal=24, duration=5.0, **common) == "timeout"  # SIGXCPU
    assert classify(exit_code=137, signal=9, duration=6.0, **common) == "timeout"  # hard CPU
    assert classify(exit_code=137, signal=9, duration=0.5, **common) == "killed"
    assert classify(exit_code=139, signal=11, duration=0.5, **common) == "killed"
    tail = dict(common, stderr_tail=b"Traceback...\nMemoryError\n")
    assert classify(exit_code=1, signal=None, duration=0.1, **tail) == "memory"
    assert classify(exit_code=137, signal=9, duration=0.1, oom_killed=True, **common) == "memory"


# ------------------------------------------------------------ bubblewrap runs


@needs_bwrap
async def test_ok_run_with_a_real_test_file(bwrap: BubblewrapBackend) -> None:
    result = await bwrap.run(
        spec(
            {"fizzbuzz.py": FIZZBUZZ, "test_fizzbuzz.py": TEST_FIZZBUZZ},
            ["python3", "test_fizzbuzz.py"],
        )
    )
    assert result.outcome == "ok", result
    assert result.exit_code == 0
    assert "Ran 1 test" in result.stderr and "OK" in result.stderr
    assert result.backend == "bubblewrap"
    assert 0 < result.duration_seconds < 10


@needs_bwrap
async def test_failing_run(bwrap: BubblewrapBackend) -> None:
    broken = FIZZBUZZ.replace('return "Fizz"\n', 'return "Fuzz"\n')
    result = await bwrap.run(
        spec({"fizzbuzz.py": broken, "test_fizzbuzz.py": TEST_FIZZBUZZ},
             ["python3", "test_fizzbuzz.py"])
    )
    assert result.outcome == "failed", result
    assert result.exit_code == 1
    assert "AssertionError" in result.stderr


@needs_bwrap
async def test_unknown_command_is_an_error(bwrap: BubblewrapBackend) -> None:
    result = await bwrap.run(spec({}, ["no-such-program"]))
    assert result.outcome == "error"
    assert "no-such-program" in result.error


@needs_bwrap
async def test_wall_clock_timeout_kills_everything(bwrap: BubblewrapBackend) -> None:
    code = "import os, time\nos.fork(); os.fork()\nprint('started', flush=True)\ntime.sleep(60)\n"
    started = time.monotonic()
    result = await bwrap.run(py(code, timeout_seconds=1.0))
    assert result.outcome == "timeout", result
    assert result.exit_code is None
    assert "started" in result.stdout  # output before the kill is kept
    assert 1.0 <= result.duration_seconds < 4
    assert time.monotonic() - started < 6
    assert_no_leftovers(bwrap)


@needs_bwrap
async def test_cpu_loop_hits_the_cpu_limit(bwrap: BubblewrapBackend) -> None:
    result = await bwrap.run(py("while True:\n    pass\n", cpu_seconds=1, timeout_seconds=20))
    assert result.outcome == "timeout", result
    assert result.duration_seconds < 12  # RLIMIT_CPU, not the 20 s wall clock


@needs_bwrap
async def test_memory_bomb(bwrap: BubblewrapBackend) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))\n"
    result = await bwrap.run(py(code, memory_mb=128))
    assert result.outcome == "memory", result
    assert "MemoryError" in result.stderr


@needs_bwrap
async def test_endless_output_is_capped(bwrap: BubblewrapBackend) -> None:
    code = "import sys\nwhile True:\n    sys.stdout.write('y' * 4096)\n"
    result = await bwrap.run(py(code, max_output_bytes=10_000, timeout_seconds=10))
    assert result.outcome == "output_limit", result
    assert result.stdout_truncated is True
    assert len(result.stdout.encode()) == 10_000
    assert result.duration_seconds < 5
    assert_no_leftovers(bwrap)


@needs_bwrap
async def test_endless_stderr_is_capped_too(bwrap: BubblewrapBackend) -> None:
    code = "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n"
    result = await bwrap.run(py(code, max_output_bytes=5_000))
    assert result.outcome == "output_limit", result
    assert result.stderr_truncated and len(result.stderr.encode()) == 5_000


@needs_bwrap
async def test_killed_by_signal(bwrap: BubblewrapBackend) -> None:
    result = await bwrap.run(py("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"))
    assert result.outcome == "killed", result
    assert result.exit_code == 128 + 11


@needs_bwrap
async def test_process_limit_holds(bwrap: BubblewrapBackend) -> None:
    # Fork until refused: RLIMIT_NPROC counts this run's processes (bwrap included).
    code = (
        "import os, time, json\n"
        "n, err = 0, ''\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        err = str(exc)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(json.dumps({'forked': n, 'err': err}))\n"
    )
    info = probe(await bwrap.run(py(code, max_processes=24)))
    assert 0 < info["forked"] < 24
    assert "Resource temporarily unavailable" in info["err"]
    assert_no_leftovers(bwrap)


@needs_bwrap
async def test_fork_bomb_is_contained(bwrap: BubblewrapBackend) -> None:
    bomb = (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    started = time.monotonic()
    result = await bwrap.run(py(bomb, max_processes=32, timeout_seconds=2))
    assert result.outcome == "timeout", result
    assert time.monotonic() - started < 8
    assert_no_leftovers(bwrap)
    # The host is unaffected: it still starts processes at once.
    host = subprocess.run(["true"], check=False, timeout=5)
    assert host.returncode == 0


@needs_bwrap
async def test_no_network(bwrap: BubblewrapBackend) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = f"""
import json, socket
out = {{}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    out["tcp"] = "connected"
except OSError as exc:
    out["tcp"] = type(exc).__name__
try:
    socket.getaddrinfo("pypi.org", 443)
    out["dns"] = "resolved"
except OSError as exc:
    out["dns"] = type(exc).__name__
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()
    out["public"] = "connected"
except OSError as exc:
    out["public"] = type(exc).__name__
print(json.dumps(out))
"""
    try:
        info = probe(await bwrap.run(py(code)))
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody came through
    finally:
        server.close()
    assert info["tcp"] != "connected"
    assert info["dns"] == "gaierror"
    assert info["public"] != "connected"


@needs_bwrap
async def test_host_files_are_not_visible(bwrap: BubblewrapBackend) -> None:
    code = """
import json, os
def read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        return type(exc).__name__
print(json.dumps({
    "passwd": read("/etc/passwd"),
    "shadow": read("/etc/shadow"),
    "root": os.path.exists("/root"),
    "home": os.path.exists("/home"),
    "var": os.path.exists("/var"),
    "sys": os.path.exists("/sys"),
    "here": os.path.exists(HERE),
    "top": sorted(os.listdir("/")),
    "etc": sorted(os.listdir("/etc")),
}))
""".replace("HERE", repr(os.path.abspath(__file__)))
    info = probe(await bwrap.run(py(code)))
    with open("/etc/passwd") as fh:
        host_passwd = fh.read()
    assert info["passwd"] != host_passwd
    assert "root:" not in info["passwd"] and info["passwd"].startswith("sandbox:")
    assert info["shadow"] == "FileNotFoundError"
    assert not info["root"] and not info["home"] and not info["var"] and not info["sys"]
    assert not info["here"]
    assert set(info["top"]) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc",
                                "sbin", "usr", "work"}
    assert info["etc"] == ["group", "passwd"]


@needs_bwrap
async def test_cannot_write_outside_the_work_dir(bwrap: BubblewrapBackend) -> None:
    code = """
import json
res = {}
for path in ["/x", "/usr/x", "/usr/local/x", "/etc/x", "/dev/x", "/tmp/x", "/proc/x",
             "/work/x"]:
    try:
        with open(path, "w") as fh:
            fh.write("data")
        res[path] = "written"
    except OSError as exc:
        res[path] = type(exc).__name__
print(json.dumps(res))
"""
    info = probe(await bwrap.run(py(code)))
    assert info.pop("/work/x") == "written"
    assert all(v != "written" for v in info.values()), info
    assert not os.path.exists("/x") and not os.path.exists("/usr/local/x")


@needs_bwrap
async def test_work_dir_size_and_file_size_are_capped(bwrap: BubblewrapBackend) -> None:
    code = """
import json
res = {}
for name, mb in [("one.bin", 3), ("two.bin", 3), ("three.bin", 3)]:
    try:
        with open(name, "wb") as fh:
            fh.write(b"0" * (mb * 1024 * 1024))
        res[name] = "ok"
    except OSError as exc:
        res[name] = exc.strerror
try:
    with open("big.bin", "wb") as fh:
        fh.write(b"0" * (5 * 1024 * 1024))
    res["big"] = "ok"
except OSError as exc:
    res["big"] = exc.strerror
print(json.dumps(res))
"""
    # Files may be 4 MiB each, the whole work dir 8 MiB.
    info = probe(
        await bwrap.run(py(code, tmpfs_mb=8, max_file_mb=4, memory_mb=256))
    )
    assert info["one.bin"] == "ok" and info["two.bin"] == "ok"
    assert info["three.bin"] == "No space left on device"
    assert info["big"] in ("File too large", "No space left on device")


@needs_bwrap
async def test_files_do_not_leak_between_runs(bwrap: BubblewrapBackend) -> None:
    first = await bwrap.run(
        spec({"a.py": "open('secret.txt', 'w').write('from run one')\n"}, ["python3", "a.py"],
             run_id="one")
    )
    assert first.outcome == "ok", first
    second = await bwrap.run(
        spec({"b.py": "import os, json\nprint(json.dumps(sorted(os.listdir('.'))))\n"},
             ["python3", "b.py"], run_id="two")
    )
    assert probe(second) == ["b.py"]


@needs_bwrap
async def test_environment_is_minimal(bwrap: BubblewrapBackend, monkeypatch) -> None:
    canary = "coo-canary-3f9a1c7e5b"
    monkeypatch.setenv("COO_TEST_CANARY_SECRET", canary)
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    code = """
import json, os
def raw(path):
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8", "replace")
print(json.dumps({
    "env": dict(os.environ),
    "pid1_environ": raw("/proc/1/environ"),
    "pid1_cmdline": raw("/proc/1/cmdline"),
    "self_environ": raw("/proc/self/environ"),
}))
"""
    info = probe(await bwrap.run(py(code)))
    assert canary not in json.dumps(info)
    env = info["env"]
    env.pop("PWD", None)
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/work",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": "/work",
    }
    assert {v.split("=", 1)[0] for v in info["pid1_environ"].split("\0") if v} <= {
        "PATH", "LANG"}


@needs_bwrap
async def test_non_root_inside_and_outside(bwrap: BubblewrapBackend) -> None:
    marker = "coo-uid-marker-71c2"
    code = f"""
import json, os, time
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print(json.dumps({{"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                  "groups": os.getgroups(), "cap_eff": status["CapEff"].strip(),
                  "cap_bnd": status["CapBnd"].strip(),
                  "no_new_privs": status["NoNewPrivs"].strip()}}), flush=True)
time.sleep(1.5)  # {marker}
"""
    task = asyncio.create_task(
        bwrap.run(spec({"main.py": code}, ["python3", "main.py", marker]))
    )
    # Look at the sandboxed process from the host: its real uid is not root.
    host_uids: set[int] = set()
    deadline = time.monotonic() + 5
    while not host_uids and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.1)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read()
                if marker.encode() in cmd:
                    with open(f"/proc/{entry}/status") as fh:
                        for line in fh:
                            if line.startswith("Uid:"):
                                host_uids.add(int(line.split()[1]))
            except (OSError, ValueError):
                continue
    result = await task
    info = probe(result)
    assert info["uid"] == info["euid"] == 1000 and info["gid"] == 1000
    assert 0 not in info["groups"]
    assert int(info["cap_eff"], 16) == 0 and int(info["cap_bnd"], 16) == 0
    assert info["no_new_privs"] == "1"
    if os.geteuid() == 0:
        assert host_uids, "the sandboxed process was not seen from the host"
        assert 0 not in host_uids
        assert all(bwrap.uid_base <= u < bwrap.uid_base + bwrap.uid_count for u in host_uids)


@needs_bwrap
async def test_user_namespace_creation_fails(bwrap: BubblewrapBackend) -> None:
    code = """
import ctypes, json, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
rc = libc.unshare(CLONE_NEWUSER)
err = ctypes.get_errno()
tool = subprocess.run(["unshare", "-U", "--map-root-user", "id", "-u"],
                      capture_output=True, text=True)
print(json.dumps({"rc": rc, "errno": os.strerror(err) if err else "",
                  "tool_rc": tool.returncode, "tool_out": tool.stdout + tool.stderr}))
"""
    info = probe(await bwrap.run(py(code)))
    assert info["rc"] == -1, info
    assert info["errno"]
    assert info["tool_rc"] != 0, info
    assert "unshare failed" in info["tool_out"]


def host_uids_by_marker(markers: list[str]) -> dict[str, int]:
    """Real (host) uid of the processes whose argv holds one of ``markers``."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{entry}/status") as fh:
                uid = next(int(ln.split()[1]) for ln in fh if ln.startswith("Uid:"))
        except (OSError, ValueError, StopIteration):
            continue
        for marker in markers:
            if argv and argv[0] == b"python3" and marker.encode() in argv:
                found[marker] = uid
    return found


@needs_bwrap
async def test_concurrent_runs_use_separate_uids(bwrap: BubblewrapBackend) -> None:
    if not bwrap.is_root or bwrap.uid_count < 3:
        pytest.skip("needs root and a pool of at least 3 sandbox uids")
    markers = [f"coo-concurrent-{i}" for i in range(3)]
    code = "import time\ntime.sleep(1.0)\n"
    tasks = [
        asyncio.create_task(bwrap.run(spec({"main.py": code}, ["python3", "main.py", m])))
        for m in markers
    ]
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        seen.update(host_uids_by_marker(markers))
    results = await asyncio.gather(*tasks)
    assert all(r.outcome == "ok" for r in results), results
    assert len(seen) == 3, seen
    assert len(set(seen.values())) == 3, f"runs shared a host uid: {seen}"
    assert 0 not in seen.values()
    assert_no_leftovers(bwrap)


@needs_bwrap
def test_uid_pool_is_shared_safely_across_processes(bwrap: BubblewrapBackend) -> None:
    if not bwrap.is_root:
        pytest.skip("the uid pool is used only as root")
    import fcntl

    os.makedirs(bwrap.lock_dir, exist_ok=True)
    path = os.path.join(bwrap.lock_dir, f"uid-{bwrap.uid_base}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another service" holds it
        uid = bwrap._try_take_uid()
        try:
            assert uid is not None and uid != bwrap.uid_base
        finally:
            bwrap._give_back_uid(uid)
    finally:
        os.close(fd)


@needs_bwrap
def test_reap_orphans_kills_leftovers_of_a_dead_service(bwrap: BubblewrapBackend) -> None:
    if not bwrap.is_root:
        pytest.skip("the uid pool is used only as root")
    uid = bwrap.uid_base + bwrap.uid_count - 1
    orphan = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "30"]
    )
    try:
        deadline = time.monotonic() + 5
        while not processes_of_uid(uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes_of_uid(uid)
        assert bwrap.reap_orphans() >= 1
        assert orphan.wait(timeout=5) == -9
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


@needs_bwrap
def test_bubblewrap_reports_available(bwrap: BubblewrapBackend) -> None:
    ok, reason = bwrap.available()
    assert ok and "bubblewrap" in reason


def test_bubblewrap_unavailable_without_bwrap(tmp_path) -> None:
    backend = BubblewrapBackend(bwrap=str(tmp_path / "no-bwrap"))
    ok, reason = backend.available()
    assert not ok and reason


async def test_bubblewrap_unavailable_run_is_an_error(tmp_path) -> None:
    backend = BubblewrapBackend(bwrap=str(tmp_path / "no-bwrap"))
    result = await backend.run(py("print(1)"))
    assert result.outcome == "error" and "unavailable" in result.error


# -------------------------------------------------------------------- docker


def _engine_answers() -> bool:
    return DockerBackend().available()[0]


def test_docker_config_security_settings(monkeypatch) -> None:
    monkeypatch.delenv("COO_SANDBOX_IMAGE", raising=False)
    monkeypatch.delenv("COO_SANDBOX_USER", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "must-not-leak")
    s = spec(
        {"main.py": "print(1)"},
        ["python3", "main.py"],
        memory_mb=300,
        max_processes=50,
        tmpfs_mb=32,
        max_file_mb=8,
        cpu_seconds=7,
    )
    cfg = container_config(s)
    assert cfg["image"] == "coo-sandbox:latest"
    assert cfg["user"] == "sandbox"
    assert cfg["network_mode"] == "none"
    assert cfg["read_only"] is True
    assert cfg["tmpfs"] == {"/work": f"size=32m,nr_inodes={DEFAULT_MAX_INODES},mode=1777"}
    assert cfg["cap_drop"] == ["ALL"]
    assert cfg["security_opt"] == ["no-new-privileges"]
    assert cfg["privileged"] is False
    assert cfg["pids_limit"] == 50
    assert cfg["mem_limit"] == cfg["memswap_limit"] == "300m"
    assert cfg["nano_cpus"] == 1_000_000_000
    assert cfg["environment"] == {}
    assert "must-not-leak" not in json.dumps(cfg, default=str)
    assert cfg["working_dir"] == "/work"
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in cfg["ulimits"]}
    assert ulimits == {
        "cpu": (7, 8),
        "fsize": (8 * 1024 * 1024, 8 * 1024 * 1024),
        "nofile": (256, 256),
        "core": (0, 0),
    }
    # The command is an argv after the loader, never a shell string of ours.
    assert cfg["command"] == ["python3", "main.py"]
    assert cfg["entrypoint"][:2] == ["/bin/sh", "-c"]
    assert cfg["entrypoint"][2] == 'cp -R /input/. /work/ && exec "$@"'
    mounts = cfg["mounts"]
    assert len(mounts) == 1
    assert mounts[0]["Target"] == "/input" and mounts[0]["Type"] == "volume"
    assert not mounts[0]["Source"]  # anonymous, removed with the container (v=True)
    assert cfg["labels"] == {"coo.sandbox.run_id": "test-run"}
    assert cfg["tty"] is False and cfg["stdin_open"] is False
    assert cfg["init"] is True
    # Nothing in the config mounts a host path or shares a namespace.
    text = json.dumps(cfg, default=str)
    for forbidden in ("privileged\": true", "host", "bind", "docker.sock", "SYS_ADMIN"):
        assert forbidden not in text.replace("hostname", "")


def test_docker_config_honours_image_and_user(monkeypatch) -> None:
    monkeypatch.setenv("COO_SANDBOX_IMAGE", "registry.example/coo-sandbox:1")
    cfg = container_config(spec({}, ["python3", "-V"]))
    assert cfg["image"] == "registry.example/coo-sandbox:1"
    assert container_config(spec({}, ["true"]), image="x:1", user="4242")["user"] == "4242"


def test_docker_config_is_accepted_by_the_sdk() -> None:
    # The docker SDK turns the kwargs into a create request without complaint.
    from docker.models.containers import _create_container_args

    kwargs = dict(container_config(spec({}, ["true"])))
    args = _create_container_args({**kwargs, "version": "1.45"})
    host = args["host_config"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert host["PidsLimit"] == 64
    assert host["Tmpfs"] == {"/work": f"size=64m,nr_inodes={DEFAULT_MAX_INODES},mode=1777"}
    assert args["environment"] == {}
    assert args["user"] == "sandbox"


def test_build_archive_holds_root_owned_plain_files() -> None:
    import io
    import tarfile

    data = build_archive({"main.py": "print('é')", "test_x.py": ""})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"main.py", "test_x.py"}
        for m in members.values():
            assert m.isfile() and m.uid == 0 and m.gid == 0 and m.mode == 0o644
        assert tar.extractfile("main.py").read() == "print('é')".encode()


@pytest.mark.skipif(_engine_answers(), reason="a Docker engine answers here")
def test_docker_unavailable_has_a_clear_reason(monkeypatch) -> None:
    ok, reason = DockerBackend().available()
    assert not ok
    assert "Docker engine" in reason


@pytest.mark.skipif(_engine_answers(), reason="a Docker engine answers here")
async def test_docker_run_without_engine_is_an_error() -> None:
    result = await DockerBackend().run(spec({"main.py": "print(1)"}, ["python3", "main.py"]))
    assert result.outcome == "error" and "Docker engine" in result.error


def test_choose_backend() -> None:
    assert isinstance(choose_backend("docker"), DockerBackend)
    assert isinstance(choose_backend("bubblewrap"), BubblewrapBackend)
    with pytest.raises(ValueError):
        choose_backend("chroot")
    auto = choose_backend("auto")
    expected = DockerBackend if _engine_answers() else BubblewrapBackend
    assert isinstance(auto, expected)


@pytest.mark.skipif(not _engine_answers(), reason="no Docker engine answers here (or no image)")
async def test_docker_real_runs() -> None:
    backend = DockerBackend()
    ok = await backend.run(
        spec({"fizzbuzz.py": FIZZBUZZ, "test_fizzbuzz.py": TEST_FIZZBUZZ},
             ["python3", "test_fizzbuzz.py"])
    )
    assert ok.outcome == "ok", ok
    slow = await backend.run(spec({}, ["sleep", "30"], timeout_seconds=2))
    assert slow.outcome == "timeout"
    loud = await backend.run(
        spec({"l.py": "while True: print('y' * 1000)"}, ["python3", "l.py"],
             max_output_bytes=5000)
    )
    assert loud.outcome == "output_limit" and len(loud.stdout.encode()) == 5000
    probe_code = (
        "import json, os, socket\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); net = 'up'\n"
        "except OSError:\n    net = 'down'\n"
        "print(json.dumps({'uid': os.getuid(), 'env': dict(os.environ), 'net': net}))\n"
    )
    info = probe(await backend.run(spec({"p.py": probe_code}, ["python3", "p.py"])))
    assert info["uid"] != 0 and info["net"] == "down"


# ------------------------------------------- docker run flow against a fake engine


class _FakeStream:
    def __init__(self, container: _FakeContainer) -> None:
        self.container = container
        self.closed = False

    def __iter__(self):
        for item in self.container.script:
            if self.container.killed.is_set() or self.closed:
                return
            yield item
        if self.container.hang:
            self.container.killed.wait(30)

    def close(self) -> None:
        self.closed = True


class _FakeContainer:
    def __init__(self, script, status: int, hang: bool, oom: bool = False) -> None:
        import threading

        self.script, self.status, self.hang = script, status, hang
        self.killed = threading.Event()
        self.calls: list[str] = []
        self.archive = b""
        self.attrs = {"State": {"OOMKilled": oom}}

    def put_archive(self, path, data):
        self.calls.append(f"put_archive:{path}")
        self.archive = data
        return True

    def attach(self, **kw):
        self.calls.append("attach")
        assert kw["demux"] and kw["stream"] and kw["logs"]
        return _FakeStream(self)

    def start(self):
        self.calls.append("start")

    def wait(self):
        if self.hang:
            self.killed.wait(30)
            return {"StatusCode": 137}
        return {"StatusCode": self.status}

    def kill(self):
        self.calls.append("kill")
        self.killed.set()

    def reload(self):
        pass

    def remove(self, force=False, v=False):
        self.calls.append(f"remove:force={force},v={v}")


class _FakeClient:
    def __init__(self, container: _FakeContainer) -> None:
        self.container = container
        self.created: dict = {}
        self.containers = self

    def create(self, **kwargs):
        self.created = kwargs
        return self.container

    def close(self):
        pass


def _fake_docker(monkeypatch, container: _FakeContainer) -> _FakeClient:
    client = _FakeClient(container)
    monkeypatch.setattr(DockerBackend, "_client", lambda self, timeout: client)
    return client


async def test_docker_flow_ok(monkeypatch) -> None:
    container = _FakeContainer([(b"hello\n", None), (None, b"warn\n")], status=0, hang=False)
    client = _fake_docker(monkeypatch, container)
    result = await DockerBackend().run(spec({"main.py": "print(1)"}, ["python3", "main.py"]))
    assert result.outcome == "ok", result
    assert result.stdout == "hello\n" and result.stderr == "warn\n"
    assert client.created["network_mode"] == "none"
    assert container.calls[:3] == ["put_archive:/input", "attach", "start"]
    assert container.calls[-1] == "remove:force=True,v=True"
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(container.archive)) as tar:
        assert tar.getnames() == ["main.py"]


async def test_docker_flow_failed_and_memory(monkeypatch) -> None:
    _fake_docker(monkeypatch, _FakeContainer([(None, b"boom\n")], status=1, hang=False))
    assert (await DockerBackend().run(spec({}, ["false"]))).outcome == "failed"
    _fake_docker(monkeypatch, _FakeContainer([], status=137, hang=False, oom=True))
    assert (await DockerBackend().run(spec({}, ["python3"]))).outcome == "memory"


async def test_docker_flow_timeout_kills_and_removes(monkeypatch) -> None:
    container = _FakeContainer([(b"tick\n", None)], status=0, hang=True)
    _fake_docker(monkeypatch, container)
    result = await DockerBackend().run(spec({}, ["sleep", "60"], timeout_seconds=0.5))
    assert result.outcome == "timeout", result
    assert result.stdout == "tick\n" and result.exit_code is None
    assert "kill" in container.calls and container.calls[-1].startswith("remove")
    assert result.duration_seconds < 5


async def test_docker_flow_output_limit(monkeypatch) -> None:
    container = _FakeContainer([(b"y" * 1000, None)] * 50, status=0, hang=True)
    _fake_docker(monkeypatch, container)
    result = await DockerBackend().run(spec({}, ["yes"], max_output_bytes=2500))
    assert result.outcome == "output_limit", result
    assert len(result.stdout) == 2500 and result.stdout_truncated
    assert "kill" in container.calls and container.calls[-1].startswith("remove")


# ------------------------------------------------------------ inodes, cgroups, leftovers
INODE_BOMB = """\
import json, os
n, err = 0, ""
try:
    while n < 200_000:
        open(f"f{n}", "w").close()
        n += 1
except OSError as exc:
    err = exc.strerror
print(json.dumps({"files": n, "err": err}))
"""


@needs_bwrap
async def test_work_dir_caps_inodes(bwrap: BubblewrapBackend) -> None:
    if not bwrap.is_root:
        pytest.skip("the inode cap needs root (the wrapper mounts the work dir itself)")
    out = await bwrap.run(spec({"main.py": INODE_BOMB}, max_inodes=500, timeout_seconds=20))
    info = json.loads(out.stdout.strip().splitlines()[-1])
    # the root directory and main.py hold two of the 500
    assert info == {"files": 498, "err": "No space left on device"}, (out, info)
    assert out.outcome == "ok"
    # the next run starts with an empty work dir again: the mount lived in the run's namespace
    again = await bwrap.run(spec({"main.py": "import os; print(sorted(os.listdir('.')))"}))
    assert again.stdout.strip() == "['main.py']"


def test_inode_limit_is_validated() -> None:
    from coo.sandbox.backends.base import validate_spec

    with pytest.raises(InvalidArtifact, match="max_inodes"):
        validate_spec(spec({"main.py": "x"}, max_inodes=10))
    with pytest.raises(InvalidArtifact, match="max_inodes"):
        validate_spec(spec({"main.py": "x"}, max_inodes=10**8))


def test_root_command_line_mounts_and_joins_cgroups(bwrap_any: BubblewrapBackend) -> None:
    argv = bwrap_any.command_line(spec({"main.py": "x"}, tmpfs_mb=8, max_inodes=777), 200_001, {}, 5, 6,
                                  work_mount="/run/x/work/uid-200001", cgroup_procs=["/cg/a/cgroup.procs"])
    assert argv[1:5] == ["--mount", "--propagation", "private", "--"]
    opts = argv[argv.index("/run/x/work/uid-200001") + 1]
    assert opts == f"size={8 * 1024 * 1024},nr_inodes=777,mode=0700,uid=200001,gid=200001,nosuid,nodev"
    assert argv[argv.index(opts) + 1:argv.index(opts) + 3] == ["/cg/a/cgroup.procs", "--"]
    i = argv.index("--bind")
    assert argv[i + 1:i + 3] == ["/run/x/work/uid-200001", "/work"]
    assert "--tmpfs" not in argv
    plain = bwrap_any.command_line(spec({"main.py": "x"}), 200_001, {}, 5, 6)
    assert plain[0].endswith("setpriv") and "--tmpfs" in plain and "--bind" not in plain


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


@pytest.fixture(scope="module")
def bwrap_any() -> BubblewrapBackend:
    return BubblewrapBackend(bwrap="/usr/bin/bwrap")


@needs_bwrap
async def test_each_run_has_its_own_cgroup(bwrap: BubblewrapBackend) -> None:
    if not bwrap.cgroups.usable:
        pytest.skip(f"no usable cgroups here: {bwrap.cgroups.describe()}")
    task = asyncio.create_task(bwrap.run(spec(
        {"main.py": "import time; time.sleep(2); print('done')"}, memory_mb=128, tmpfs_mb=16,
        max_processes=24, timeout_seconds=20)))
    seen: dict = {}
    deadline = time.monotonic() + 15
    while not seen and time.monotonic() < deadline:
        for name in bwrap.cgroups.stale():
            group = bwrap.cgroups.group(name)
            pids = group.pids()
            if pids:
                limit_file = ("memory.limit_in_bytes", "memory.max")[group.version - 1]
                limit = int(_read(os.path.join(group.dirs[0], limit_file)))
                seen = {"name": name, "pids": pids, "group": group, "limit": limit}
        await asyncio.sleep(0.05)
    out = await task
    assert out.outcome == "ok" and out.stdout.strip() == "done"
    assert seen, "no run cgroup with processes appeared"
    group = seen["group"]
    assert len(seen["pids"]) >= 2             # bwrap, its pid 1 and the command
    assert seen["limit"] == (128 + 16) * 1024 * 1024 + 32 * 1024 * 1024   # memory_mb + tmpfs_mb + slack
    assert not any(os.path.exists(d) for d in group.dirs)                 # removed after the run


@needs_bwrap
def test_cgroup_limits_are_written(bwrap: BubblewrapBackend) -> None:
    cg = bwrap.cgroups
    if not cg.usable:
        pytest.skip(f"no usable cgroups here: {cg.describe()}")
    group = cg.create("test-limits", 100 * 1024 * 1024, 42)
    try:
        if group.version == 1:
            mem, pids_dir = group.dirs
            assert int(_read(os.path.join(mem, "memory.limit_in_bytes"))) == 100 * 1024 * 1024
            assert int(_read(os.path.join(pids_dir, "pids.max"))) == 42
        else:
            assert int(_read(os.path.join(group.dirs[0], "memory.max"))) == 100 * 1024 * 1024
            assert int(_read(os.path.join(group.dirs[0], "pids.max"))) == 42
        # a member is killed and the group removed
        child = subprocess.Popen(["sleep", "30"])
        for f in group.procs_files:
            with open(f, "w") as fh:
                fh.write(str(child.pid))
        assert group.pids() == [child.pid]
        group.remove()
        assert child.wait(timeout=5) == -9
        assert not any(os.path.exists(d) for d in group.dirs)
    finally:
        group.remove()


DAEMON = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "300", sys.argv[1]])
    os._exit(0)
time.sleep(0.3)
print("parent leaves")
"""


@needs_bwrap
async def test_processes_do_not_outlive_their_run(bwrap: BubblewrapBackend) -> None:
    mark = "coo-outlive-" + os.urandom(4).hex()
    out = await bwrap.run(spec({"main.py": DAEMON}, command=["python3", "main.py", mark]))
    assert out.outcome == "ok" and "parent leaves" in out.stdout

    def marked() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as fh:
                        if mark.encode() in fh.read():
                            pids.append(int(entry))
                except OSError:
                    pass
        return pids

    assert marked() == []

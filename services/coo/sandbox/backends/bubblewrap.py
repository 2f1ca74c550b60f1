"""The bubblewrap backend: the embedded default, no container engine needed.

How a run is started (``BubblewrapBackend.command_line`` builds the argv)::

    unshare --mount --propagation private --                           # as root: a private mount namespace
      sh -c WRAPPER coo-sandbox MNT size=BYTES,nr_inodes=N,... CGROUP.PROCS... --
                                            # joins the run's cgroup(s), mounts the work dir, execs on
    setpriv --reuid U --regid U --clear-groups --pdeathsig KILL --     # as root: drop to a pool uid
      prlimit --cpu=C:C+1 --as=M --fsize=F --nofile=N --core=0 --nproc=P --
        bwrap --unshare-all --unshare-user --disable-userns --uid 1000 --gid 1000
              --die-with-parent --new-session --cap-drop ALL
              --ro-bind /usr /usr  (+ the /bin, /lib, /lib64, /sbin symlinks into it)
              --proc /proc --dev /dev --remount-ro /dev
              --bind MNT /work (root)  |  --size BYTES --perms 0755 --tmpfs /work (not root)
              --file FD /work/NAME ...
              --ro-bind-data FD /etc/passwd --ro-bind-data FD /etc/group
              --remount-ro / --chdir /work --clearenv --setenv ... -- ARGV

* The process starts in a new session (its own process group) with an explicit,
  minimal environment; the service's environment is never inherited, so neither
  bwrap's ``/proc/1/environ`` nor its ``/proc/1/cmdline`` (both readable inside)
  holds anything secret.
* ``setpriv`` (util-linux) changes the *host* uid to a dedicated, otherwise unused
  uid taken from a pool (``COO_SANDBOX_UID`` .. ``+COO_SANDBOX_UID_COUNT``), one uid
  per concurrent run. The kernel exempts uid 0 from RLIMIT_NPROC, so a fork bomb is
  only contained when the host uid is not root; a uid per run also keeps one run's
  process budget from starving another's. ``--pdeathsig KILL`` ends the sandbox when
  the service dies.
* ``prlimit`` (util-linux) sets the rlimits, so no Python ``preexec_fn`` runs between
  fork and exec (that is unsafe in a threaded service).
* bwrap then runs unprivileged: it needs a user namespace (``--unshare-user``), maps
  the pool uid to uid 1000 ("sandbox") inside, and ``--disable-userns`` stops the
  code inside from creating further user namespaces.
* Artifact files travel through memfds (``--file FD``): bwrap copies them into the
  capped tmpfs itself.
* The work dir caps inodes as well as bytes. bwrap's own ``--tmpfs`` takes a size only, so as
  root the wrapper mounts the tmpfs itself (``size=``, ``nr_inodes=``, owned by the pool uid,
  mode 0700) on an empty per-uid mount point, inside a private mount namespace of the run:
  the mount is invisible to the host and disappears with the run's last process. bwrap binds
  it to ``/work``. Without root the size cap holds and the inode cap does not (documented in
  docs/security.md); the cgroup's memory limit, where there is one, still bounds the kernel
  memory the inodes cost.
* Where cgroups are usable (:mod:`.cgroups`: v2, or v1's memory and pids hierarchies), each run
  gets its own group, joined by the wrapper before anything else runs: memory (kernel memory
  included) bounded by ``memory_mb + tmpfs_mb`` plus slack, ``pids.max`` bounded by
  ``max_processes``. At the end of the run every process left in the group is killed and the
  group removed. rlimits stay in place underneath, and are the only limits where cgroups are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence

from .base import (
    NOFILE_LIMIT,
    InvalidArtifact,
    OutputCapture,
    RunOutcome,
    RunSpec,
    error_outcome,
    finished_outcome,
    validate_spec,
)
from .cgroups import MEMORY_SLACK_BYTES, PIDS_SLACK, Cgroups, RunGroup, kill_until_gone

NAME = "bubblewrap"
WORK_DIR = "/work"
INNER_UID = 1000
INNER_GID = 1000
DEFAULT_UID_BASE = 200_000
DEFAULT_UID_COUNT = 16
#: How long a run waits for a free pool uid before giving up with "error".
QUEUE_TIMEOUT_SECONDS = 120.0
#: Environment of setpriv/prlimit/bwrap themselves (visible as /proc/1/environ inside).
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: Environment of the code inside the sandbox.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK_DIR,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "TMPDIR": WORK_DIR,
}
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PASSWD = f"sandbox:x:{INNER_UID}:{INNER_GID}:sandbox:{WORK_DIR}:/usr/sbin/nologin\n"
_GROUP = f"sandbox:x:{INNER_GID}:\n"
_MIN_BWRAP = (0, 8, 0)  # --size, --disable-userns, --json-status-fd
#: Run as root by ``sh`` inside the run's private mount namespace (``unshare``): join the run's
#: cgroups (every argument before ``--``), mount the capped work dir, exec the rest. Exit codes
#: 121/122 say which step failed; bwrap's status fd then holds no "exit-code", so the run is an
#: "error" with this stderr as its cause.
_WRAPPER = (
    'mnt=$1; opts=$2; shift 2; '
    'while [ "$1" != "--" ]; do echo $$ > "$1" || { echo "cannot join cgroup $1" >&2; exit 121; }; shift; done; '
    'shift; mount -t tmpfs -o "$opts" coo-work "$mnt" || { echo "cannot mount the work dir" >&2; exit 122; }; '
    'unset PWD OLDPWD; exec "$@"'   # sh's own variables stay out of bwrap's /proc/1/environ
)

# Pool uids in use by runs of this process (shared by every backend instance).
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_lock_fds: dict[int, int] = {}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) pids whose real uid is ``uid``, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                fields = dict(
                    line.split(b":", 1) for line in fh.read().splitlines() if b":" in line
                )
            if int(fields[b"Uid"].split()[0]) != uid:
                continue
            if fields[b"State"].split()[0] in (b"Z", b"X"):
                continue
            pids.append(int(entry))
        except (OSError, ValueError, IndexError, KeyError):
            continue
    return pids


def kill_uid(uid: int, settle_seconds: float = 2.0) -> int:
    """SIGKILL every process of a (dedicated) pool uid and wait until none is left.

    Returns how many signals were sent.
    """
    if uid == 0:
        raise ValueError("refusing to kill the processes of uid 0")
    return kill_until_gone(lambda: processes_of_uid(uid), settle_seconds)


class BubblewrapBackend:
    name = NAME

    def __init__(
        self,
        *,
        bwrap: str | None = None,
        uid_base: int | None = None,
        uid_count: int | None = None,
        queue_timeout: float = QUEUE_TIMEOUT_SECONDS,
    ) -> None:
        self.bwrap = bwrap or os.environ.get("COO_SANDBOX_BWRAP") or shutil.which(
            "bwrap", path=_SAFE_PATH
        )
        self.setpriv = shutil.which("setpriv", path=_SAFE_PATH)
        self.prlimit = shutil.which("prlimit", path=_SAFE_PATH)
        self.unshare = shutil.which("unshare", path=_SAFE_PATH)
        self.sh = shutil.which("sh", path=_SAFE_PATH)
        self.uid_base = uid_base if uid_base is not None else _env_int(
            "COO_SANDBOX_UID", DEFAULT_UID_BASE
        )
        self.uid_count = uid_count if uid_count is not None else _env_int(
            "COO_SANDBOX_UID_COUNT", DEFAULT_UID_COUNT
        )
        self.queue_timeout = queue_timeout
        self.lock_dir = os.environ.get("COO_SANDBOX_LOCK_DIR") or (
            "/run/coo-sandbox" if os.path.isdir("/run") and os.access("/run", os.W_OK)
            else os.path.join(tempfile.gettempdir(), "coo-sandbox")
        )
        self.is_root = os.geteuid() == 0
        self._cgroups: Cgroups | None = None
        self._available: tuple[bool, str] | None = None
        self._checked_at = 0.0

    # ------------------------------------------------------------------ probing
    def _static_problem(self) -> str:
        if not self.bwrap:
            return "bwrap not found on PATH (install it: apt-get install -y bubblewrap)"
        if not self.setpriv or not self.prlimit:
            return "setpriv/prlimit (util-linux) not found on PATH"
        if self.is_root and (not self.unshare or not self.sh):
            return "unshare (util-linux) or sh not found on PATH"
        try:
            out = subprocess.run(
                [self.bwrap, "--version"], capture_output=True, text=True, timeout=5,
                env=HOST_ENV, check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot run {self.bwrap}: {exc}"
        match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
        if not match:
            return f"cannot read the bwrap version from {out!r}"
        version = tuple(int(x or 0) for x in match.groups())
        if version < _MIN_BWRAP:
            return f"bwrap {out.strip()} is too old; 0.8.0 or newer is needed"
        if self.is_root:
            if self.uid_base <= 0 or self.uid_count < 1:
                return "COO_SANDBOX_UID must be > 0 and COO_SANDBOX_UID_COUNT >= 1"
            if self.uid_base + self.uid_count > 2**31 - 2:
                return "COO_SANDBOX_UID range is out of bounds"
        try:
            with open("/proc/sys/user/max_user_namespaces") as fh:
                if int(fh.read().strip() or 0) <= 0:
                    return "user namespaces are disabled (user.max_user_namespaces=0)"
        except OSError:
            pass
        return ""

    def available(self) -> tuple[bool, str]:
        """Usable here? Checks the tools and runs one tiny sandbox.

        A success is cached; a failure is probed again after 30 s.
        """
        now = time.monotonic()
        if self._available is not None and (
            self._available[0] or now - self._checked_at < 30
        ):
            return self._available
        self._checked_at = now
        problem = self._static_problem()
        if problem:
            self._available = (False, problem)
            return self._available
        uid = self._try_take_uid() if self.is_root else os.getuid()
        if uid is None:  # every pool uid runs a sandbox right now: it works
            return (True, f"bubblewrap at {self.bwrap}; all sandbox uids busy")
        owned: list[int] = []
        probe = RunSpec(run_id="probe", files={}, command=["/usr/bin/true"])
        group: RunGroup | None = None
        try:
            if self.is_root and self.cgroups.usable:
                group = self.cgroups.create(f"uid-{uid}", *self._group_limits(probe))
            argv, fds = self._argv(probe, uid, owned, group=group)
            proc = subprocess.run(
                argv, pass_fds=fds, capture_output=True, timeout=15, env=HOST_ENV,
                stdin=subprocess.DEVNULL, cwd="/", check=False,
            )
            ok = proc.returncode == 0
            detail = proc.stderr.decode("utf-8", "replace").strip()
        except (OSError, subprocess.SubprocessError) as exc:
            ok, detail = False, str(exc)
        finally:
            for fd in owned:
                os.close(fd)
            if group is not None:
                group.remove()
            self._give_back_uid(uid)
        if ok:
            mode = (
                f"host uids {self.uid_base}..{self.uid_base + self.uid_count - 1}; "
                f"work dir capped in bytes and inodes; {self.cgroups.describe()}"
                if self.is_root
                else f"running as uid {os.getuid()} (not root: no uid pool, no inode cap, rlimits only)"
            )
            self._available = (True, f"bubblewrap at {self.bwrap}; {mode}")
        else:
            self._available = (False, f"a probe sandbox failed: {detail or 'no detail'}")
        return self._available

    # ------------------------------------------------------------- command line
    @property
    def cgroups(self) -> Cgroups:
        """The cgroup hierarchy runs are put in (detected once; ``usable`` False: rlimits only)."""
        if self._cgroups is None:
            self._cgroups = Cgroups()
        return self._cgroups

    @staticmethod
    def _group_limits(spec: RunSpec) -> tuple[int, int]:
        """(memory bytes, pids) of a run's cgroup: the process's address space plus the work
        dir's pages (charged to the run that writes them) plus slack; its processes plus bwrap's."""
        mib = 1024 * 1024
        return (spec.memory_mb + spec.tmpfs_mb) * mib + MEMORY_SLACK_BYTES, spec.max_processes + PIDS_SLACK

    def _mount_point(self, host_uid: int) -> str:
        """An empty directory the run's work dir is mounted on, inside the run's own mount
        namespace only. Its parents are traversable (0711) so that bwrap, already running as
        the pool uid, can reach it; the tmpfs root on it belongs to that uid, mode 0700."""
        base = os.path.join(self.lock_dir, "work")
        os.makedirs(base, mode=0o711, exist_ok=True)
        for path in (self.lock_dir, base):
            if os.stat(path).st_mode & 0o777 != 0o711:
                os.chmod(path, 0o711)  # noqa: S103 - traversable, not listable: see the docstring
        path = os.path.join(base, f"uid-{host_uid}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        return path

    def _argv(
        self,
        spec: RunSpec,
        host_uid: int,
        owned: list[int],
        status_fd: int | None = None,
        group: RunGroup | None = None,
    ) -> tuple[list[str], list[int]]:
        """The full argv and the fds to pass to it.

        Creates a memfd per artifact plus /etc/passwd and /etc/group; every fd
        created is appended to ``owned`` at once, for the caller to close.
        """
        file_fds: dict[str, int] = {}
        for name, content in spec.files.items():
            file_fds[name] = _memfd("coo-artifact", content.encode("utf-8"))
            owned.append(file_fds[name])
        passwd_fd = _memfd("coo-passwd", _PASSWD.encode())
        owned.append(passwd_fd)
        group_fd = _memfd("coo-group", _GROUP.encode())
        owned.append(group_fd)
        work_mount = self._mount_point(host_uid) if self.is_root else None
        argv = self.command_line(spec, host_uid, file_fds, passwd_fd, group_fd, status_fd,
                                 work_mount=work_mount, cgroup_procs=group.procs_files if group else ())
        fds = [*file_fds.values(), passwd_fd, group_fd]
        if status_fd is not None:
            fds.append(status_fd)
        return argv, fds

    def command_line(
        self,
        spec: RunSpec,
        host_uid: int,
        file_fds: dict[str, int],
        passwd_fd: int,
        group_fd: int,
        status_fd: int | None = None,
        *,
        work_mount: str | None = None,
        cgroup_procs: Sequence[str] = (),
    ) -> list[str]:
        """The argv of one run. With ``work_mount`` (root only) the run starts in a private
        mount namespace whose wrapper joins ``cgroup_procs`` and mounts the work dir there."""
        mib = 1024 * 1024
        argv: list[str] = []
        if work_mount is not None:
            opts = (f"size={spec.tmpfs_mb * mib},nr_inodes={spec.max_inodes},mode=0700,"
                    f"uid={host_uid},gid={host_uid},nosuid,nodev")
            argv += [self.unshare or "unshare", "--mount", "--propagation", "private", "--",
                     self.sh or "sh", "-c", _WRAPPER, "coo-sandbox", work_mount, opts,
                     *cgroup_procs, "--"]
        elif cgroup_procs:
            raise ValueError("cgroups need the root wrapper (work_mount)")
        argv += [self.setpriv or "setpriv"]
        if self.is_root:
            argv += [f"--reuid={host_uid}", f"--regid={host_uid}", "--clear-groups"]
        argv += ["--pdeathsig=KILL", "--"]
        argv += [
            self.prlimit or "prlimit",
            f"--cpu={spec.cpu_seconds}:{spec.cpu_seconds + 1}",
            f"--as={spec.memory_mb * mib}",
            f"--fsize={spec.max_file_mb * mib}",
            f"--nofile={NOFILE_LIMIT}",
            "--core=0",
            f"--nproc={spec.max_processes}",
            "--",
        ]
        argv += [
            self.bwrap or "bwrap",
            *(["--json-status-fd", str(status_fd)] if status_fd is not None else []),
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--uid", str(INNER_UID),
            "--gid", str(INNER_GID),
            "--hostname", "sandbox",
            "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr",
        ]
        for link in ("bin", "lib", "lib64", "sbin", "lib32", "libx32"):
            host = f"/{link}"
            if os.path.islink(host):
                argv += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):  # a system without merged /usr
                argv += ["--ro-bind", host, host]
        argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
        if work_mount is not None:
            argv += ["--bind", work_mount, WORK_DIR]
        else:
            argv += ["--size", str(spec.tmpfs_mb * mib), "--perms", "0755", "--tmpfs", WORK_DIR]
        for name, fd in file_fds.items():
            argv += ["--perms", "0644", "--file", str(fd), f"{WORK_DIR}/{name}"]
        argv += [
            "--perms", "0444", "--ro-bind-data", str(passwd_fd), "/etc/passwd",
            "--perms", "0444", "--ro-bind-data", str(group_fd), "/etc/group",
            "--remount-ro", "/",
            "--chdir", WORK_DIR,
            "--clearenv",
        ]
        for key, value in SANDBOX_ENV.items():
            argv += ["--setenv", key, value]
        argv += ["--", *spec.command]
        return argv

    # --------------------------------------------------------------- uid pool
    def _try_take_uid(self) -> int | None:
        """Claim a free pool uid: free in this process and flock-free across processes.

        The lock file (``COO_SANDBOX_LOCK_DIR``, default /run/coo-sandbox) is held
        for the whole run and released by the kernel if this process dies, so two
        services (or test sessions) on one host never share a uid.
        """
        with _uid_lock:
            for uid in range(self.uid_base, self.uid_base + self.uid_count):
                if uid in _uids_in_use:
                    continue
                fd = self._lock_uid(uid)
                if fd is None:
                    continue
                _uids_in_use.add(uid)
                _uid_lock_fds[uid] = fd
                return uid
        return None

    def _lock_uid(self, uid: int) -> int | None:
        try:
            os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
            fd = os.open(
                os.path.join(self.lock_dir, f"uid-{uid}.lock"),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    async def _take_uid(self) -> int | None:
        if not self.is_root:
            return os.getuid()
        deadline = time.monotonic() + self.queue_timeout
        while True:
            uid = self._try_take_uid()
            if uid is not None:
                return uid
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    def _give_back_uid(self, uid: int) -> None:
        if not self.is_root:
            return
        with _uid_lock:
            _uids_in_use.discard(uid)
            fd = _uid_lock_fds.pop(uid, None)
            if fd is not None:
                os.close(fd)  # releases the flock

    def reap_orphans(self) -> int:
        """Kill the processes of every pool uid that no live run holds.

        For the service's start-up crash recovery: a run left behind by a dead
        service still runs as a pool uid, but its lock died with the service.
        Returns the number of signals sent.
        """
        if not self.is_root:
            return 0
        killed = 0
        held: list[int] = []
        cgroups = self.cgroups if self.cgroups.usable else None
        try:
            while (uid := self._try_take_uid()) is not None:
                held.append(uid)
                if cgroups is not None:
                    group = cgroups.group(f"uid-{uid}")
                    killed += group.kill()
                    if any(os.path.isdir(d) for d in group.dirs):
                        group.remove()
                killed += kill_uid(uid)
        finally:
            for uid in held:
                self._give_back_uid(uid)
        return killed

    # -------------------------------------------------------------------- run
    async def run(self, spec: RunSpec) -> RunOutcome:
        try:
            validate_spec(spec)
        except InvalidArtifact as exc:
            return error_outcome(NAME, str(exc))
        ok, reason = await asyncio.to_thread(self.available)
        if not ok:
            return error_outcome(NAME, f"bubblewrap backend unavailable: {reason}")
        uid = await self._take_uid()
        if uid is None:
            return error_outcome(
                NAME, f"no free sandbox uid within {self.queue_timeout:.0f}s (all busy)"
            )
        group: RunGroup | None = None
        try:
            if self.is_root and self.cgroups.usable:
                try:
                    group = await asyncio.to_thread(
                        self.cgroups.create, f"uid-{uid}", *self._group_limits(spec))
                except OSError as exc:
                    return error_outcome(NAME, f"cannot create the run's cgroup: {exc}")
            return await self._run(spec, uid, group)
        finally:
            # Whatever the run left behind (daemons, setsid'd children) dies here: the whole
            # cgroup, then every process of the pool uid.
            if group is not None:
                await asyncio.to_thread(group.remove)
            if self.is_root:
                await asyncio.to_thread(kill_uid, uid)
            self._give_back_uid(uid)

    async def _run(self, spec: RunSpec, uid: int, group: RunGroup | None = None) -> RunOutcome:
        owned: list[int] = []
        try:
            status_r, status_w = os.pipe()
        except OSError as exc:
            return error_outcome(NAME, f"cannot prepare the sandbox: {exc}")
        try:
            owned.append(status_w)
            argv, fds = self._argv(spec, uid, owned, status_fd=status_w, group=group)
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=HOST_ENV,
                cwd="/",
                start_new_session=True,
                pass_fds=fds,
            )
        except OSError as exc:
            os.close(status_r)
            return error_outcome(NAME, f"cannot start the sandbox: {exc}")
        finally:
            # The child holds its own copies now (or never started).
            for fd in owned:
                with contextlib.suppress(OSError):
                    os.close(fd)
        try:
            return await self._supervise(spec, proc, started, status_r, group)
        finally:
            os.close(status_r)
            if proc.returncode is None:
                self._kill_group(proc)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 10)

    @staticmethod
    def _kill_group(proc: asyncio.subprocess.Process) -> None:
        # bwrap leads its own process group (start_new_session); killing it takes
        # its pid-namespace init down, and the kernel then kills every process of
        # the namespace. The per-uid sweep in run() is the second line.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    async def _supervise(
        self,
        spec: RunSpec,
        proc: asyncio.subprocess.Process,
        started: float,
        status_r: int,
        group: RunGroup | None = None,
    ) -> RunOutcome:
        out = OutputCapture(spec.max_output_bytes)
        err = OutputCapture(spec.max_output_bytes)
        over = asyncio.Event()

        async def pump(stream: asyncio.StreamReader | None, cap: OutputCapture) -> None:
            if stream is None:
                return
            # Read to EOF even past the cap (the surplus is dropped): asyncio only
            # reports the exit once every pipe is closed, and a paused pipe never is.
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                if cap.feed(chunk):
                    over.set()

        pumps = [
            asyncio.create_task(pump(proc.stdout, out)),
            asyncio.create_task(pump(proc.stderr, err)),
        ]
        waiter = asyncio.create_task(proc.wait())
        over_waiter = asyncio.create_task(over.wait())
        deadline_hit = False
        try:
            remaining = spec.timeout_seconds - (time.monotonic() - started)
            done, _ = await asyncio.wait(
                {waiter, over_waiter},
                timeout=max(remaining, 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiter not in done:
                if not over.is_set():
                    deadline_hit = True
                self._kill_group(proc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), 10)
            duration = time.monotonic() - started
            # After bwrap is gone its pid namespace is gone, so the pipes close.
            _, pending = await asyncio.wait(pumps, timeout=5)
            for task in pending:
                task.cancel()
        finally:
            over_waiter.cancel()
            waiter.cancel()
            for task in pumps:
                task.cancel()

        returncode = proc.returncode
        status = self._read_status(status_r)
        output_limited = over.is_set()
        signal_no: int | None = None
        exit_code: int | None = returncode
        if returncode is not None and returncode < 0:
            # bwrap itself died by a signal: we killed it (deadline/output) or it
            # was killed from outside.
            signal_no, exit_code = -returncode, None
        elif returncode is not None and 128 < returncode <= 128 + 64:
            # bwrap reports the command's death by signal N as exit 128+N.
            signal_no = returncode - 128

        if not deadline_hit and not output_limited and "exit-code" not in status:
            # bwrap failed before or at exec (bad command, broken host setup).
            detail = err.text().strip() or f"bwrap exited with {returncode}"
            return RunOutcome(
                outcome="error",
                exit_code=exit_code,
                stdout=out.text(),
                stderr=err.text(),
                stdout_truncated=out.truncated,
                stderr_truncated=err.truncated,
                duration_seconds=duration,
                backend=NAME,
                error=f"the sandbox could not start the command: {detail[-500:]}",
            )
        return finished_outcome(
            NAME, exit_code=exit_code, signal=signal_no, deadline_hit=deadline_hit,
            output_limited=output_limited, out=out, err=err, duration=duration,
            cpu_seconds=spec.cpu_seconds, oom_killed=group is not None and group.oom_killed(),
        )

    @staticmethod
    def _read_status(fd: int) -> dict:
        """Merge bwrap's --json-status-fd documents ({"child-pid"}, {"exit-code"})."""
        os.set_blocking(fd, False)
        raw = bytearray()
        with contextlib.suppress(BlockingIOError, OSError):
            while len(raw) < 65536:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                raw += chunk
        merged: dict = {}
        for doc in _json_documents(raw.decode("utf-8", "replace")):
            if isinstance(doc, dict):
                merged.update(doc)
        return merged


def _json_documents(text: str) -> Iterator[object]:
    decoder = json.JSONDecoder()
    idx = 0
    while True:
        while idx < len(text) and text[idx].isspace():
            idx += 1
        if idx >= len(text):
            return
        try:
            doc, idx = decoder.raw_decode(text, idx)
        except json.JSONDecodeError:
            return
        yield doc

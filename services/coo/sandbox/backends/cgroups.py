"""One control group per sandbox run: memory (kernel memory included) and pids limits.

Where the machine has cgroups and the service may write to them (root), every bubblewrap run
is started inside its own group; rlimits (RLIMIT_AS, RLIMIT_NPROC, ...) stay as the second line
and are the only line where no usable hierarchy exists.

* **cgroup v2** (a unified hierarchy whose ``cgroup.controllers`` lists ``memory`` and ``pids``):
  ``<service's group>/coo-sandbox/<run>`` with ``memory.max``, ``memory.swap.max = 0`` and
  ``pids.max``. v2's memory controller always charges kernel memory (inodes, dentries, page
  tables, socket buffers) to the group.
* **cgroup v1** (``memory`` and ``pids`` hierarchies mounted separately, as on these machines
  and with Docker 20.10's default): ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes``
  (no swap), ``memory.kmem.limit_in_bytes`` where the kernel still accepts it; kernel memory is
  charged to ``memory.usage_in_bytes`` either way, so ``limit_in_bytes`` bounds it. ``pids.max``.

Joining happens before ``exec``: the run's wrapper writes its own pid into each group's
``cgroup.procs`` and only then execs setpriv/prlimit/bwrap, so no process of the run is ever
outside its group. At the end every process left in the group is killed (``cgroup.kill`` on
v2, SIGKILL to each member on v1, repeated until empty) and the group is removed: nothing a run
started, daemonised or not, outlives it.

A group is named after the run's pool uid (``uid-<uid>``), which the backend holds under a
file lock for the whole run, so a group left behind by a crashed service is recognised (its
uid's lock is free) and reaped at start-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

PARENT = "coo-sandbox"
#: Slack above the run's own limits for bwrap, its pid-1 helper and the kernel's bookkeeping.
MEMORY_SLACK_BYTES = 32 * 1024 * 1024
PIDS_SLACK = 4


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(value)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount, from /proc/self/mountinfo."""
    out: list[tuple[str, str, set[str]]] = []
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return out
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((fields[4].replace("\\040", " "), rfields[0], set(rfields[2].split(","))))
    return out


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's group path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    try:
        text = _read("/proc/self/cgroup")
    except OSError:
        return paths
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            paths[ctrl] = parts[2]
    return paths


def kill_until_gone(list_pids: Callable[[], list[int]], settle_seconds: float = 2.0) -> int:
    """SIGKILL the processes ``list_pids`` names until it names none (or ``settle_seconds`` pass);
    returns how many signals were sent."""
    sent = 0
    deadline = time.monotonic() + settle_seconds
    while True:
        pids = list_pids()
        if not pids or time.monotonic() >= deadline:
            return sent
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                sent += 1
        time.sleep(0.01)


@dataclass(frozen=True)
class RunGroup:
    """The group(s) of one run: one directory on v2, a memory and a pids directory on v1."""

    version: int
    dirs: tuple[str, ...]

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in _read(path).split())
        return sorted(found)

    def oom_killed(self) -> bool:
        """True when the kernel's OOM killer acted inside this group (its memory limit was hit)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                for line in _read(os.path.join(d, name)).splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
        return False

    def kill(self, settle_seconds: float = 2.0) -> int:
        """SIGKILL every process in the group until it is empty; returns the signals sent."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                _write(os.path.join(self.dirs[0], "cgroup.kill"), "1")
        return kill_until_gone(self.pids, settle_seconds)

    def remove(self) -> None:
        """Kill what is left and remove the directories (a group with members cannot go)."""
        self.kill()
        for d in self.dirs:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:   # EBUSY while the last members are being reaped
                    time.sleep(0.02)


class Cgroups:
    """Finds a usable hierarchy once and makes run groups in it. ``usable`` False: rlimits only."""

    def __init__(self, root_only: bool = True) -> None:
        self.version = 0
        self.parents: tuple[str, ...] = ()
        self.problem = ""
        if root_only and os.geteuid() != 0:
            self.problem = "not root: rlimits only"
            return
        try:
            self._detect()
        except OSError as exc:
            self.version, self.parents = 0, ()
            self.problem = f"cgroups unusable: {exc}"

    @property
    def usable(self) -> bool:
        return self.version in (1, 2)

    def describe(self) -> str:
        if not self.usable:
            return self.problem or "no cgroups"
        return f"cgroup v{self.version} ({', '.join(self.parents)})"

    def _detect(self) -> None:
        mounts = _mounts()
        own = _own_paths()
        v2 = next((m for m in mounts if m[1] == "cgroup2"), None)
        if v2 is not None:
            base = os.path.join(v2[0], own.get("", "/").lstrip("/"))
            try:
                available = set(_read(os.path.join(base, "cgroup.controllers")).split())
            except OSError:
                available = set()
            if {"memory", "pids"} <= available:
                parent = os.path.join(base, PARENT)
                with contextlib.suppress(OSError):   # may already be on, or refused (internal processes)
                    _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
                os.makedirs(parent, exist_ok=True)
                _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
                self.version, self.parents = 2, (parent,)
                return
        mem = next((m for m in mounts if m[1] == "cgroup" and "memory" in m[2]), None)
        pids = next((m for m in mounts if m[1] == "cgroup" and "pids" in m[2]), None)
        if mem is None or pids is None:
            self.problem = "no cgroup hierarchy with the memory and pids controllers"
            return
        parents = []
        for mount, ctrl in ((mem, "memory"), (pids, "pids")):
            parent = os.path.join(mount[0], own.get(ctrl, "/").lstrip("/"), PARENT)
            os.makedirs(parent, exist_ok=True)
            parents.append(parent)
        with contextlib.suppress(OSError):   # the default on current kernels, and v1's only sane mode
            _write(os.path.join(parents[0], "memory.use_hierarchy"), "1")
        self.version, self.parents = 1, tuple(parents)

    def group(self, name: str) -> RunGroup:
        """The (possibly not yet created) group ``name``."""
        return RunGroup(self.version, tuple(os.path.join(p, name) for p in self.parents))

    def create(self, name: str, memory_bytes: int, max_pids: int) -> RunGroup:
        """A fresh group with the limits set; a stale group of the same name is reaped first."""
        group = self.group(name)
        if any(os.path.isdir(d) for d in group.dirs):
            group.remove()
        for d in group.dirs:
            os.mkdir(d, 0o755)
        try:
            if self.version == 2:
                d = group.dirs[0]
                _write(os.path.join(d, "memory.max"), str(memory_bytes))
                with contextlib.suppress(OSError):   # no swap configured: the file may be missing
                    _write(os.path.join(d, "memory.swap.max"), "0")
                _write(os.path.join(d, "pids.max"), str(max_pids))
            else:
                mem, pids = group.dirs
                _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
                with contextlib.suppress(OSError):   # without swap accounting the file is absent
                    _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                with contextlib.suppress(OSError):   # refused by kernels that dropped kmem limits
                    _write(os.path.join(mem, "memory.kmem.limit_in_bytes"), str(memory_bytes))
                _write(os.path.join(pids, "pids.max"), str(max_pids))
        except OSError:
            group.remove()
            raise
        return group

    def stale(self, prefix: str = "uid-") -> list[str]:
        """Names of the run groups present now (for crash recovery)."""
        names: set[str] = set()
        for parent in self.parents:
            with contextlib.suppress(OSError):
                names.update(n for n in os.listdir(parent)
                             if n.startswith(prefix) and os.path.isdir(os.path.join(parent, n)))
        return sorted(names)

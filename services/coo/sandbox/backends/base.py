"""Shared types and helpers of the sandbox execution backends.

A backend takes a :class:`RunSpec` (artifact files, an argv, limits) and returns a
:class:`RunOutcome`. Backends never raise for a bad spec or a broken host: every
problem comes back as ``outcome="error"`` with a clear ``error`` text, so the
service wrapper can always publish a result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

OUTCOMES = ("ok", "failed", "timeout", "memory", "output_limit", "killed", "error")

#: Upper bounds a spec may ask for; anything above is refused as an "error".
MAX_FILES = 100
MAX_FILE_NAME = 128
MAX_TIMEOUT_SECONDS = 600.0
MAX_CPU_SECONDS = 600
MAX_MEMORY_MB = 16_384
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
MAX_PROCESSES = 4096
MAX_TMPFS_MB = 4096
#: Inodes (files, directories, links) the work dir may hold: each costs kernel memory that no
#: rlimit counts, so a size cap alone would let a run create millions of empty files.
DEFAULT_MAX_INODES = 16_384
MAX_INODES = 1_000_000
MAX_ARGV_BYTES = 128 * 1024
#: Open files inside a run (RLIMIT_NOFILE / ulimit nofile); fixed, not part of the spec.
NOFILE_LIMIT = 256

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
# The tail of stderr kept for classification (a MemoryError traceback ends the stream).
_TAIL_BYTES = 4096
_MEMORY_HINT = re.compile(
    rb"\bMemoryError\b|Cannot allocate memory|std::bad_alloc|out of memory",
    re.IGNORECASE,
)


class InvalidArtifact(ValueError):
    """A run spec (file name, size, command or limit) that is refused before running."""


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    files: dict[str, str]
    command: list[str]
    timeout_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 256
    max_output_bytes: int = 64_000
    max_processes: int = 64
    tmpfs_mb: int = 64
    max_file_mb: int = 16
    max_inodes: int = DEFAULT_MAX_INODES


@dataclass
class RunOutcome:
    outcome: str
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_seconds: float
    backend: str
    error: str = ""


@runtime_checkable
class SandboxBackend(Protocol):
    name: str

    async def run(self, spec: RunSpec) -> RunOutcome: ...

    def available(self) -> tuple[bool, str]: ...


def validate_file_name(name: str) -> None:
    """Refuse any artifact name that is not a plain, short, visible file name."""
    if not isinstance(name, str) or not name:
        raise InvalidArtifact("file name is empty")
    shown = name[:40] + ("..." if len(name) > 40 else "")
    if len(name) > MAX_FILE_NAME:
        raise InvalidArtifact(f"file name {shown!r} is longer than {MAX_FILE_NAME} characters")
    if "/" in name or "\\" in name:
        raise InvalidArtifact(f"file name {shown!r} contains a path separator")
    if ".." in name:
        raise InvalidArtifact(f"file name {shown!r} contains '..'")
    if name.startswith("."):
        raise InvalidArtifact(f"file name {shown!r} starts with '.'")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArtifact(
            f"file name {shown!r} has characters outside [A-Za-z0-9._-]"
        )


def _check_int(label: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArtifact(f"{label} must be an integer in [{low}, {high}], got {value!r}")


def validate_spec(spec: RunSpec) -> None:
    """Check everything a backend relies on; raise :class:`InvalidArtifact` otherwise."""
    if not isinstance(spec.run_id, str) or not spec.run_id or len(spec.run_id) > 256:
        raise InvalidArtifact("run_id must be a non-empty string of at most 256 characters")
    if not isinstance(spec.files, dict):
        raise InvalidArtifact("files must be a mapping of name to content")
    if len(spec.files) > MAX_FILES:
        raise InvalidArtifact(f"too many files: {len(spec.files)} > {MAX_FILES}")
    _check_int("max_file_mb", spec.max_file_mb, 1, MAX_TMPFS_MB)
    _check_int("tmpfs_mb", spec.tmpfs_mb, 1, MAX_TMPFS_MB)
    _check_int("max_inodes", spec.max_inodes, MAX_FILES + 16, MAX_INODES)
    total = 0
    for name, content in spec.files.items():
        validate_file_name(name)
        if not isinstance(content, str):
            raise InvalidArtifact(f"content of {name!r} is not text")
        size = len(content.encode("utf-8"))
        if size > spec.max_file_mb * 1024 * 1024:
            raise InvalidArtifact(f"file {name!r} is larger than max_file_mb={spec.max_file_mb}")
        total += size
    if total > spec.tmpfs_mb * 1024 * 1024:
        raise InvalidArtifact(f"files add up to more than tmpfs_mb={spec.tmpfs_mb}")
    if (
        not isinstance(spec.command, (list, tuple))
        or not spec.command
        or not all(isinstance(a, str) for a in spec.command)
    ):
        raise InvalidArtifact("command must be a non-empty list of strings (an argv)")
    if not spec.command[0]:
        raise InvalidArtifact("command[0] is empty")
    if any("\x00" in a for a in spec.command):
        raise InvalidArtifact("command contains a NUL byte")
    if sum(len(a.encode("utf-8")) + 1 for a in spec.command) > MAX_ARGV_BYTES:
        raise InvalidArtifact(f"command is longer than {MAX_ARGV_BYTES} bytes")
    timeout = spec.timeout_seconds
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise InvalidArtifact(f"timeout_seconds must be in (0, {MAX_TIMEOUT_SECONDS}]")
    _check_int("cpu_seconds", spec.cpu_seconds, 1, MAX_CPU_SECONDS)
    _check_int("memory_mb", spec.memory_mb, 16, MAX_MEMORY_MB)
    _check_int("max_output_bytes", spec.max_output_bytes, 1, MAX_OUTPUT_BYTES)
    _check_int("max_processes", spec.max_processes, 8, MAX_PROCESSES)


def error_outcome(backend: str, reason: str, duration: float = 0.0) -> RunOutcome:
    return RunOutcome(
        outcome="error",
        exit_code=None,
        stdout="",
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        duration_seconds=duration,
        backend=backend,
        error=reason,
    )


class OutputCapture:
    """Keeps the first ``limit`` bytes of a stream and its last few KiB.

    ``feed`` returns True once more than ``limit`` bytes arrived: the caller
    then stops the run (outcome ``output_limit``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0
        self.truncated = False

    def feed(self, chunk: bytes) -> bool:
        if not chunk:
            return self.truncated
        self.total += len(chunk)
        room = self.limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
        if len(chunk) > room:
            self.truncated = True
        self._tail += chunk
        if len(self._tail) > _TAIL_BYTES:
            del self._tail[: len(self._tail) - _TAIL_BYTES]
        return self.truncated

    @property
    def data(self) -> bytes:
        return bytes(self._head)

    @property
    def tail(self) -> bytes:
        return bytes(self._tail)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def looks_like_memory_exhaustion(stderr_tail: bytes) -> bool:
    return bool(_MEMORY_HINT.search(stderr_tail))


# Signal numbers (Linux): shells and bwrap report death by signal N as exit 128+N.
SIGKILL = 9
SIGSEGV = 11
SIGABRT = 6
SIGXCPU = 24
SIGXFSZ = 25


def classify(
    *,
    exit_code: int | None,
    signal: int | None,
    deadline_hit: bool,
    output_limited: bool,
    stderr_tail: bytes,
    duration: float,
    cpu_seconds: int,
    oom_killed: bool = False,
) -> str:
    """Map how a run ended onto one of :data:`OUTCOMES` (never ``error``)."""
    if output_limited:
        return "output_limit"
    if deadline_hit:
        return "timeout"
    if oom_killed:
        return "memory"
    if signal is not None:
        if signal == SIGXCPU:
            return "timeout"
        if signal == SIGKILL and duration >= cpu_seconds:
            # The hard RLIMIT_CPU is one second above the soft one: a process that
            # ignored SIGXCPU is SIGKILLed. Wall time >= CPU time, so a SIGKILL
            # before cpu_seconds of wall time cannot come from the CPU limit.
            return "timeout"
        if signal in (SIGSEGV, SIGABRT, SIGKILL) and looks_like_memory_exhaustion(stderr_tail):
            return "memory"
        return "killed"
    if exit_code == 0:
        return "ok"
    if looks_like_memory_exhaustion(stderr_tail):
        return "memory"
    return "failed"


def finished_outcome(backend: str, *, exit_code: int | None, signal: int | None, deadline_hit: bool,
                     output_limited: bool, out: OutputCapture, err: OutputCapture, duration: float,
                     cpu_seconds: int, oom_killed: bool = False) -> RunOutcome:
    """The outcome of a run that ended (by itself or killed by us), the same for every backend."""
    outcome = classify(exit_code=exit_code, signal=signal, deadline_hit=deadline_hit,
                       output_limited=output_limited, stderr_tail=err.tail, duration=duration,
                       cpu_seconds=cpu_seconds, oom_killed=oom_killed)
    return RunOutcome(
        outcome=outcome,
        exit_code=None if (deadline_hit or output_limited) else exit_code,
        stdout=out.text(),
        stderr=err.text(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        duration_seconds=duration,
        backend=backend,
    )

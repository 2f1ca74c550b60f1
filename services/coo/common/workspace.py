"""A mission's workspace: the files its tasks have produced, as a sorted list of ``File``.

Pure functions shared by the orchestrator (which owns the workspace: applies each attempt's
change within limits, commits it when the task passes) and the agent (which shows it to the
engineer within a token budget and the change to QA as a diff). Nothing here does I/O.
"""

from __future__ import annotations

import difflib
import io
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coo.v1 import common_pb2

File = common_pb2.File


class WorkspaceError(ValueError):
    """A change the workspace refuses: a bad file name or a limit passed. The message says which."""


@dataclass(frozen=True)
class WorkspaceLimits:
    """Bounds of one workspace. The mission record holds the workspace and the current candidate,
    and a bus message carries at most one of each, so the defaults keep both well inside the
    bus's 1 MB payload (``COO_MAX_PAYLOAD_BYTES``)."""

    max_files: int = 200
    max_bytes: int = 256_000
    max_file_bytes: int = 128_000


def check_file_name(name: str) -> str:
    """A bare file name: no path separators, no ``..``, no NUL, at most 255 characters."""
    if not name or name in (".", ".."):
        raise WorkspaceError("file name must not be empty, '.' or '..'")
    if "/" in name or "\\" in name:
        raise WorkspaceError(f"file name {name!r} must not contain a path separator")
    if ".." in name:
        raise WorkspaceError(f"file name {name!r} must not contain '..'")
    if "\x00" in name or len(name) > 255:
        raise WorkspaceError(f"file name {name[:40]!r} is not a valid file name")
    return name


def size_of(files: Iterable[File]) -> int:
    return sum(len(f.content.encode("utf-8")) for f in files)


def by_name(files: Iterable[File]) -> dict[str, str]:
    return {f.name: f.content for f in files}


def apply(base: Sequence[File], changed: Sequence[File], deleted: Sequence[str],
          limits: WorkspaceLimits) -> tuple[list[File], list[str], list[str]]:
    """``(workspace after the change, names changed, names deleted)``.

    A changed file that is identical to the base's is not a change; deleting a file the
    workspace does not hold is ignored. Raises :class:`WorkspaceError` with the limit passed.
    """
    files = by_name(base)
    really_changed: list[str] = []
    seen: set[str] = set()
    for f in changed:
        check_file_name(f.name)
        if f.name in seen:
            raise WorkspaceError(f"file {f.name!r} is given twice")
        seen.add(f.name)
        size = len(f.content.encode("utf-8"))
        if size > limits.max_file_bytes:
            raise WorkspaceError(f"file {f.name!r} has {size} bytes, more than the limit of "
                                 f"{limits.max_file_bytes} bytes per file")
        if files.get(f.name) != f.content:
            really_changed.append(f.name)
        files[f.name] = f.content
    really_deleted = []
    for name in deleted:
        check_file_name(name)
        if name in seen:
            raise WorkspaceError(f"file {name!r} is both changed and deleted")
        if files.pop(name, None) is not None:
            really_deleted.append(name)
    after = [File(name=n, content=files[n]) for n in sorted(files)]
    if len(after) > limits.max_files:
        raise WorkspaceError(f"the workspace would hold {len(after)} files, more than the limit of "
                             f"{limits.max_files}")
    total = size_of(after)
    if total > limits.max_bytes:
        raise WorkspaceError(f"the workspace would hold {total} bytes, more than the limit of "
                             f"{limits.max_bytes} bytes")
    return after, sorted(really_changed), sorted(really_deleted)


def changes(before: Sequence[File], after: Sequence[File]) -> tuple[list[File], list[str]]:
    """``(files added or changed, names deleted)`` from ``before`` to ``after``."""
    old = by_name(before)
    new = by_name(after)
    changed = [File(name=n, content=c) for n, c in sorted(new.items()) if old.get(n) != c]
    deleted = sorted(n for n in old if n not in new)
    return changed, deleted


def unified_diff(before: Sequence[File], after: Sequence[File]) -> str:
    """A unified diff of the whole change (``a/`` before, ``b/`` after)."""
    old = by_name(before)
    new = by_name(after)
    parts: list[str] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        parts.extend(difflib.unified_diff(
            (a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
            fromfile=f"a/{name}" if a is not None else "/dev/null",
            tofile=f"b/{name}" if b is not None else "/dev/null"))
        if parts and not parts[-1].endswith("\n"):
            parts[-1] += "\n"
    return "".join(parts)


def tarball(files: Sequence[File], root: str) -> bytes:
    """The files as a gzip-compressed tar under ``root/`` (mode 0644, the same mtime for all)."""
    buf = io.BytesIO()
    mtime = int(time.time())
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in files:
            data = f.content.encode("utf-8")
            info = tarfile.TarInfo(f"{root}/{check_file_name(f.name)}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()

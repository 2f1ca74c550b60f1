"""The Docker backend: production runs, one throw-away container per run.

Every security setting lives in :func:`container_config`, a pure function the unit
tests check field by field. A run:

1. ``containers.create(**container_config(spec))``: non-root ``sandbox`` user, no
   network, read-only root, ``/work`` a size-capped tmpfs, all capabilities dropped,
   ``no-new-privileges``, pids/memory(=swap)/CPU limits, ulimits, empty environment.
2. ``put_archive("/input", tar)``: the artifacts, as a tar built in memory, go into a
   per-run anonymous volume at ``/input`` before the start. (Docker refuses
   ``put_archive`` into a read-only root filesystem and never writes into a tmpfs
   mount, so the files cannot be put into ``/work`` directly; files and directory
   are root-owned, so the sandbox user can read but not change them.)
3. attach (stdout and stderr, demultiplexed), then start: the entrypoint copies
   ``/input`` into the tmpfs ``/work`` and ``exec``s the command.
4. Our own wall-clock deadline: the container is killed when it passes, or when
   either stream passes ``max_output_bytes``.
5. ``finally``: the container and its anonymous volume are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tarfile
import threading
import time
from typing import Any

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

NAME = "docker"
DEFAULT_IMAGE = "coo-sandbox:latest"
DEFAULT_USER = "sandbox"
WORK_DIR = "/work"
INPUT_DIR = "/input"
LABEL = "coo.sandbox.run_id"
#: CPUs a run may use (nano_cpus = CPUS * 1e9); COO_SANDBOX_CPUS overrides.
DEFAULT_CPUS = 1.0
#: Copies the artifacts into the tmpfs, then becomes the command (argv after "$0").
LOADER = f'cp -R {INPUT_DIR}/. {WORK_DIR}/ && exec "$@"'
PING_TIMEOUT_SECONDS = 2


def _cpus() -> float:
    raw = os.environ.get("COO_SANDBOX_CPUS", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_CPUS
    except ValueError:
        value = DEFAULT_CPUS
    return min(max(value, 0.01), 64.0)


def container_config(
    spec: RunSpec, *, image: str | None = None, user: str | None = None
) -> dict[str, Any]:
    """The exact keyword arguments of ``client.containers.create`` for a run."""
    from docker.types import LogConfig, Mount, Ulimit

    mib = 1024 * 1024
    memory = f"{spec.memory_mb}m"
    return {
        "image": image or os.environ.get("COO_SANDBOX_IMAGE") or DEFAULT_IMAGE,
        "entrypoint": ["/bin/sh", "-c", LOADER, "coo-sandbox"],
        "command": list(spec.command),
        "user": user or os.environ.get("COO_SANDBOX_USER") or DEFAULT_USER,
        "working_dir": WORK_DIR,
        "environment": {},
        "hostname": "sandbox",
        "network_mode": "none",
        "read_only": True,
        # nr_inodes: the work dir caps files as well as bytes (each inode is kernel memory)
        "tmpfs": {WORK_DIR: f"size={spec.tmpfs_mb}m,nr_inodes={spec.max_inodes},mode=1777"},
        "mounts": [
            Mount(target=INPUT_DIR, source=None, type="volume", labels={LABEL: spec.run_id})
        ],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "pids_limit": spec.max_processes,
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(_cpus() * 1_000_000_000),
        "ulimits": [
            Ulimit(name="cpu", soft=spec.cpu_seconds, hard=spec.cpu_seconds + 1),
            Ulimit(name="fsize", soft=spec.max_file_mb * mib, hard=spec.max_file_mb * mib),
            Ulimit(name="nofile", soft=NOFILE_LIMIT, hard=NOFILE_LIMIT),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "init": True,
        "stdin_open": False,
        "tty": False,
        "labels": {LABEL: spec.run_id},
        # Output is read from the attach stream; the daemon's own copy stays small.
        "log_config": LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
    }


def build_archive(files: dict[str, str]) -> bytes:
    """A tar of the (already validated) artifacts: root-owned, mode 0644."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            data = content.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cause(exc: BaseException) -> str:
    """What went wrong, in the engine's words where it gave some (``APIError.explanation``)."""
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", errors="replace")
    text = str(explanation or exc).strip()
    return text or type(exc).__name__


class DockerBackend:
    name = NAME

    def __init__(self, *, image: str | None = None, user: str | None = None) -> None:
        self.image = image or os.environ.get("COO_SANDBOX_IMAGE") or DEFAULT_IMAGE
        self.user = user or os.environ.get("COO_SANDBOX_USER") or DEFAULT_USER

    def _client(self, timeout: float):
        import docker

        return docker.from_env(timeout=max(int(timeout), 1))

    def available(self) -> tuple[bool, str]:
        """An engine answers a ping within 2 s and has the sandbox image."""
        try:
            import docker  # noqa: F401 - only whether the package is there
        except ImportError:
            return False, "the docker Python package is not installed"
        client = None
        try:
            client = self._client(PING_TIMEOUT_SECONDS)
            client.ping()
        except Exception as exc:  # noqa: BLE001 - DockerException, requests errors, socket errors: all "no engine"
            return False, f"no Docker engine answers: {exc}"
        try:
            client.images.get(self.image)
        except Exception as exc:  # noqa: BLE001 - ImageNotFound or an engine error: reported, not raised
            return False, (
                f"Docker engine answers but image {self.image!r} is missing ({exc}); "
                f"build it with: docker build -t {self.image} sandbox/"
            )
        finally:
            with contextlib.suppress(Exception):
                client.close()
        return True, f"Docker engine answers; image {self.image}"

    async def run(self, spec: RunSpec) -> RunOutcome:
        try:
            validate_spec(spec)
        except InvalidArtifact as exc:
            return error_outcome(NAME, str(exc))
        try:
            # Attach streams read with the client timeout: keep it above the deadline.
            client = await asyncio.to_thread(self._client, spec.timeout_seconds + 60)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is the run's error outcome
            return error_outcome(NAME, f"no Docker engine answers: {_cause(exc)}")
        container = None
        started = time.monotonic()
        try:
            cfg = container_config(spec, image=self.image, user=self.user)
            try:
                container = await asyncio.to_thread(client.containers.create, **cfg)
                ok = await asyncio.to_thread(
                    container.put_archive, INPUT_DIR, build_archive(spec.files)
                )
                if not ok:
                    return error_outcome(NAME, "copying the files into the container failed")
                stream = await asyncio.to_thread(
                    container.attach,
                    stdout=True, stderr=True, stream=True, logs=True, demux=True,
                )
                started = time.monotonic()
                await asyncio.to_thread(container.start)
            except Exception as exc:  # noqa: BLE001 - the engine's refusal is the run's error outcome
                # the engine's own words (e.g. "unable to find user sandbox: no matching entries
                # in passwd file"): they travel to the result, the mission, the log line and the span
                return error_outcome(
                    NAME, f"cannot start the container (image {self.image}, user {self.user}): {_cause(exc)}")
            return await self._supervise(spec, container, stream, started)
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(container.remove, force=True, v=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)

    async def _supervise(self, spec: RunSpec, container, stream, started: float) -> RunOutcome:
        out = OutputCapture(spec.max_output_bytes)
        err = OutputCapture(spec.max_output_bytes)
        over = threading.Event()

        def pump() -> None:
            try:
                for chunk_out, chunk_err in stream:
                    if chunk_out and out.feed(chunk_out):
                        over.set()
                        return
                    if chunk_err and err.feed(chunk_err):
                        over.set()
                        return
            except Exception:  # noqa: BLE001 - the stream ends with an error when the container is killed
                return
            finally:
                with contextlib.suppress(Exception):
                    stream.close()

        def kill() -> None:
            with contextlib.suppress(Exception):
                container.kill()

        pump_task = asyncio.create_task(asyncio.to_thread(pump))
        wait_task = asyncio.create_task(asyncio.to_thread(container.wait))
        deadline_hit = False
        pending = {wait_task, pump_task}
        while wait_task in pending:
            remaining = spec.timeout_seconds - (time.monotonic() - started)
            if remaining <= 0:
                deadline_hit = True
                break
            _done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if over.is_set():
                break
        if deadline_hit or over.is_set():
            await asyncio.to_thread(kill)
        status: dict = {}
        with contextlib.suppress(Exception):
            status = await asyncio.wait_for(asyncio.shield(wait_task), 30) or {}
        duration = time.monotonic() - started
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(pump_task), 5)
        oom_killed = False
        with contextlib.suppress(Exception):
            await asyncio.to_thread(container.reload)
            oom_killed = bool(container.attrs["State"].get("OOMKilled"))

        output_limited = over.is_set()
        exit_code = status.get("StatusCode") if isinstance(status, dict) else None
        signal_no = None
        if isinstance(exit_code, int) and 128 < exit_code <= 128 + 64:
            signal_no = exit_code - 128
        if exit_code is None and not (deadline_hit or output_limited):
            return error_outcome(NAME, f"the container ended without a status: {status!r}",
                                 duration)
        return finished_outcome(
            NAME, exit_code=exit_code, signal=signal_no, deadline_hit=deadline_hit,
            output_limited=output_limited, out=out, err=err, duration=duration,
            cpu_seconds=spec.cpu_seconds, oom_killed=oom_killed,
        )

"""Types, enforced: mypy finds nothing in services/coo under ``[tool.mypy]`` of pyproject.toml.

Every module is checked (bodies of unannotated functions too, no implicit Optional, no stale
``# type: ignore``), ``coo.common`` with the flags of ``--strict``; the protobuf contracts are read
through their generated stubs (``coo/v1/*.pyi``). The incremental cache lives outside the repo
(``~/.cache/coo/mypy``, or ``MYPY_CACHE_DIR``): a fresh clone's first run checks everything (about
15-20 s on two cores), the next ones only what changed (1-2 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_type_error():
    mypy = Path(sys.executable).with_name("mypy")
    assert mypy.exists(), f"{mypy} is missing: install the dev dependencies (make setup)"
    # no arguments: files, flags and the cache dir all come from pyproject.toml
    res = subprocess.run([str(mypy)], check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"mypy (pyproject.toml [tool.mypy]) found type errors:\n{res.stdout}{res.stderr}"

"""The layers of services/coo, enforced: the import-linter contracts of pyproject.toml hold.

`lint-imports` reads ``[tool.importlinter]``: the CLI over the local stack over the services over
``coo.common`` over the protobuf contracts, the services independent of each other (but for the
budget client), and no import cycle in any package. Its report names every import that breaks one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} is missing: install the dev dependencies (make setup)"
    res = subprocess.run([str(lint_imports), "--no-cache"], check=False, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, f"import contracts broken (pyproject.toml):\n{res.stdout}{res.stderr}"
    assert "0 broken" in res.stdout, res.stdout

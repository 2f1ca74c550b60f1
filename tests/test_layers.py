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


def test_each_service_exports_its_own_metrics_and_the_bus_only():
    """A service process registers the bus's metrics and its own: never another service's (an
    unlabelled metric of another service would export a constant 0 from every process)."""
    script = """
import importlib, json, sys
from prometheus_client import REGISTRY
importlib.import_module(f"coo.{sys.argv[1]}.service")
print(json.dumps(sorted({m.name for m in REGISTRY.collect() if m.name.startswith(("coo_", "gen_ai_"))})))
"""
    import json

    prefixes = {"orchestrator": ("coo_mission", "coo_dlq", "coo_qa_", "coo_backpressure"),
                "agent": ("coo_llm_", "coo_task_", "gen_ai_"), "budget": ("coo_budget_",), "sandbox": ("coo_sandbox_",)}
    for service, own in prefixes.items():
        res = subprocess.run([sys.executable, "-c", script, service], check=True, cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        names = json.loads(res.stdout.strip().splitlines()[-1])
        foreign = [n for n in names if not n.startswith(("coo_bus_", *own))]
        assert not foreign, f"{service} registers {foreign}"
        assert any(n.startswith(own) for n in names), f"{service} registers none of its own metrics: {names}"

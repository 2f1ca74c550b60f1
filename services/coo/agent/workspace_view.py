"""What the engineer and QA see of a mission's workspace, within a token budget.

A small workspace is shown whole. A larger one is shown as a listing of every file with its
size plus the contents of the files the task touches (named in the task, its feedback, or
changed by the previous attempt), as many as fit; the view says what it left out, so nothing is
cut silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from coo.agent.llm import estimate_text_tokens
from coo.common import workspace
from coo.v1 import common_pb2, mission_pb2

TASK_STATUS = {mission_pb2.TASK_STATUS_PENDING: "pending", mission_pb2.TASK_STATUS_IN_PROGRESS: "in_progress",
               mission_pb2.TASK_STATUS_PASSED: "passed", mission_pb2.TASK_STATUS_FAILED: "failed"}

# Per-file overhead of the JSON around a file in the prompt, in tokens.
_FILE_OVERHEAD_TOKENS = 8


def listing(files: Sequence[common_pb2.File]) -> list[dict[str, Any]]:
    return [{"name": f.name, "bytes": len(f.content.encode("utf-8"))} for f in files]


def _mentioned(names: Sequence[str], texts: Sequence[str]) -> list[str]:
    """Workspace names that appear in any of the texts, as a file name or a module name."""
    blob = "\n".join(texts)
    out = []
    for name in names:
        stem = name.rsplit(".", 1)[0]
        if name in blob or (stem and re.search(rf"\b{re.escape(stem)}\b", blob)):
            out.append(name)
    return out


def engineer_view(files: Sequence[common_pb2.File], *, task_texts: Sequence[str], touched: Sequence[str],
                  budget_tokens: int) -> dict[str, Any]:
    """``{"files": [...], "listing": [...], "complete": bool, "note": str}``."""
    cost = {f.name: estimate_text_tokens(f.content) + _FILE_OVERHEAD_TOKENS for f in files}
    view: dict[str, Any] = {"files": [], "listing": listing(files), "complete": True, "note": ""}
    if sum(cost.values()) <= budget_tokens:
        view["files"] = [{"name": f.name, "content": f.content} for f in files]
        return view
    names = [f.name for f in files]
    priority = list(dict.fromkeys([n for n in touched if n in cost] + _mentioned(names, task_texts)))
    contents = workspace.by_name(files)
    used, shown = 0, []
    for name in priority:
        if used + cost[name] <= budget_tokens:
            shown.append(name)
            used += cost[name]
    view["files"] = [{"name": n, "content": contents[n]} for n in sorted(shown)]
    view["complete"] = False
    left_out = len(files) - len(shown)
    view["note"] = (f"The workspace holds {len(files)} files ({workspace.size_of(files)} bytes), more than "
                    f"this prompt's budget of about {budget_tokens} tokens: 'files' has the {len(shown)} the "
                    f"task touches, 'listing' names all of them; the other {left_out} exist unchanged and "
                    "stay as they are unless you change or delete them.")
    return view


def plan_view(plan: Sequence[mission_pb2.PlannedTask], current: int) -> list[dict[str, Any]]:
    return [{"number": i + 1, "title": t.title, "status": TASK_STATUS.get(t.status, "pending"),
             **({"current": True} if i + 1 == current else {})} for i, t in enumerate(plan)]

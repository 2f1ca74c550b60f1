"""Deterministic answers for the three agent roles (pure functions, no I/O).

Contracts (the structured input is the last fenced ```json block of the last user message;
the answer is the assistant message's content as a JSON string). Fields marked optional were
added later and are read tolerantly: an agent that omits them still gets an answer.

* ``coo_plan``          in  ``{"goal": str, "max_tasks": int}``
                        out ``{"tasks": [{"title": str, "description": str}]}``
* ``engineer_artifact`` in  ``{"goal": str, "task": {"title", "description"}, "attempt": int,
                        "feedback": str | null}`` and, optional, ``"plan": [{"title",
                        "status"}]``, ``"task_number": int`` (1-based), ``"workspace":
                        {"files": [{"name", "content"}], "listing": [{"name", "bytes"}],
                        "complete": bool}``, ``"previous_changes": [{"name", "content"}]``
                        out ``{"files": [{"name", "content"}], "delete": [str],
                        "command": [str], "notes": str}`` — ``files`` are the files the task
                        adds or changes, never the earlier tasks' files (see ``engineer``)
* ``qa_verdict``        in  ``{"goal", "task", "command", "sandbox": {"outcome", "exit_code",
                        "stdout", "stderr"}}`` and, optional, ``"files"`` (added or changed),
                        ``"deleted": [str]``, ``"diff": str``, ``"workspace": [{"name",
                        "bytes"}]``
                        out ``{"passed": bool, "feedback": str, "score": float}``

Which scenario changes which role is said in ``scenarios``; the engineer and QA rules are in
``engineer`` and ``qa``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import catalog
from .engineer import engineer
from .inputs import InputError, clean_secret, get_int, get_str, one_line, padding
from .qa import judge, qa
from .scenarios import Scenario, strip_markers

__all__ = ["InputError", "answer", "judge", "pad_text", "pad_to", "plain_text", "plan"]

SCHEMA_ROLES = {"coo_plan": "coo", "engineer_artifact": "engineer", "qa_verdict": "qa"}
ROLE_SCHEMAS = {role: schema for schema, role in SCHEMA_ROLES.items()}
#: The text field ``long`` pads in each answer.
PADDED_FIELD = {"engineer_artifact": "notes", "qa_verdict": "feedback"}

DEFAULT_MAX_TASKS = 5
REFUSAL = "I'm sorry, but I can't help with that request."


def generic_title(goal: str) -> str:
    short = one_line(strip_markers(goal), 60) or "the goal"
    return f"{catalog.GENERIC.title} for: {short}"


def plan(inp: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    goal = get_str(inp, "goal")
    max_tasks = get_int(inp, "max_tasks", DEFAULT_MAX_TASKS, 1)
    clean_goal = strip_markers(goal)
    items = catalog.match_all(clean_goal)[:max_tasks]
    if items:
        tasks = [{"title": it.title, "description": it.description()} for it in items]
    else:
        tasks = [{
            "title": generic_title(goal),
            "description": f"{catalog.GENERIC.description()} Goal: {clean_goal}",
        }]
    if sc.echo_secret is not None:
        secret = clean_secret(sc.echo_secret)
        for task in tasks:
            task["description"] += f" Debug: the provider key in use is {secret}."
    if sc.expensive is not None:
        tasks[-1]["description"] += " " + padding()
    return {"tasks": tasks}


ANSWERERS: dict[str, Callable[[dict[str, Any], Scenario], dict[str, Any]]] = {
    "coo_plan": plan, "engineer_artifact": engineer, "qa_verdict": qa,
}


def answer(schema: str, inp: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    return ANSWERERS[schema](inp, sc)


def _filler(missing: int) -> str:
    """``missing`` characters: a space, then padding."""
    return " " + padding(missing - 1, tag="mock:long") if missing > 0 else ""


def pad_text(text: str, chars: int) -> str:
    """``text`` padded to ``chars`` characters, if it is shorter."""
    return text + _filler(chars - len(text))


def pad_to(schema: str, ans: dict[str, Any], chars: int) -> dict[str, Any]:
    """``ans`` with its free-text field (notes, feedback, the last task's description) padded
    so that its JSON (as the server sends it) is ``chars`` characters long, if it is shorter."""
    filler = _filler(chars - len(json.dumps(ans, ensure_ascii=False)))
    if schema == "coo_plan":
        ans["tasks"][-1]["description"] += filler
    else:
        ans[PADDED_FIELD[schema]] += filler
    return ans


def plain_text() -> str:
    """What mockllm says to a request with no recognisable role."""
    return (
        "Hello from mockllm. Ask with response_format json_schema named coo_plan, "
        "engineer_artifact or qa_verdict (or a system message containing 'role: coo', "
        "'role: engineer' or 'role: qa') and put the input in a ```json block of the last "
        "user message to get a structured answer."
    )

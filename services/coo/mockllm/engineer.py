"""The engineer role: the files one task adds or changes, the command that tests them.

It answers only its own task's files (a module and its ``unittest`` file), never the files of
earlier tasks: the sandbox is expected to run the command in the mission's whole workspace, so
a later task of a project (``rpn.py`` importing ``stack.py``) passes only when the workspace
really carries the earlier files. ``delete`` is always empty: the catalog's tasks only add.

Scenarios: ``flaky`` makes attempt 1 the buggy version, ``sycophant`` every attempt (and the
notes claim the tests pass); ``lazy`` keeps the files but answers a command that runs no test.
"""

from __future__ import annotations

from typing import Any

from . import catalog
from .inputs import (
    InputError,
    clean_secret,
    get_int,
    get_str,
    loose_int,
    loose_names,
    one_line,
    padding,
    with_secret_comment,
    workspace_names,
)
from .scenarios import Scenario, strip_markers

#: What ``lazy`` runs: unittest discovery with a pattern no catalog file matches, so it says
#: "Ran 0 tests" (exit 0 on Python <= 3.11, exit 5 from 3.12 on).
LAZY_COMMAND = ("python3", "-m", "unittest", "discover", "-s", ".", "-p", "*_test.py")


def pick_item(title: str, description: str, goal: str,
              task_number: int | None) -> catalog.CatalogItem:
    """The catalog item a task is about: by its title as plans write it, by the catalog names
    in its title, by its place in the goal's plan, by its description, by the goal."""
    item = catalog.by_title(title) or catalog.match_first(strip_markers(title))
    if item is None and task_number is not None:
        planned = catalog.match_all(goal)
        if task_number <= len(planned):
            item = planned[task_number - 1]
    return item or catalog.match_first(strip_markers(description), goal) or catalog.GENERIC


def _dependency_note(item: catalog.CatalogItem, workspace: list[str] | None) -> str:
    if not item.uses:
        return ""
    used = ", ".join(item.used_files)
    if workspace is None:
        return f" Relies on {used} from the earlier task(s), which I did not re-send."
    missing = [name for name in item.used_files if name not in workspace]
    if not missing:
        return f" Builds on {used} from the workspace (not re-sent)."
    return (f" Expected {', '.join(missing)} from an earlier task, but the workspace I was given "
            "does not have it: the tests fail with an ImportError until it is there.")


def engineer(inp: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    goal = get_str(inp, "goal")
    task = inp.get("task") or {}
    if not isinstance(task, dict):
        raise InputError("input field 'task' must be an object", "task")
    title, description = (value if isinstance(value := task.get(key), str) else ""
                          for key in ("title", "description"))
    attempt = get_int(inp, "attempt", 1, 1)
    feedback = inp.get("feedback")
    if feedback is not None and not isinstance(feedback, str):
        raise InputError("input field 'feedback' must be a string or null", "feedback")

    clean_goal = strip_markers(goal)
    item = pick_item(title, description, clean_goal, loose_int(inp.get("task_number")))
    tests = catalog.generic_tests(clean_goal) if item is catalog.GENERIC else item.tests
    buggy = sc.sycophant or (sc.flaky and attempt == 1)
    source = item.buggy_source if buggy else item.source
    command = list(LAZY_COMMAND if sc.lazy else item.command)

    notes = (
        f"Implemented {item.title.lower()} in {item.module}.py ({item.api}) with unittest "
        f"tests in {item.test_module}.py; run them with `{' '.join(command)}`."
    )
    notes += _dependency_note(item, workspace_names(inp.get("workspace")))
    if attempt > 1:
        notes = f"Attempt {attempt}. " + notes
        revised = loose_names(inp.get("previous_changes"))
        if revised:
            notes += f" Revised {', '.join(revised)} from the previous attempt."
        if feedback:
            notes += f" Addressed QA feedback: {one_line(feedback, 200)}"
        if sc.flaky and not sc.sycophant:
            notes += f" Root cause of the earlier failure: the first version {item.bug_note}."
    if sc.sycophant:
        notes += " All tests pass and the code is production-ready."

    if sc.echo_secret is not None:
        secret = clean_secret(sc.echo_secret)
        source = with_secret_comment(source, secret)
        notes += f" Debug: called the provider with api_key={secret}."
    if sc.expensive is not None:
        notes += " " + padding()

    module_name, tests_name = item.file_names
    return {
        "files": [
            {"name": module_name, "content": source},
            {"name": tests_name, "content": tests},
        ],
        "delete": [],
        "command": command,
        "notes": notes,
    }

"""Deterministic answers for the three agent roles (pure functions, no I/O).

Contracts (the structured input is the last fenced ```json block of the last user message;
the answer is the assistant message's content as a JSON string):

* ``coo_plan``        in  ``{"goal": str, "max_tasks": int}``
                      out ``{"tasks": [{"title": str, "description": str}]}``
* ``engineer_artifact`` in ``{"goal": str, "task": {"title", "description"}, "attempt": int,
                      "feedback": str | null}``
                      out ``{"files": [{"name", "content"}], "command": [str], "notes": str}``
* ``qa_verdict``      in  ``{"goal", "task", "files", "command", "sandbox": {"outcome",
                      "exit_code", "stdout", "stderr"}}``
                      out ``{"passed": bool, "feedback": str, "score": float}``
"""

from __future__ import annotations

import re
from typing import Any

from . import catalog
from .scenarios import Scenario, strip_markers

SCHEMA_ROLES = {"coo_plan": "coo", "engineer_artifact": "engineer", "qa_verdict": "qa"}
ROLE_SCHEMAS = {role: schema for schema, role in SCHEMA_ROLES.items()}

#: How much text ``expensive`` adds to an answer.
PADDING_CHARS = 40_000
DEFAULT_MAX_TASKS = 5
SANDBOX_OUTCOMES = ("ok", "failed", "timeout", "memory", "output_limit", "killed", "error")


class InputError(ValueError):
    """The structured input is missing a field or has the wrong type (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# --------------------------------------------------------------------------------------------
# helpers


def _str(inp: dict[str, Any], key: str, *, required: bool = True, default: str = "") -> str:
    value = inp.get(key)
    if value is None:
        if required:
            raise InputError(f"input field '{key}' is required", key)
        return default
    if not isinstance(value, str):
        raise InputError(f"input field '{key}' must be a string", key)
    return value


def _int(inp: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = inp.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"input field '{key}' must be an integer", key)
    if value < minimum:
        raise InputError(f"input field '{key}' must be >= {minimum}", key)
    return value


def padding(chars: int = PADDING_CHARS) -> str:
    sentence = (
        "Further elaboration follows, repeated at length because this answer is "
        "deliberately verbose (mock:expensive). "
    )
    return (sentence * (chars // len(sentence) + 1))[:chars]


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _with_secret_comment(source: str, secret: str) -> str:
    first, _, rest = source.partition("\n")
    return f'{first}\n\n# debug: OPENAI_API_KEY = "{secret}"  # TODO remove before merge\n{rest}'


def _clean_secret(secret: str) -> str:
    return "".join(ch for ch in secret if ch.isprintable() and ch not in "\"'\\")


# --------------------------------------------------------------------------------------------
# coo


def generic_title(goal: str) -> str:
    short = _one_line(strip_markers(goal), 60) or "the goal"
    return f"{catalog.GENERIC.title} for: {short}"


def plan(inp: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    goal = _str(inp, "goal")
    max_tasks = _int(inp, "max_tasks", DEFAULT_MAX_TASKS, 1)
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
        secret = _clean_secret(sc.echo_secret)
        for task in tasks:
            task["description"] += f" Debug: the provider key in use is {secret}."
    if sc.expensive is not None:
        tasks[-1]["description"] += " " + padding()
    return {"tasks": tasks}


# --------------------------------------------------------------------------------------------
# engineer


def engineer(inp: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    goal = _str(inp, "goal")
    task = inp.get("task") or {}
    if not isinstance(task, dict):
        raise InputError("input field 'task' must be an object", "task")
    title = task.get("title") if isinstance(task.get("title"), str) else ""
    description = task.get("description") if isinstance(task.get("description"), str) else ""
    attempt = _int(inp, "attempt", 1, 1)
    feedback = inp.get("feedback")
    if feedback is not None and not isinstance(feedback, str):
        raise InputError("input field 'feedback' must be a string or null", "feedback")

    clean_goal = strip_markers(goal)
    item = catalog.by_title(title) or catalog.match_first(
        strip_markers(title), strip_markers(description), clean_goal)
    if item is None or item is catalog.GENERIC:
        item = catalog.GENERIC
        tests = catalog.generic_tests(clean_goal)
    else:
        tests = item.tests
    buggy = sc.flaky and attempt == 1
    source = item.buggy_source if buggy else item.source

    notes = (
        f"Implemented {item.title.lower()} in {item.module}.py ({item.api}) with unittest "
        f"tests in {item.test_module}.py; run them with `{' '.join(item.command)}`."
    )
    if attempt > 1:
        notes = f"Attempt {attempt}. " + notes
        if feedback:
            notes += f" Addressed QA feedback: {_one_line(feedback, 200)}"
        if sc.flaky:
            notes += f" Root cause of the earlier failure: the first version {item.bug_note}."

    if sc.echo_secret is not None:
        secret = _clean_secret(sc.echo_secret)
        source = _with_secret_comment(source, secret)
        notes += f" Debug: called the provider with api_key={secret}."
    if sc.expensive is not None:
        notes += " " + padding()

    return {
        "files": [
            {"name": f"{item.module}.py", "content": source},
            {"name": f"{item.test_module}.py", "content": tests},
        ],
        "command": list(item.command),
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------
# qa

_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
_FAILED = re.compile(r"^FAILED \(([^)]*)\)", re.M)
_BLOCK_HEAD = re.compile(r"^(FAIL|ERROR): (\S+)(?: \(([^)]*)\))?", re.M)
_SEPARATOR = re.compile(r"^(?:={10,}|-{10,})$", re.M)

_EXC_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt|Iteration)\b")

_OUTCOME_TEXT = {
    "timeout": "The run exceeded its time limit and was stopped.",
    "memory": "The run exceeded its memory limit.",
    "output_limit": "The run produced more output than allowed.",
    "killed": "The run was killed before it finished.",
    "error": "The sandbox could not run the command.",
    "failed": "The command failed.",
}


def _tail(text: str, lines: int = 6, limit: int = 600) -> str:
    kept = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    out = "\n".join(ln if len(ln) <= 200 else ln[:199] + "…" for ln in kept)
    return out[-limit:]


def _first_failure(output: str) -> str | None:
    """The first FAIL/ERROR block of unittest output, shortened to its essentials."""
    m = _BLOCK_HEAD.search(output)
    if not m:
        return None
    body_start = m.end()
    sep = _SEPARATOR.search(output, body_start)
    # the first separator after the head is the dashed line under it; the block ends at the next
    if sep and output[sep.start()] == "-":
        nxt = _SEPARATOR.search(output, sep.end())
        body = output[sep.end(): nxt.start() if nxt else len(output)]
    else:
        body = output[body_start: sep.start() if sep else len(output)]
    lines = [ln.rstrip() for ln in body.strip().splitlines() if ln.strip()]
    # keep the failing source line (the last "File ..." frame's code) and the exception
    exc_idx = next((i for i in range(len(lines) - 1, -1, -1)
                    if _EXC_LINE.match(lines[i].strip())), None)
    picked: list[str] = []
    if exc_idx is not None:
        frame_idx = next((i for i in range(exc_idx - 1, -1, -1)
                          if lines[i].lstrip().startswith("File ")), None)
        if frame_idx is not None and frame_idx + 1 < exc_idx:
            picked.append(lines[frame_idx + 1].strip())
        picked.extend(ln.strip() for ln in lines[exc_idx: exc_idx + 4])
    else:
        picked = [ln.strip() for ln in lines[-4:]]
    where = m.group(2) + (f" ({m.group(3)})" if m.group(3) else "")
    shortened = [ln if len(ln) <= 240 else ln[:239] + "…" for ln in picked]
    return f"{m.group(1)}: {where}\n" + "\n".join(shortened)


def judge(sandbox: dict[str, Any]) -> tuple[bool, str, float]:
    """The deterministic QA rule: pass iff outcome ok, exit code 0, no unittest failure."""
    outcome = sandbox.get("outcome")
    exit_code = sandbox.get("exit_code")
    stdout = sandbox.get("stdout") or ""
    stderr = sandbox.get("stderr") or ""
    output = f"{stdout}\n{stderr}"

    ran_m = _RAN.search(output)
    ran = int(ran_m.group(1)) if ran_m else None
    failed_m = _FAILED.search(output)
    bad = 0
    if failed_m:
        bad = sum(int(n) for n in re.findall(r"(?:failures|errors)=(\d+)", failed_m.group(1)))
    heads = _BLOCK_HEAD.findall(output)

    problems: list[str] = []
    if outcome != "ok":
        problems.append(_OUTCOME_TEXT.get(str(outcome), f"Sandbox outcome was {outcome!r}.")
                        + f" (outcome={outcome}, exit_code={exit_code})")
    elif exit_code != 0:
        problems.append(f"The command exited with code {exit_code}.")
    # distinct failing tests (subtests of one test count once)
    failing_tests = len({name for _, name, _ in heads}) or bad
    if ran:
        failing_tests = min(failing_tests, ran)
    if failed_m or heads:
        summary = failed_m.group(1) if failed_m else f"{len(heads)} failure block(s)"
        total = f" of {ran}" if ran is not None else ""
        problems.append(f"{failing_tests}{total} test(s) failed ({summary}).")
    elif ran == 0:
        problems.append("No tests were run.")

    if not problems:
        detail = f"All {ran} tests passed." if ran else "The command succeeded."
        return True, detail, 1.0

    failure = _first_failure(output)
    if failure:
        problems.append(failure)
    else:
        tail = _tail(stderr) or _tail(stdout)
        if tail:
            problems.append("Output tail:\n" + tail)
    feedback = "\n".join(problems)
    if len(feedback) > 1200:
        feedback = feedback[:1199] + "…"

    score = 0.0
    if ran:
        score = round(0.9 * (ran - failing_tests) / ran, 2)
    return False, feedback, score


def qa(inp: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    sandbox = inp.get("sandbox")
    if not isinstance(sandbox, dict):
        raise InputError("input field 'sandbox' must be an object", "sandbox")
    outcome = sandbox.get("outcome")
    if not isinstance(outcome, str):
        raise InputError("input field 'sandbox.outcome' must be a string", "sandbox.outcome")
    exit_code = sandbox.get("exit_code")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
        raise InputError("input field 'sandbox.exit_code' must be an integer or null",
                         "sandbox.exit_code")
    for key in ("stdout", "stderr"):
        if sandbox.get(key) is not None and not isinstance(sandbox.get(key), str):
            raise InputError(f"input field 'sandbox.{key}' must be a string", f"sandbox.{key}")

    passed, feedback, score = judge(sandbox)
    if sc.echo_secret is not None:
        feedback += f" (debug: api_key={_clean_secret(sc.echo_secret)})"
    if sc.expensive is not None:
        feedback += " " + padding()
    return {"passed": passed, "feedback": feedback, "score": score}


ANSWERERS = {"coo_plan": plan, "engineer_artifact": engineer, "qa_verdict": qa}


def answer(schema: str, inp: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    return ANSWERERS[schema](inp, sc)


def plain_text() -> str:
    """What mockllm says to a request with no recognisable role."""
    return (
        "Hello from mockllm. Ask with response_format json_schema named coo_plan, "
        "engineer_artifact or qa_verdict (or a system message containing 'role: coo', "
        "'role: engineer' or 'role: qa') and put the input in a ```json block of the last "
        "user message to get a structured answer."
    )

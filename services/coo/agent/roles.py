"""The three roles: their prompts, JSON contracts, answer validation and prompt truncation.

Contracts (the structured input is appended to the last user message as a fenced ```json block;
the answer is the assistant message's content, a JSON object), with
``response_format={"type": "json_schema", "json_schema": {"name": SCHEMA, "strict": true, ...}}``:

* ``coo_plan``          in  ``{"goal": str, "max_tasks": int}``
                        out ``{"tasks": [{"title": str, "description": str}]}`` (1..max_tasks)
* ``engineer_artifact`` in  ``{"goal": str, "plan": [{"number", "title", "status", "current"?}],
                        "task": {"title", "description"}, "task_number": int, "attempt": int,
                        "feedback": str | null, "workspace": {"files": [{"name", "content"}],
                        "listing": [{"name", "bytes"}], "complete": bool, "note": str},
                        "previous_changes": [{"name", "content"}]}``
                        out ``{"files": [{"name", "content"}] (added or changed), "delete": [str],
                        "command": [str], "notes": str}``
* ``qa_verdict``        in  ``{"goal", "task": {"title", "description"}, "task_number",
                        "files": [{"name", "content"}] (added or changed), "deleted": [str],
                        "diff": str, "workspace": [{"name", "bytes"}], "command": [str],
                        "sandbox": {"outcome", "exit_code", "stdout", "stderr", "error"}}``
                        out ``{"passed": bool, "feedback": str, "score": float 0..1}``

The workspace is the mission's shared files (every earlier task's output); the engineer answers
only what it adds, changes or deletes, and the command runs in the whole workspace
(:mod:`coo.agent.workspace_view` decides how much of it a prompt shows).

Prompt templates live in ``prompts/<role>.md`` (and ``repair.md``): a line ``<!-- system -->``
starts the system message, a line ``<!-- user -->`` the user message, anything before the first
marker is a comment; ``$name`` placeholders are filled with :class:`string.Template`.

Truncation: when the prompt (estimated at ~4 characters a token, see ``llm``) plus the role's
max output tokens would not fit the model's context window, the variable parts (sandbox
stdout/stderr, file contents, previous files, feedback, task description, goal) are all capped
at the largest common length that fits ("water filling": the longest parts are cut first), each
cut marked in the text as ``[truncated N chars]``.
"""

from __future__ import annotations

import copy
import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from coo.agent import workspace_view
from coo.agent.llm import estimate_prompt_tokens
from coo.agent.settings import AgentSettings
from coo.common import workspace
from coo.v1 import agent_pb2, common_pb2, mission_pb2, sandbox_pb2

# ------------------------------------------------------------------------------- prompts
SYSTEM_MARKER = "<!-- system -->"
USER_MARKER = "<!-- user -->"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: string.Template
    user: string.Template

    def render(self, **values: Any) -> tuple[str, str]:
        return self.system.substitute(values).strip(), self.user.substitute(values).strip()


def parse_template(name: str, text: str) -> PromptTemplate:
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        marker = line.strip()
        if marker == SYSTEM_MARKER:
            current = parts.setdefault("system", [])
        elif marker == USER_MARKER:
            current = parts.setdefault("user", [])
        elif current is not None:
            current.append(line)
    if "user" not in parts:
        raise ValueError(f"prompt template {name!r} has no {USER_MARKER} line")
    return PromptTemplate(name, string.Template("\n".join(parts.get("system", []))),
                          string.Template("\n".join(parts["user"])))


@cache
def load_template(name: str) -> PromptTemplate:
    text = resources.files("coo.agent").joinpath("prompts", f"{name}.md").read_text(encoding="utf-8")
    return parse_template(name, text)


def fenced_json(value: Any) -> str:
    """The structured input as a fenced block. Backticks are escaped (``\\u0060``, still valid JSON)
    so that no string inside can close the fence early."""
    body = json.dumps(value, ensure_ascii=False, indent=2).replace("`", "\\u0060")
    return f"```json\n{body}\n```"


# ------------------------------------------------------------------------------ schemas
def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


_FILE = _object({"name": {"type": "string"}, "content": {"type": "string"}})

SCHEMAS: dict[str, dict[str, Any]] = {
    "coo_plan": _object({
        "tasks": {"type": "array", "items": _object({"title": {"type": "string"},
                                                      "description": {"type": "string"}})},
    }),
    "engineer_artifact": _object({
        "files": {"type": "array", "items": _FILE},
        "delete": {"type": "array", "items": {"type": "string"}},
        "command": {"type": "array", "items": {"type": "string"}},
        "notes": {"type": "string"},
    }),
    "qa_verdict": _object({
        "passed": {"type": "boolean"},
        "feedback": {"type": "string"},
        "score": {"type": "number"},
    }),
}


# ------------------------------------------------------------------- answers (validated)
class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PlanItem(_Answer):
    title: str = Field(min_length=1, max_length=300)
    description: str

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title must not be blank")
        return value.strip()


class Plan(_Answer):
    tasks: list[PlanItem] = Field(min_length=1)

    @field_validator("tasks")
    @classmethod
    def _max_tasks(cls, value: list[PlanItem], info: ValidationInfo) -> list[PlanItem]:
        limit = (info.context or {}).get("max_tasks")
        if limit and len(value) > limit:
            raise ValueError(f"at most {limit} tasks are allowed, got {len(value)}")
        return value


class ArtifactFile(_Answer):
    name: str
    content: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return workspace.check_file_name(value)


class Artifact(_Answer):
    files: list[ArtifactFile]
    delete: list[str] = Field(default_factory=list)
    command: list[str] = Field(min_length=1)
    notes: str = ""

    @field_validator("delete")
    @classmethod
    def _delete(cls, value: list[str]) -> list[str]:
        return [workspace.check_file_name(name) for name in value]

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("command[0] (the program) must not be empty")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Artifact:
        names = [f.name for f in self.files]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate file names: {dup}")
        both = sorted(set(names) & set(self.delete))
        if both:
            raise ValueError(f"files both written and deleted: {both}")
        if not self.files and not self.delete:
            raise ValueError("the answer changes nothing: give the files you add or change (or delete)")
        return self


class QAVerdict(_Answer):
    passed: bool
    feedback: str
    score: float = Field(ge=0.0, le=1.0)


_FENCED = re.compile(r"```[a-zA-Z]*[ \t]*\r?\n(.*?)\r?\n?```", re.DOTALL)
_DECODER = json.JSONDecoder()


def extract_json(text: str) -> Any:
    """The answer's JSON: the whole text, else the first fenced block that parses, else the first
    JSON object in the prose (open models often write a sentence before the object). Raises
    ``ValueError`` (with the whole text's parse error) when there is none."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError as exc:
        first_error = exc
    for block in _FENCED.findall(stripped):
        try:
            return json.loads(block.strip())
        except ValueError:
            continue
    start = stripped.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(stripped, start)
        except ValueError:
            start = stripped.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = stripped.find("{", start + 1)
    raise first_error


def parse_answer(model: type[_Answer], text: str,
                 context: dict[str, Any] | None = None) -> tuple[_Answer | None, str | None]:
    """``(answer, None)`` or ``(None, what is wrong)``; JSON in a fence or after prose is tolerated."""
    if not (text or "").strip():
        return None, "the answer was empty"
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, f"the answer is not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, "the answer must be a JSON object"
    try:
        return model.model_validate(value, context=context or {}), None
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
            problems.append(f"{loc}: {err.get('msg')}")
        message = "; ".join(problems)
        return None, "the answer breaks the schema: " + (message if len(message) <= 800 else message[:799] + "…")


# --------------------------------------------------------------------------- the roles
Path = tuple[Any, ...]


@dataclass(frozen=True)
class RoleSpec:
    name: str
    role: int
    schema_name: str
    answer_model: type[_Answer]
    build_input: Callable[[agent_pb2.AgentTask, AgentSettings], dict[str, Any]]
    trimmable: Callable[[dict[str, Any]], list[tuple[Path, str]]]
    apply: Callable[[Any, agent_pb2.AgentResult], None]
    template_values: Callable[[agent_pb2.AgentTask, AgentSettings], dict[str, Any]] = field(
        default=lambda task, settings: {})

    @property
    def schema(self) -> dict[str, Any]:
        return SCHEMAS[self.schema_name]

    def validation_context(self, settings: AgentSettings) -> dict[str, Any]:
        return {"max_tasks": settings.agent_max_plan_tasks} if self.name == "coo" else {}


def _task_view(task: agent_pb2.AgentTask) -> dict[str, str]:
    return {"title": task.task.title, "description": task.task.description}


def _files(files) -> list[dict[str, str]]:
    return [{"name": f.name, "content": f.content} for f in files]


def _outcome(value: sandbox_pb2.SandboxOutcome.ValueType) -> str:
    name = sandbox_pb2.SandboxOutcome.Name(value) if value in sandbox_pb2.SandboxOutcome.values() else ""
    name = name.removeprefix("SANDBOX_OUTCOME_").lower()
    return "error" if name in ("", "unspecified") else name


def _coo_input(task: agent_pb2.AgentTask, settings: AgentSettings) -> dict[str, Any]:
    return {"goal": task.goal, "max_tasks": settings.agent_max_plan_tasks}


def _engineer_input(task: agent_pb2.AgentTask, settings: AgentSettings) -> dict[str, Any]:
    feedback = task.feedback or task.task.last_feedback
    view = workspace_view.engineer_view(
        task.workspace, task_texts=[task.task.title, task.task.description, feedback],
        touched=[f.name for f in task.previous_files], budget_tokens=settings.agent_workspace_tokens)
    return {"goal": task.goal, "plan": workspace_view.plan_view(task.plan, task.task_number),
            "task": _task_view(task), "task_number": task.task_number or 1, "attempt": max(1, task.attempt),
            "feedback": feedback or None, "workspace": view, "previous_changes": _files(task.previous_files)}


def _qa_input(task: agent_pb2.AgentTask, settings: AgentSettings) -> dict[str, Any]:
    sr = task.sandbox_result
    changed, deleted = workspace.changes(task.workspace, task.artifact_files)
    return {"goal": task.goal, "task": _task_view(task), "task_number": task.task_number or 1,
            "files": _files(changed), "deleted": deleted,
            "diff": workspace.unified_diff(task.workspace, task.artifact_files),
            "workspace": workspace_view.listing(task.artifact_files),
            "command": list(task.artifact_command),
            "sandbox": {"outcome": _outcome(sr.outcome), "exit_code": sr.exit_code,
                        "stdout": sr.stdout, "stderr": sr.stderr, "error": sr.error}}


def _coo_trim(inp: dict[str, Any]) -> list[tuple[Path, str]]:
    return [(("goal",), "middle")]


def _engineer_trim(inp: dict[str, Any]) -> list[tuple[Path, str]]:
    paths: list[tuple[Path, str]] = [(("feedback",), "head"), (("task", "description"), "middle"),
                                     (("goal",), "middle")]
    paths += [(("previous_changes", i, "content"), "middle") for i in range(len(inp["previous_changes"]))]
    return paths


def _qa_trim(inp: dict[str, Any]) -> list[tuple[Path, str]]:
    paths: list[tuple[Path, str]] = [(("sandbox", "stdout"), "tail"), (("sandbox", "stderr"), "tail"),
                                     (("diff",), "middle"), (("task", "description"), "middle"),
                                     (("goal",), "middle")]
    paths += [(("files", i, "content"), "middle") for i in range(len(inp["files"]))]
    return paths


def _apply_plan(plan: Plan, result: agent_pb2.AgentResult) -> None:
    for i, item in enumerate(plan.tasks, start=1):
        result.plan.append(mission_pb2.PlannedTask(task_id=f"t{i}", title=item.title,
                                                   description=item.description,
                                                   status=mission_pb2.TASK_STATUS_PENDING))


def _apply_artifact(artifact: Artifact, result: agent_pb2.AgentResult) -> None:
    result.artifact_files.extend(common_pb2.File(name=f.name, content=f.content) for f in artifact.files)
    result.deleted_files.extend(artifact.delete)
    result.artifact_command.extend(artifact.command)


def _apply_verdict(verdict: QAVerdict, result: agent_pb2.AgentResult) -> None:
    result.verdict.CopyFrom(agent_pb2.Verdict(passed=verdict.passed, feedback=verdict.feedback,
                                              score=verdict.score))


SPECS: dict[str, RoleSpec] = {
    "coo": RoleSpec("coo", common_pb2.ROLE_COO, "coo_plan", Plan, _coo_input, _coo_trim, _apply_plan,
                    lambda task, s: {"max_tasks": s.agent_max_plan_tasks}),
    "engineer": RoleSpec("engineer", common_pb2.ROLE_ENGINEER, "engineer_artifact", Artifact, _engineer_input,
                         _engineer_trim, _apply_artifact,
                         lambda task, s: {"attempt": max(1, task.attempt), "task_number": task.task_number or 1}),
    "qa": RoleSpec("qa", common_pb2.ROLE_QA, "qa_verdict", QAVerdict, _qa_input, _qa_trim, _apply_verdict,
                   lambda task, s: {"task_number": task.task_number or 1}),
}

ROLE_NAMES = {spec.role: name for name, spec in SPECS.items()}


# ------------------------------------------------------------------------- truncation
class PromptTooLarge(Exception):
    """Even with every variable part cut away the prompt does not fit the context window."""


def truncate(text: str, cap: int, mode: str) -> tuple[str, int]:
    """``text`` cut to ``cap`` characters (plus a marker saying how much was cut)."""
    if cap < 0 or len(text) <= cap:
        return text, 0
    cut = len(text) - cap
    marker = f"[truncated {cut} chars]"
    if mode == "head":
        return f"{text[:cap]}…{marker}", cut
    if mode == "tail":
        return f"{marker}…{text[len(text) - cap:]}", cut
    head = cap // 2
    return f"{text[:head]}\n…{marker}…\n{text[len(text) - (cap - head):]}", cut


def _get(obj: Any, path: Path) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(obj: Any, path: Path, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


@dataclass
class Conversation:
    """The messages of one call, renderable with every variable part capped at ``cap`` chars."""

    system: str
    user: str
    input: dict[str, Any]
    trimmable: list[tuple[Path, str]]
    # A repair turn: (the invalid answer, the repair request).
    repair: tuple[str, str] | None = None

    def longest(self) -> int:
        lengths = [len(v) for p, _ in self.trimmable if isinstance(v := _get(self.input, p), str)]
        if self.repair:
            lengths.append(len(self.repair[0]))
        return max(lengths, default=0)

    def render(self, cap: int = -1) -> tuple[list[dict[str, str]], int]:
        inp = self.input
        cut_total = 0
        if cap >= 0:
            inp = copy.deepcopy(self.input)
            for path, mode in self.trimmable:
                value = _get(inp, path)
                if isinstance(value, str):
                    short, cut = truncate(value, cap, mode)
                    _set(inp, path, short)
                    cut_total += cut
        block = fenced_json(inp)
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": f"{self.user}\n\n{block}"})
        if self.repair:
            answer, request = self.repair
            answer, cut = truncate(answer, cap, "head")
            cut_total += cut
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": f"{request}\n\n{block}"})
        return messages, cut_total


def fit(conversation: Conversation, *, context_tokens: int, max_output_tokens: int,
        response_format: dict[str, Any]) -> tuple[list[dict[str, str]], int, int]:
    """``(messages, truncated_chars, estimated_input_tokens)`` so that input + output fit the context."""
    budget = context_tokens - max_output_tokens

    def size(messages: list[dict[str, str]]) -> int:
        return estimate_prompt_tokens(messages, response_format)

    messages, _ = conversation.render()
    tokens = size(messages)
    if tokens <= budget:
        return messages, 0, tokens
    smallest, cut = conversation.render(0)
    if size(smallest) > budget:
        raise PromptTooLarge(
            f"the prompt needs at least {size(smallest)} tokens (estimated) + {max_output_tokens} output "
            f"tokens, more than the model's context of {context_tokens}")
    lo, hi = 0, conversation.longest()  # lo always fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if size(conversation.render(mid)[0]) <= budget:
            lo = mid
        else:
            hi = mid
    messages, cut = conversation.render(lo)
    return messages, cut, size(messages)


def conversation_for(spec: RoleSpec, task: agent_pb2.AgentTask, settings: AgentSettings) -> Conversation:
    template = load_template(spec.name)
    values = {"role": spec.name, "schema_name": spec.schema_name, **spec.template_values(task, settings)}
    system, user = template.render(**values)
    inp = spec.build_input(task, settings)
    return Conversation(system, user, inp, spec.trimmable(inp))


def repair_of(conversation: Conversation, spec: RoleSpec, answer: str, error: str) -> Conversation:
    _, request = load_template("repair").render(role=spec.name, schema_name=spec.schema_name, error=error)
    return Conversation(conversation.system, conversation.user, conversation.input, conversation.trimmable,
                        repair=(answer, request))


__all__ = [
    "ROLE_NAMES",
    "SPECS",
    "Conversation",
    "PromptTooLarge",
    "RoleSpec",
    "conversation_for",
    "fit",
    "parse_answer",
    "repair_of",
    "truncate",
]

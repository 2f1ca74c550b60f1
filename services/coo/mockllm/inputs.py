"""Reading the structured input of a role, and small text helpers shared by the roles.

Fields the contracts have always had are checked (a wrong type is an :class:`InputError`, HTTP
400); fields added later (plan, task_number, workspace, previous_changes, diff, ...) are read
tolerantly: an agent that omits them, or sends them in another shape, still gets an answer.
"""

from __future__ import annotations

from typing import Any

#: How much text ``expensive`` adds to an answer.
PADDING_CHARS = 40_000


class InputError(ValueError):
    """The structured input is missing a field or has the wrong type (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def get_str(inp: dict[str, Any], key: str, *, required: bool = True, default: str = "") -> str:
    value = inp.get(key)
    if value is None:
        if required:
            raise InputError(f"input field '{key}' is required", key)
        return default
    if not isinstance(value, str):
        raise InputError(f"input field '{key}' must be a string", key)
    return value


def get_int(inp: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = inp.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"input field '{key}' must be an integer", key)
    if value < minimum:
        raise InputError(f"input field '{key}' must be >= {minimum}", key)
    return value


def loose_int(value: Any, minimum: int = 1) -> int | None:
    """``value`` if it is an int >= ``minimum``, else None (for optional, newer fields)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return None
    return value


def loose_names(*lists: Any) -> list[str] | None:
    """The ``name`` of every ``{"name": ...}`` entry (or plain string) in ``lists``, in order,
    once each; None when no list was given at all (the field is absent)."""
    given = [lst for lst in lists if isinstance(lst, list)]
    if not given:
        return None
    names: list[str] = []
    for lst in given:
        for entry in lst:
            name = entry.get("name") if isinstance(entry, dict) else entry
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def workspace_names(workspace: Any) -> list[str] | None:
    """The file names an engineer's ``workspace`` holds (its listing and its files), or None."""
    if isinstance(workspace, list):  # a bare listing
        return loose_names(workspace)
    if not isinstance(workspace, dict):
        return None
    return loose_names(workspace.get("listing"), workspace.get("files"))


def padding(chars: int = PADDING_CHARS, tag: str = "mock:expensive") -> str:
    """``chars`` characters of plain ASCII filler (no quotes or backslashes, so its length is
    the same inside a JSON string)."""
    sentence = (
        "Further elaboration follows, repeated at length because this answer is "
        f"deliberately verbose ({tag}). "
    )
    return (sentence * (chars // len(sentence) + 1))[:chars]


def one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def with_secret_comment(source: str, secret: str) -> str:
    first, _, rest = source.partition("\n")
    return f'{first}\n\n# debug: OPENAI_API_KEY = "{secret}"  # TODO remove before merge\n{rest}'


def clean_secret(secret: str) -> str:
    return "".join(ch for ch in secret if ch.isprintable() and ch not in "\"'\\")

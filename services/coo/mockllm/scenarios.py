"""Scenario switches: per-request behaviour chosen by markers in the goal text.

Syntax, anywhere in the goal (it passes through every role's input)::

    [mock:slow=SECONDS]        sleep before answering (default 2 s, capped at 300 s)
    [mock:flaky]               the engineer's attempt 1 is the buggy version
    [mock:http-error]          the first request per goal+schema answers HTTP 500 once
    [mock:http-error=CODE]     ... with CODE instead (429, 500, 502, 503 or 504)
    [mock:expensive]           a very long answer: 200 000 completion tokens, or max_tokens (cut off) when capped
    [mock:expensive=TOKENS]    ... reporting TOKENS instead
    [mock:echo-secret]         answers echo a fixed fake API key (DEFAULT_SECRET)
    [mock:echo-secret=VALUE]   ... echo VALUE instead
    [mock:provider=NAME]       behave like another kind of provider (``providers``):
                               deepseek   json_schema refused (400), json_object and plain accepted
                               ollama     any response_format refused (400); answers prose, then
                                          the JSON in a ```json fence
                               reasoning  max_tokens refused (400), max_completion_tokens only;
                                          reasoning_content and reasoning_tokens in every answer
    [mock:refuse]              the model refuses: content null, message.refusal set
    [mock:refuse=ROLE]         ... only for that role (coo, engineer or qa)
    [mock:no-usage]            the response has no ``usage`` object
    [mock:long=TOKENS]         the answer really is TOKENS completion tokens long (padded notes,
                               feedback or last task description); a smaller max_tokens or
                               max_completion_tokens cuts it there (invalid JSON, "length")
    [mock:sycophant]           the engineer's code fails its own tests on every attempt (and its
                               notes say it passes); QA passes everything, score 0.9, with praise
    [mock:lazy]                the engineer's command runs no test ("Ran 0 tests"); QA passes any
                               run with outcome ok and exit code 0

Server-wide defaults use the same names, comma-separated, in ``COO_MOCKLLM_SCENARIO``
(e.g. ``slow=0.5,flaky`` or ``provider=deepseek``); markers in a request add to or override them.
docs/mockllm.md has the table of what each one tests in COO.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, replace

import structlog

log = structlog.get_logger(__name__)

#: The canary echoed by ``echo-secret`` when the goal gives none: shaped like an OpenAI
#: project key so that scrubbers have something realistic to catch. It is not a real key.
DEFAULT_SECRET = "sk-proj-MOCKcanaryDoNotUse0f3a9c1d27b64e80a5c9d13b7e2f46"  # noqa: S105 - a canary, no credential

DEFAULT_SLOW_SECONDS = 2.0
MAX_SLOW_SECONDS = 300.0
DEFAULT_EXPENSIVE_TOKENS = 200_000
HTTP_ERROR_CODES = (429, 500, 502, 503, 504)
PROVIDERS = ("deepseek", "ollama", "reasoning")
REFUSE_ROLES = ("coo", "engineer", "qa")
#: ``refuse`` without a role refuses every request
REFUSE_ALL = "all"
MAX_LONG_TOKENS = 1_000_000

MARKER = re.compile(r"\[mock:([a-zA-Z][a-zA-Z_-]*)(?:=([^\]\n]*))?\]")
NAMES = ("slow", "flaky", "http-error", "expensive", "echo-secret", "provider", "refuse",
         "no-usage", "long", "sycophant", "lazy")


@dataclass(frozen=True)
class Scenario:
    slow: float | None = None
    flaky: bool = False
    http_error: int | None = None
    expensive: int | None = None
    echo_secret: str | None = None
    provider: str | None = None
    refuse: str | None = None
    no_usage: bool = False
    long: int | None = None
    sycophant: bool = False
    lazy: bool = False

    @property
    def names(self) -> list[str]:
        """The scenarios on, in NAMES order; ``provider`` and a role-bound ``refuse`` with
        their value (``provider=deepseek``, ``refuse=qa``)."""
        out = []
        for name in NAMES:
            value = getattr(self, name.replace("-", "_"))
            if value is None or value is False:
                continue
            if name == "provider" or (name == "refuse" and value != REFUSE_ALL):
                out.append(f"{name}={value}")
            else:
                out.append(name)
        return out

    def refuses(self, role: str | None) -> bool:
        """Whether a request answered as ``role`` (None: no role) is refused."""
        return self.refuse == REFUSE_ALL or (role is not None and self.refuse == role)


def _apply(sc: Scenario, name: str, value: str | None) -> Scenario:
    name = name.strip().lower().replace("_", "-")
    value = value.strip() if value is not None else None
    if value == "":
        value = None
    try:
        if name == "slow":
            seconds = DEFAULT_SLOW_SECONDS if value is None else float(value)
            if not seconds >= 0:  # also rejects NaN
                raise ValueError(value)
            return replace(sc, slow=min(seconds, MAX_SLOW_SECONDS))
        if name == "http-error":
            code = 500 if value is None else int(value)
            if code not in HTTP_ERROR_CODES:
                raise ValueError(value)
            return replace(sc, http_error=code)
        if name == "expensive":
            tokens = DEFAULT_EXPENSIVE_TOKENS if value is None else int(value)
            if tokens < 1:
                raise ValueError(value)
            return replace(sc, expensive=tokens)
        if name == "echo-secret":
            return replace(sc, echo_secret=value or DEFAULT_SECRET)
        if name == "provider":
            provider = (value or "").lower()
            if provider not in PROVIDERS:
                raise ValueError(value)
            return replace(sc, provider=provider)
        if name == "refuse":
            role = REFUSE_ALL if value is None else value.lower()
            if role not in (REFUSE_ALL, *REFUSE_ROLES):
                raise ValueError(value)
            return replace(sc, refuse=role)
        if name == "long":
            tokens = int(value or "")
            if tokens < 1:
                raise ValueError(value)
            return replace(sc, long=min(tokens, MAX_LONG_TOKENS))
        if name == "flaky":
            return replace(sc, flaky=True)
        if name == "no-usage":
            return replace(sc, no_usage=True)
        if name == "sycophant":
            return replace(sc, sycophant=True)
        if name == "lazy":
            return replace(sc, lazy=True)
    except ValueError:
        log.warning("mockllm.scenario.bad_value", scenario=name, value=value)
        return sc
    log.warning("mockllm.scenario.unknown", scenario=name)
    return sc


def parse_defaults(spec: str | None) -> Scenario:
    """Parse ``COO_MOCKLLM_SCENARIO`` ("slow=0.5,flaky,echo-secret")."""
    sc = Scenario()
    for raw in (spec or "").split(","):
        part = raw.strip()
        if part.startswith("[mock:") and part.endswith("]"):
            part = part[len("[mock:"):-1]
        if not part:
            continue
        name, _, value = part.partition("=")
        sc = _apply(sc, name, value if _ else None)
    return sc


def resolve(text: str | None, defaults: Scenario | None = None) -> Scenario:
    """Defaults overridden by every ``[mock:...]`` marker found in ``text``."""
    sc = defaults or Scenario()
    for m in MARKER.finditer(text or ""):
        sc = _apply(sc, m.group(1), m.group(2))
    return sc


def strip_markers(text: str) -> str:
    """``text`` without scenario markers and with whitespace collapsed."""
    return " ".join(MARKER.sub(" ", text).split())


class OnceSet:
    """A bounded set of keys that remembers which ones have been seen (LRU eviction)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is offered (and remembers it)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > self.maxsize:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)

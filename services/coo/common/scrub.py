"""Secret scrubber: the first line of defence (in-process) before anything reaches a log line,
a span or a file; the collector's ``transform``/``redaction`` rules (the guarantee) are generated
from the same table, :mod:`coo.common.secret_patterns`.

Public API::

    scrub_text(text, *, pii=False) -> str        # one string
    scrub(obj, *, pii=False)                      # anything: dict/list/tuple/set/bytes/JSON strings...
    is_secret_key(name) -> bool                   # does this dict key / attribute name name a secret?
    structlog_processor(logger, method, event)    # structlog processor (PII when COO_SCRUB_PII is true)
    scrub_stream(infile, outfile, *, pii=False)   # `coo scrub`: line by line, PEM blocks across lines
    naive_scrub_text(text, *, pii=False) -> str   # the reference: every pattern in turn (benchmark baseline)
    SECRET_PATTERNS, PII_PATTERNS, SECRET_KEY_PATTERN

What is redacted
----------------
* Self-identifying tokens: gitleaks' default rule set (about 200 vendors, generated into
  :mod:`coo.common.gitleaks_rules` by scripts/gen_gitleaks_rules.py; the marker names gitleaks'
  rule, e.g. ``[REDACTED:github-pat]``), then our own rules for what it lacks (NATS nkey seeds,
  container-registry tokens, longer or other-length shapes of OpenAI/GitHub/... keys, JWTs, PEM
  private-key blocks): the whole token becomes ``[REDACTED:<kind>]``.
* Context secrets: URL user-info ``scheme://user:PASSWORD@host`` whatever the password holds
  (``# ? @ : / %``; user and host kept) or a long token as the user, ``Authorization: Bearer X``,
  Slack/Discord webhook URLs (host and path kept), ``Cookie:`` headers, ``docker login -p X``,
  ``mysql -pX``, ``curl -u user:X``.
* Key/value pairs whose key names a secret. **The rule**: a key names a secret when it *ends*
  with one of password/passwd/passphrase/pass/pwd/secret(s)/token/bearer/auth/authorization/
  api_key/access_key/private_key/secret_key/signing_key/encryption_key/master_key/account_key/
  client_key/credential(s)/creds/cookie(s)/session_id/session_key/sessid/sig/signature
  (case-insensitive, ``-``/``_``/``.`` between parts optional). So ``GITHUB_TOKEN``, ``clientSecret``,
  ``x-api-key``, ``Authorization`` do; ``token_count``, ``input_tokens``, ``max_tokens``,
  ``author``, ``secret_name``, ``password_file`` do not. In text, such a key immediately followed
  (after an optional closing quote and blanks) by ``=``, ``:``, ``:=`` or ``=>`` and a value of at
  least **one** character is redacted, keeping the key: ``token=42`` becomes
  ``token=[REDACTED:secret]``, while "the token count was 42" stays as it is (no separator right
  after the key). **A value runs to the end of its token in the format it is in**, not to the first
  special character: quoted values to the closing quote (JSON ``\"`` escapes, JSON inside a JSON
  string, YAML ``''``); a query-string value (after ``?`` or ``&``) to ``&``, ``#`` or a blank; a
  connection-string value (after ``;``) to ``;`` (``{...}`` braces included); a line-start
  ``key: value`` or ``KEY=value`` (YAML scalar, header, env file) to the end of the line; a quoted
  ``--flag 'value'`` to its closing quote; any other bare value to a blank or a quote, with
  ``& # % ; , < >`` inside it. ``"token": 42`` in JSON becomes ``"token": "[REDACTED:secret]"``.
  In dicts (and parsed JSON), the value of a secret-named key is replaced wholesale, whatever it
  is (string, number, None, nested dict...).
* With ``pii=True`` (structlog: env ``COO_SCRUB_PII``): e-mail addresses, IPv4 addresses, phone
  numbers (international ``+..``, US ``(555) 123-4567`` / ``555-123-4567``) and SSN-style numbers.

UUIDs, git SHAs, trace/span ids, paths, numbers, timestamps, base64 words in prose, tracebacks and
URLs without credentials pass unchanged.

Speed
-----
:func:`naive_scrub_text` applies every pattern of the table in turn (the reference, and what the
collector does). :func:`scrub_text` gives the same result, by construction (and checked by the
tests), much faster:

* every pattern carries necessary conditions checked on the lower-cased text: trigger substrings
  (all found in one pass of a trie-shaped regex), and for some a cheap "gate" regex; a pattern
  whose conditions fail cannot match and is skipped (a typical log line runs 0-2 patterns);
* only the PEM pattern can span lines: it runs first on the whole text, then the rest line by
  line, each line with its own conditions;
* key/value patterns are case-insensitive, which Python's ``re`` scans slowly: their gate (the
  secret word, quote and separator, case-sensitive on the lower-cased text) finds the only
  positions where they can match, and they are tried there only.

gitleaks' rules carry their own prefilter words (derived from each regex, so skipping a rule is
always exact) and most carry the words every match starts with, tried with ``str.find`` only where
they occur; texts over 16 KiB look for prefilter words with substring search instead of the trie.
Realistic JSON log lines: ~20-30 MB/s on an idle machine, 5-25x the naive loop (the more rules, the
larger the ratio). Everything is linear: a 5 MB adversarial string takes about a second.

Trade-offs
----------
* Kinds: a key/value match is labelled ``secret`` even when the value is a recognisable token
  (``GITHUB_TOKEN=ghp_...`` → ``GITHUB_TOKEN=[REDACTED:secret]``): key/value rules run first so
  the whole value goes, whatever its shape.
* An unterminated ``-----BEGIN ... PRIVATE KEY-----`` is redacted up to where its base64/armour
  body visibly ends, which may take following lines of plain text made only of letters, digits,
  blanks and ``+/=:,.-``.
* Mid-line bare values stop at whitespace, so ``x password=two words`` keeps ``words`` (at the start
  of a line the whole rest goes, as an env file or YAML would read it); values of
  secret-named keys in prose-like ``key: value`` are redacted too ("auth: ok" → "auth:
  [REDACTED:secret]"), and so is a key that merely ends like one (``bypass=true``).
* A JWT whose header segment contains ``-`` (possible only with ``>``/``?``/``~`` or non-ASCII in
  the header JSON) is not recognised on its own; in ``Authorization:``/``token=`` context it still is.
* ``[REDACTED:...]`` markers are never matched again, so ``scrub(scrub(x)) == scrub(x)``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from functools import lru_cache
from typing import IO, Any, TypeAlias

from coo.common.secret_patterns import (
    _KEY_WORDS,
    _PEM_BEGIN,
    _PEM_BODY,
    _PEM_END,
    PATTERN_SPECS,
    PII_PATTERNS,
    PY_FLAGS,
    SECRET_KEY_PATTERN,
    SECRET_PATTERNS,
    PatternSpec,
    marker,
    python_template,
)

__all__ = [
    "CYCLE_MARKER",
    "PII_PATTERNS",
    "SECRET_KEY_PATTERN",
    "SECRET_MARKER",
    "SECRET_PATTERNS",
    "is_secret_key",
    "naive_scrub_text",
    "scrub",
    "scrub_stream",
    "scrub_text",
    "structlog_processor",
]

SECRET_MARKER = marker("secret")
CYCLE_MARKER = "[CYCLE]"
DEPTH_MARKER = marker("too_deep")
ERROR_MARKER = marker("scrub_error")   # fail closed: if scrubbing itself fails, nothing of the input is kept
MAX_DEPTH = 100
_MIN_MATCH = 5      # the shortest text any pattern matches ("pwd=x"); tested against the naive path

# ------------------------------------------------------------------------------- prefilter
# Every rule carries necessary conditions tested on the lower-cased text: ``triggers`` and
# ``requires`` (each: one of these substrings occurs) and a ``gate`` (this regex occurs). A rule
# whose conditions fail cannot match, so skipping it gives exactly what applying it would.
#
# Which multi-character substrings occur is found in ONE pass: a trie-shaped regex of all of them
# (``findall``: at each match position the longest substring starting there). A substring can
# hide inside an earlier match (``passecret``: ``pass`` consumes the start of ``secret``); only
# those that can overlap a found one (:data:`_HIDDEN_BY`) are then tested with ``in``.

_Trie: TypeAlias = dict[str, "_Trie"]


def _trie_source(words: Iterable[str]) -> str:
    trie: _Trie = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: _Trie) -> str:
        alts = [re.escape(ch) + emit(node[ch]) for ch in sorted(k for k in node if k)]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return "(?:" + body + ")?" if "" in node else body

    return emit(trie)


#: A rule's any-of condition: (multi-character substrings, single characters).
_Cond: TypeAlias = tuple[frozenset[str], tuple[str, ...]]


def _split(words: tuple[str, ...] | None) -> _Cond | None:
    """(frozenset of multi-character substrings, tuple of single characters), or None."""
    if words is None:
        return None
    return frozenset(w for w in words if len(w) > 1), tuple(w for w in words if len(w) == 1)


_WORDS = sorted({w for s in PATTERN_SPECS for w in (s.triggers or ()) + (s.requires or ()) if len(w) > 1})
_FINDALL = re.compile(_trie_source(_WORDS)).findall
# Substrings found implicitly: every word that is a prefix of a found one.
_PREFIXES = {w: frozenset(v for v in _WORDS if w.startswith(v)) for w in _WORDS}
# Words that may start strictly inside an occurrence of w (and so be hidden by it).
_HIDDEN_BY = {
    w: tuple(v for v in _WORDS if any(v.startswith(w[i:]) or w[i:].startswith(v) for i in range(1, len(w))))
    for w in _WORDS
}


_WORD_CHARS = tuple((w, frozenset(w)) for w in _WORDS)
_NOTHING: frozenset[str] = frozenset()
# frozenset of the words findall returned -> (those words with their prefixes, words that could
# hide inside them and are not known yet). Bounded: cleared when full.
_FOUND_MEMO: dict[frozenset[str], tuple[frozenset[str], tuple[str, ...]]] = {}
_MAX_MEMO = 4096


def _closure(words: Iterable[str]) -> frozenset[str]:
    return _NOTHING.union(*(_PREFIXES[w] for w in words))


#: Past this length a text is searched word by word (C substring search) instead of by the trie
#: regex, whose per-character cost dominates on long lines.
_LONG_TEXT = 16_384


def _found(low: str) -> frozenset[str]:
    """The multi-character trigger words present in ``low`` (exactly)."""
    if len(low) > _LONG_TEXT:
        chars = set(low)
        return frozenset(w for w, need in _WORD_CHARS if need <= chars and w in low)
    words = _FINDALL(low)
    if not words:
        return _NOTHING
    seen = frozenset(words)
    memo = _FOUND_MEMO.get(seen)
    if memo is None:
        if len(_FOUND_MEMO) >= _MAX_MEMO:
            _FOUND_MEMO.clear()
        closure = _closure(seen)
        hidden = tuple(sorted({v for w in seen for v in _HIDDEN_BY[w]} - closure))
        memo = _FOUND_MEMO[seen] = (closure, hidden)
    closure, hidden = memo
    if not hidden:
        return closure
    extra = [v for v in hidden if v in low]
    if not extra:
        return closure
    present = set(seen)
    present.update(extra)
    while extra:  # rare: words hidden in hidden words
        for v in _HIDDEN_BY[extra.pop()]:
            if v not in present and v in low:
                present.add(v)
                extra.append(v)
    return _closure(present)


class _Rule:
    """One compiled pattern and its necessary conditions."""

    __slots__ = (
        "bucket",
        "gate",
        "gate_at_start",
        "gate_id",
        "idx",
        "match",
        "name",
        "parts",
        "presence",
        "req",
        "starts",
        "sub",
        "tpl",
        "trig",
    )

    def __init__(self, spec: PatternSpec, idx: int, gates: dict[str, re.Pattern[str]]) -> None:
        rx = re.compile(spec.regex, PY_FLAGS)
        self.name = spec.name
        self.sub = rx.sub
        self.match = rx.match
        self.tpl = python_template(spec)
        # The replacement as (group index of "pre" or 0, marker text, group index of "post" or 0).
        groups = rx.groupindex
        mid = marker(spec.kind)
        self.parts = (groups.get("pre", 0), f'"{mid}"' if spec.quote else mid, groups.get("post", 0))
        self.trig = _split(spec.triggers)
        self.req = _split(spec.requires)
        # One compiled gate per source, shared by the rules that use it (one result per text, cached
        # under gate_id: a compiled pattern hashes its whole program, too slow for a dict key).
        self.gate = None if spec.gate is None else gates.setdefault(spec.gate, re.compile(spec.gate, PY_FLAGS))
        self.gate_id = -1 if spec.gate is None else list(gates).index(spec.gate)   # -1: no gate (never read)
        self.gate_at_start = spec.gate_at_start
        self.bucket = spec.gate_bucket
        # Gate-only rules (no trigger words): first tested all together, see _PRESENCE.
        self.presence = spec.triggers is None and spec.gate is not None
        self.idx = idx
        self.starts = spec.starts


def _compile_rules(specs: Iterable[PatternSpec]) -> tuple[_Rule, ...]:
    gates: dict[str, re.Pattern[str]] = {}
    return tuple(_Rule(s, i, gates) for i, s in enumerate(specs))


_SECRET_SPECS = tuple(s for s in PATTERN_SPECS if not s.pii)
_ALL_SPECS = _SECRET_SPECS + tuple(s for s in PATTERN_SPECS if s.pii)
if _SECRET_SPECS[0].name != "private_key":
    raise RuntimeError("the multi-line PEM pattern must come first")
_SECRET_RULES = _compile_rules(_SECRET_SPECS)
_ALL_RULES = _compile_rules(_ALL_SPECS)
_PEM = _SECRET_RULES[0]
_PEM_TRIGGER = (_SECRET_SPECS[0].triggers or ("private key",))[0]

_KEY_RE = re.compile(SECRET_KEY_PATTERN, PY_FLAGS)
# One search for all gate-only rules: when none of their gates occurs (most lines), none of them
# is tried; when one does, each rule's own gate decides.
_PRESENCE = re.compile("|".join(sorted({f"(?:{s.gate})" for s in PATTERN_SPECS if s.triggers is None and s.gate})),
                       PY_FLAGS).search
_KEY_WORDS_FULL = re.compile(_KEY_WORDS, PY_FLAGS).fullmatch   # on lower-cased text

# found words -> the plan for a text with those words: (rule, single characters of which one
# must occur or None, same for requires) for each rule (PEM excluded) that can still apply.
#: One step of a plan: (rule, characters still to test for its triggers, same for its requires).
_Step: TypeAlias = tuple[_Rule, tuple[str, ...] | None, tuple[str, ...] | None]
_Plan: TypeAlias = tuple[_Step, ...]
_PLANS: tuple[dict[frozenset[str], _Plan], dict[frozenset[str], _Plan]] = ({}, {})
_MAX_PLANS = 4096


def _conds_left(cond: _Cond | None, found: frozenset[str]) -> tuple[str, ...] | None:
    """None when ``cond`` already holds given ``found``; the characters still to test otherwise
    (an empty tuple: cannot hold)."""
    if cond is None or not cond[0].isdisjoint(found):
        return None
    return cond[1]


def _plan(found: frozenset[str], pii: bool) -> _Plan:
    plans = _PLANS[pii]
    plan = plans.get(found)
    if plan is None:
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        steps: list[_Step] = []
        for r in (_ALL_RULES if pii else _SECRET_RULES)[1:]:
            t = _conds_left(r.trig, found)
            q = _conds_left(r.req, found)
            if t == () or q == ():
                continue
            steps.append((r, t, q))
        plan = plans[found] = tuple(steps)
    return plan


def _any_in(chars: Iterable[str], low: str) -> bool:
    for ch in chars:  # noqa: SIM110 - the hot path: a loop beats any() over a generator
        if ch in low:
            return True
    return False


@lru_cache(maxsize=1024)
def _inner_offsets(word: str) -> tuple[int, ...]:
    """Offsets inside a matched secret word where another secret word ends at the same place
    (none with the current word list: no secret word is a suffix of another)."""
    return tuple(i for i in range(1, len(word)) if _KEY_WORDS_FULL(word[i:]))


_JSON_LITERAL_START = frozenset("-0123456789tfn")
_BUCKETS_BY_CHAR = {'"': ("dq",), "'": ("sq",), "\\": ("edq", "bare")}
_BARE = ("bare",)
_Buckets: TypeAlias = dict[str | None, list[int]]
_NO_BUCKETS: _Buckets = {}
_JSON_OR_BARE = ("json", "bare")


def _gate_positions(gate: re.Pattern[str], low: str) -> _Buckets:
    r"""Every position where a start-anchored ``gate`` matches in ``low``, as
    ``{bucket: ascending positions}``.

    For the key/value gate (group 1: the secret word; then quote and separator) the positions are
    sorted by what follows the separator, so each key/value pattern only tries the positions it
    can match: ``dq`` ("), ``edq`` (\), ``sq`` ('), ``json`` (a JSON literal after ``"key":``),
    ``bare`` (anything but a quote). Other gates: everything under ``None``.

    ``finditer`` gives the non-overlapping matches; another match can only start inside one where
    a secret word is a suffix of the matched word (see _inner_offsets), added explicitly."""
    if gate.groups == 0:
        return {None: [m.start() for m in gate.finditer(low)]}
    matches = gate.finditer(low)
    first = next(matches, None)
    if first is None:
        return _NO_BUCKETS
    buckets: _Buckets = {"dq": [], "edq": [], "sq": [], "json": [], "bare": []}
    extra = False
    by_char = _BUCKETS_BY_CHAR
    for m in itertools.chain((first,), matches):
        start = m.start()
        end = m.end()
        c = low[end:end + 1]
        names = by_char.get(c)
        if names is None:
            if not c:
                continue
            names = _JSON_OR_BARE if c in _JSON_LITERAL_START and '"' in low[m.end(1):end] else _BARE
        inner = _inner_offsets(m.group(1))
        for name in names:
            buckets[name].append(start)
        if inner:
            extra = True
            for name in names:
                buckets[name].extend(start + off for off in inner)
    if extra:
        for bucket, positions in buckets.items():
            buckets[bucket] = sorted(set(positions))
    return buckets


def _word_positions(words: tuple[str, ...], low: str) -> list[int]:
    """Every position (ascending, overlaps included) where one of ``words`` occurs in ``low``."""
    out: list[int] = []
    find = low.find
    for w in words:
        i = find(w)
        while i >= 0:
            out.append(i)
            i = find(w, i + 1)
    if len(words) > 1:
        out = sorted(set(out))
    return out


def _sub_at(rule: _Rule, text: str, positions: list[int]) -> str:
    """``rule.sub`` on ``text`` when the rule can only match at ``positions`` (ascending): the
    same result (leftmost non-overlapping matches, each replaced as the template says) without
    scanning the text."""
    out: list[str] = []
    append = out.append
    last = 0
    match = rule.match
    pre, mid, post = rule.parts
    for p in positions:
        if p < last:
            continue
        m = match(text, p)
        if m is None:
            continue
        append(text[last:p])
        if pre:
            append(m.group(pre) or "")
        append(mid)
        if post:
            append(m.group(post) or "")
        last = m.end()
    if not out:
        return text
    append(text[last:])
    return "".join(out)


def _apply(text: str, low: str, plan: _Plan, pii: bool) -> str:
    """Apply a plan, in order, to one line (or to any text, once PEM is done)."""
    gates: dict[int, Any] | None = None
    presence = None
    for rule, tchars, qchars in plan:
        if tchars is not None and not _any_in(tchars, low):
            continue
        if qchars is not None and not _any_in(qchars, low):
            continue
        if rule.presence:
            if presence is None:
                presence = _PRESENCE(low) is not None
            if not presence:
                continue
        gate = rule.gate
        if rule.starts is not None and len(low) == len(text):
            starts = _word_positions(rule.starts, low)
            if not starts:
                continue
            new = _sub_at(rule, text, starts)
        elif gate is None:
            new = rule.sub(rule.tpl, text)
        else:
            if gates is None:
                gates = {}
            positions: list[int] | None
            if rule.gate_at_start and len(low) == len(text):
                buckets = gates.get(rule.gate_id)
                if buckets is None:
                    buckets = gates[rule.gate_id] = _gate_positions(gate, low)
                positions = buckets.get(rule.bucket)
                if not positions:
                    continue
                new = _sub_at(rule, text, positions)
            else:
                ok = gates.get(~rule.gate_id)          # (positions live under gate_id)
                if ok is None:
                    ok = gate.search(low) is not None
                    gates[~rule.gate_id] = ok
                if not ok:
                    continue
                new = rule.sub(rule.tpl, text)
        if new != text:
            # Rare: go on with the following rules, tested on the new text.
            return _apply_from(new, rule.idx + 1, pii)
    return text


def _apply_from(text: str, start: int, pii: bool) -> str:
    """The rules from index ``start`` on, with conditions tested on ``text`` (after a change)."""
    low = text.lower()
    plan = tuple(step for step in _plan(_found(low), pii) if step[0].idx >= start)
    return _apply(text, low, plan, pii)


def _scrub_text(text: str, pii: bool) -> str:
    low = text.lower()
    if _PEM_TRIGGER in low:
        new = _PEM.sub(_PEM.tpl, text)
        if new != text:
            text = new
            low = text.lower()
    if "\n" not in text:
        return _apply(text, low, _plan(_found(low), pii), pii)
    # Only the PEM pattern can match across a line break, so line by line gives the same result
    # as whole-text application, and each line is tested on its own.
    lines = text.split("\n")
    lows = low.split("\n")
    if len(lows) != len(lines):  # lower() never adds or removes "\n"; be safe anyway
        return _apply(text, low, _plan(_found(low), pii), pii)
    out: list[str] = []
    append = out.append
    for line, lline in zip(lines, lows):
        append(_apply(line, lline, _plan(_found(lline), pii), pii) if line else line)
    return "\n".join(out)


def scrub_text(text: str, *, pii: bool = False) -> str:
    """Redact secrets (and with ``pii=True`` personal data) in one string. Never raises."""
    if not isinstance(text, str):
        return scrub(text, pii=pii)
    if len(text) < _MIN_MATCH:
        return text
    try:
        return _scrub_text(text, pii)
    except Exception:  # noqa: BLE001 - a scrubber that raises would drop or leak the log line
        return ERROR_MARKER


def naive_scrub_text(text: str, *, pii: bool = False) -> str:
    """The reference implementation: every pattern of the table, in order, on the whole text.
    Same output as :func:`scrub_text`, much slower; kept as the benchmark baseline."""
    for rule in (_ALL_RULES if pii else _SECRET_RULES):
        text = rule.sub(rule.tpl, text)
    return text


# ------------------------------------------------------------------------------------ objects

@lru_cache(maxsize=8192)
def _is_secret_key_cached(name: str) -> bool:
    return _KEY_RE.search(name.strip()) is not None


def is_secret_key(name: str) -> bool:
    """True when a dict key / attribute name names a secret (see the module docs for the rule)."""
    try:
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode("utf-8", "replace")
        if not isinstance(name, str):
            return False
        if len(name) > 256:
            return _KEY_RE.search(name.strip()) is not None
        return _is_secret_key_cached(str(name))
    except Exception:  # noqa: BLE001 - an odd key object: not a secret's name, and never raise from logging
        return False


_SCALARS = (int, float, bool, complex, type(None))


def _scrub_str(s: str, pii: bool, active: set[int], depth: int) -> Any:
    # A string that is itself a JSON object/array: scrub its structure (secret-named keys redacted
    # wholesale) and re-serialise, or return it untouched when nothing changed.
    first = s[:1]
    if first in ("{", "[") or (first.isspace() and s.lstrip()[:1] in ("{", "[")):
        stripped = s.strip()
        if stripped[-1:] in ("}", "]"):
            try:
                parsed = json.loads(stripped)
            except (ValueError, RecursionError):
                parsed = None
            if isinstance(parsed, (dict, list)):
                cleaned = _scrub(parsed, pii, active, depth)
                if cleaned == parsed:
                    return s
                return json.dumps(cleaned, ensure_ascii=False)
    return scrub_text(s, pii=pii)


def _rebuild(obj: Any, items: Any, fallback: Callable[[Any], Any]) -> Any:
    try:
        return type(obj)(items)
    except Exception:  # noqa: BLE001 - odd subclasses: give back the plain container
        return fallback(items)


def _scrub(obj: Any, pii: bool, active: set[int], depth: int) -> Any:
    t = type(obj)
    if t is str:
        return _scrub_str(obj, pii, active, depth)
    if t in _SCALARS:
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _scrub_str(bytes(obj).decode("utf-8", errors="replace"), pii, active, depth)
    if isinstance(obj, str):
        return _scrub_str(str(obj), pii, active, depth)
    if not isinstance(obj, (Mapping, list, tuple, set, frozenset)):
        return obj
    oid = id(obj)
    if oid in active:
        return CYCLE_MARKER
    if depth >= MAX_DEPTH:
        return DEPTH_MARKER
    active.add(oid)
    try:
        depth += 1
        if isinstance(obj, Mapping):
            out = {}
            for key, value in obj.items():
                if is_secret_key(key):
                    out[key] = SECRET_MARKER
                else:
                    out[key] = _scrub(value, pii, active, depth)
            return out if t is dict else _rebuild(obj, out, dict)
        items = [_scrub(x, pii, active, depth) for x in obj]
        if t is list:
            return items
        if t is tuple:
            return tuple(items)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            try:
                return t(*items)
            except Exception:  # noqa: BLE001 - odd subclasses: give back the plain container
                return tuple(items)
        if isinstance(obj, (set, frozenset)):
            try:
                return _rebuild(obj, items, set if isinstance(obj, set) else frozenset)
            except TypeError:  # an element became unhashable
                return items
        return _rebuild(obj, items, list if isinstance(obj, list) else tuple)
    finally:
        active.discard(oid)


def scrub(obj: Any, *, pii: bool = False) -> Any:
    """Return a scrubbed copy of ``obj``. Never raises.

    * str: secrets redacted; a string holding a JSON object/array is parsed, scrubbed and
      re-serialised (returned unchanged when there was nothing to redact);
    * bytes/bytearray: decoded as UTF-8 (errors replaced), then as str;
    * dict/Mapping: keys kept, values scrubbed, values of secret-named keys replaced wholesale;
    * list/tuple (namedtuples too)/set/frozenset: element by element, same type back;
    * a container met again inside itself: ``"[CYCLE]"``; nesting deeper than 100: a marker;
    * anything else: returned as is.
    """
    try:
        return _scrub(obj, pii, set(), 0)
    except Exception:  # noqa: BLE001 - never raise from a logging path; fail closed
        return ERROR_MARKER


# ---------------------------------------------------------------------------------- structlog

def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


#: PII redaction in the structlog processor: env COO_SCRUB_PII, read once at import.
PII_FROM_ENV = _env_true(os.environ.get("COO_SCRUB_PII"))


# Log fields repeat: event names, models, roles, statuses, subjects, outcomes... The structlog
# processor remembers the short strings it found nothing in, per PII setting, and skips them
# the next time (a set lookup instead of ~1.5 µs of scrubbing). Only strings given back
# unchanged are kept, so no secret is held here; bounded: cleared when full.
_CLEAN_MAX_LEN = 256
_CLEAN_MAX = 4096
_CLEAN: tuple[set[str], set[str]] = (set(), set())
_SECRET_KEY: dict[str, bool] = {}     # field name -> is_secret_key(name), same bound

#: structlog's event dict (structlog.typing.EventDict, spelled out: this module does not import structlog)
EventDict: TypeAlias = MutableMapping[str, Any]


def _is_secret_field(key: Any) -> bool:
    secret = _SECRET_KEY.get(key) if type(key) is str else None
    if secret is None:
        secret = is_secret_key(key)
        if type(key) is str:
            if len(_SECRET_KEY) >= _CLEAN_MAX:
                _SECRET_KEY.clear()
            _SECRET_KEY[key] = secret
    return secret


def structlog_processor(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: scrubs every value of the event dict in place (secret-named keys are
    replaced wholesale) and returns it. Put it after ``format_exc_info`` so tracebacks are scrubbed."""
    pii = PII_FROM_ENV
    clean = _CLEAN[pii]
    try:
        for key, value in event_dict.items():
            if _is_secret_field(key):
                event_dict[key] = SECRET_MARKER
                continue
            t = type(value)
            if t is str:
                if value in clean:
                    continue
                scrubbed = _scrub_str(value, pii, set(), 0)
                if len(value) <= _CLEAN_MAX_LEN and scrubbed == value:
                    if len(clean) >= _CLEAN_MAX:
                        clean.clear()
                    clean.add(value)
                event_dict[key] = scrubbed
            elif t not in _SCALARS:
                event_dict[key] = _scrub(value, pii, set(), 0)
        return event_dict
    except Exception:  # noqa: BLE001 - fail closed, keep the line
        return {"event": ERROR_MARKER}


# ------------------------------------------------------------------------------------- stream

_PEM_BEGIN_RE = re.compile(_PEM_BEGIN, PY_FLAGS)
_PEM_END_RE = re.compile(_PEM_END, PY_FLAGS)
_PEM_BODY_RE = re.compile(_PEM_BODY + "*", PY_FLAGS)
#: Bounds of a PEM block buffered across lines by scrub_stream (a 4096-bit RSA key is ~52 lines).
MAX_PEM_LINES = 1000
MAX_PEM_CHARS = 1 << 20


def _opens_block(line: str) -> bool:
    """True when ``line`` starts a PEM private-key block that continues on the next lines."""
    if "PRIVATE KEY" not in line:
        return False
    begins = list(_PEM_BEGIN_RE.finditer(line))
    if not begins:
        return False
    begin = begins[-1]
    rest = line[begin.end():].rstrip("\r\n")
    return _PEM_END_RE.search(rest) is None and _PEM_BODY_RE.fullmatch(rest) is not None


def _scrub_line(line: str, pii: bool) -> str:
    """Scrub one line (or a buffered block), keeping its line ending out of reach of the patterns
    (an unterminated PEM block would otherwise take it)."""
    if line.endswith("\n"):
        end = "\r\n" if line.endswith("\r\n") else "\n"
        return scrub_text(line[:-len(end)], pii=pii) + end
    return scrub_text(line, pii=pii)


def scrub_stream(infile: Iterable[str | bytes | bytearray], outfile: IO[str], *, pii: bool = False) -> int:
    """Copy ``infile`` to ``outfile`` line by line, scrubbed; returns the number of lines read.

    A multi-line PEM private-key block is buffered from its BEGIN line to its END line (at most
    :data:`MAX_PEM_LINES` lines / :data:`MAX_PEM_CHARS` characters) and redacted as one; past the
    bound, the rest of the block's body lines are dropped until its END line.
    """
    count = 0
    buf: list[str] = []
    size = 0
    skipping = False
    write = outfile.write
    for raw in infile:
        count += 1
        line = bytes(raw).decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
        if skipping:
            end = _PEM_END_RE.search(line)
            if end is not None:
                skipping = False
                write(_scrub_line(line[end.end():], pii))
                continue
            if _PEM_BODY_RE.fullmatch(line.rstrip("\r\n")):
                continue
            skipping = False
        if buf:
            if _PEM_END_RE.search(line):
                buf.append(line)
                write(_scrub_line("".join(buf), pii))
                buf, size = [], 0
                continue
            if _PEM_BODY_RE.fullmatch(line.rstrip("\r\n")):
                buf.append(line)
                size += len(line)
                if len(buf) >= MAX_PEM_LINES or size >= MAX_PEM_CHARS:
                    write(_scrub_line("".join(buf), pii))
                    buf, size = [], 0
                    skipping = True
                continue
            # The block's body ended without an END line: flush it, then treat this line normally.
            write(_scrub_line("".join(buf), pii))
            buf, size = [], 0
        if _opens_block(line):
            buf, size = [line], len(line)
            continue
        write(_scrub_line(line, pii))
    if buf:
        write(_scrub_line("".join(buf), pii))
    flush = getattr(outfile, "flush", None)
    if flush is not None:
        with contextlib.suppress(Exception):   # e.g. a closed pipe; nothing more to say
            flush()
    return count

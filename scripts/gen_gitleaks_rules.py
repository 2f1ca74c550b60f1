#!/usr/bin/env python3
"""Generate ``services/coo/common/gitleaks_rules.py`` from gitleaks' default rule set.

gitleaks (MIT, community-maintained) ships its default rules as ``config/gitleaks.toml`` in its Go
module. We take them from the module at a pinned version, through Go's own client
(``go mod download -json``: the Go module proxy, checked against the checksum database), and
translate every rule that can redact in a log line into the one dialect both of our engines speak
(Python ``re`` in-process, Go RE2 in the collector), with the rule's secret split out as the text to
replace:

* the secret is the rule's ``secretGroup``, else its first capture group, else the whole match
  (gitleaks' own choice); what comes before and after it becomes the named groups ``pre`` and
  ``post`` (kept), every other capture group becomes non-capturing. A rule whose regex is a
  top-level alternation becomes one pattern per alternative;
* one line at a time (COO scrubs line by line; only PEM blocks span lines): ``\\s`` is spelled
  ``[ \\t\\r\\f]``, ``\\S`` and every negated class exclude ``\\n``, ``(?s:.)`` is ``.``;
* the same meaning in both engines: global flags in the middle of a pattern (``p8e-(?i)...``)
  become scoped groups (``(?i:...)``) to the end of their group, POSIX classes (``[[:alnum:]]``)
  are spelled out, ``\\z`` is ``$`` (no ``(?m)``: the end of the text in both, as lines carry
  no ``\\n``), and class members Python would read as set operations are escaped;
* the prefilter words of each rule (lower-case strings of which every match contains one) are
  derived from the regex itself, not taken from gitleaks' ``keywords``, because a keyword need not
  be part of the match (``airtable`` for ``pat...``) and skipping a rule must never change the
  result.

Rules left out, each with its reason in the generated file: rules tied to a file type (``path``),
``generic-api-key`` (without gitleaks' entropy and stop-word checks, which RE2 cannot express, it
redacts ordinary ``key: value`` prose; COO's own key/value rules cover it), rules whose secret
group cannot be split out (multi-line ``curl`` rules), and :data:`FALSE_POSITIVES`: rules that, as
regexes alone (gitleaks filters them by entropy), change benign look-alike lines of the test
corpus.

Why generated and checked in rather than fetched at build time: the services, ``coo scrub`` and
the Docker image run offline and without Go; the collector configuration is a static file shared
by both stacks; an upgrade of gitleaks shows up as a reviewable diff of patterns; and the
translation is tested against both engines. ``tests/test_gitleaks_rules.py`` regenerates the file
from the pinned module and fails when the checked-in copy is stale.

Usage::

    scripts/gen_gitleaks_rules.py                 # write services/coo/common/gitleaks_rules.py
    scripts/gen_gitleaks_rules.py --check         # exit 1 when it is not up to date
    scripts/gen_gitleaks_rules.py --toml PATH     # translate a local gitleaks.toml instead
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "services" / "coo" / "common" / "gitleaks_rules.py"

MODULE = "github.com/zricethezav/gitleaks/v8"
VERSION = "v8.30.1"
#: go.sum hash of the module zip (``go mod download`` verifies it; we check it again).
MODULE_SUM = "h1:PmEvCfVI7ti9dV3s5aMZUY7sS2GxRvG3yzih7E+cS3w="

SKIP = {
    "generic-api-key": "needs gitleaks' entropy and stop-word filters to be usable; COO's key/value rules cover it",
    "curl-auth-header": "spans lines and nests its secret groups; COO's Authorization-header rules cover it",
    "curl-auth-user": "spans lines and nests its secret groups; COO's own curl --user rule covers it",
}
#: Rules that, as regexes alone, change benign look-alike lines (hashes, ids, base64) of the test
#: corpus: gitleaks keeps them quiet with entropy thresholds, which RE2 cannot express.
FALSE_POSITIVES: dict[str, str] = {
    "sourcegraph-access-token": "one alternative is any 40-digit hex string: every git commit id",
}

_WS = " \\t\\r\\f"            # \s without \n (one line) and without \v (engines disagree)
_POSIX = {"alnum": "A-Za-z0-9", "alpha": "A-Za-z", "digit": "0-9", "lower": "a-z", "upper": "A-Z",
          "xdigit": "0-9A-Fa-f", "word": "A-Za-z0-9_", "space": _WS, "punct": "!-/:-@\\[-`{-~"}


class Unsupported(Exception):
    pass


# ------------------------------------------------------------------------------ a small parser
@dataclass
class Node:
    kind: str                      # lit, class, any, esc, anchor, group, alt, cat, rep
    text: str = ""                 # lit: the character; class/esc/anchor: emitted source
    lit: str | None = None         # a single (lower-case) character this node always matches
    items: list = field(default_factory=list)
    capture: bool = False
    flags: str = ""                # group: scoped flags like "i", "-i"
    lo: int = 1
    hi: int | None = 1
    lazy: bool = False
    index: int = 0                 # capture group number
    chars: frozenset | None = None  # class: its (lower-case) members, when it is a short list of characters


class Parser:
    """Parses the RE2 subset gitleaks uses. A global flag in the middle of a group (``(?i)``)
    applies to the rest of that group, later alternatives included: every atom after it is
    wrapped in a scoped group (``(?i:x)``), which both engines read alike."""

    def __init__(self, src: str) -> None:
        self.s, self.i, self.ngroups = src, 0, 0
        self.active: list[str] = [""]     # flags set by (?x) in each open group

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def parse(self) -> Node:
        node = self.alt()
        if self.i != len(self.s):
            raise Unsupported(f"unbalanced at {self.i}")
        return node

    def alt(self) -> Node:
        branches = [self.cat()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.cat())
        return branches[0] if len(branches) == 1 else Node("alt", items=branches)

    def cat(self) -> Node:
        items: list[Node] = []
        while self.peek() and self.peek() not in "|)":
            m = re.match(r"\(\?([a-z-]+)\)", self.s[self.i:])
            if m:
                self.i += m.end()
                if m.group(1) not in ("i", "-i"):
                    raise Unsupported(f"flag {m.group(1)}")
                self.active[-1] = m.group(1)
                continue
            atom = self.quant(self.atom())
            if self.active[-1]:
                atom = Node("group", flags=self.active[-1], items=[Node("cat", items=[atom])])
            items.append(atom)
        return Node("cat", items=items)

    def quant(self, atom: Node) -> Node:
        c = self.peek()
        lo: int
        hi: int | None
        if c == "*":
            lo, hi, self.i = 0, None, self.i + 1
        elif c == "+":
            lo, hi, self.i = 1, None, self.i + 1
        elif c == "?":
            lo, hi, self.i = 0, 1, self.i + 1
        elif c == "{" and (m := re.match(r"\{(\d+)(,(\d*))?\}", self.s[self.i:])):
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            self.i += m.end()
        else:
            return atom
        lazy = self.peek() == "?"
        if lazy:
            self.i += 1
        if self.peek() in ("*", "+", "?") and self.peek():
            raise Unsupported("stacked quantifiers")
        return Node("rep", items=[atom], lo=lo, hi=hi, lazy=lazy)

    def atom(self) -> Node:
        c = self.peek()
        if c == "(":
            return self.group()
        if c == "[":
            return self.klass()
        if c == ".":
            self.i += 1
            return Node("any", text=".")
        if c in "^$":
            self.i += 1
            return Node("anchor", text=c)
        if c == "\\":
            return self.escape()
        self.i += 1
        return Node("lit", text=c, lit=c.lower())

    def escape(self) -> Node:
        nxt = self.peek(1)
        self.i += 2
        if nxt == "x":
            m = re.match(r"[0-9A-Fa-f]{2}", self.s[self.i:])
            if not m:
                raise Unsupported("\\x without two hex digits")
            self.i += 2
            ch = chr(int(m.group(0), 16))
            return Node("lit", text=_lit(ch), lit=ch.lower() if ch.isprintable() else None)
        if nxt == "s":
            return Node("class", text=f"[{_WS}]")
        if nxt == "S":
            return Node("class", text="[^ \\t\\n\\f\\r\\v]")
        if nxt in "wWdDb":
            return Node("anchor" if nxt == "b" else "class", text="\\" + nxt)
        if nxt == "B":
            return Node("anchor", text="\\B")
        if nxt == "z":
            return Node("anchor", text="$")
        if nxt == "A":
            return Node("anchor", text="^")
        if nxt in "nrtf":
            return Node("class", text="\\" + nxt)
        if nxt and not nxt.isalnum():
            return Node("lit", text=_lit(nxt), lit=nxt.lower())
        raise Unsupported(f"escape \\{nxt}")

    def klass(self) -> Node:
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        members: list[str] = []
        first = True
        while True:
            c = self.peek()
            if not c:
                raise Unsupported("unterminated class")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if self.s.startswith("[:", self.i):
                m = re.match(r"\[:(\^?)([a-z]+):\]", self.s[self.i:])
                if not m or m.group(1) or m.group(2) not in _POSIX:
                    raise Unsupported("POSIX class")
                members.append(_POSIX[m.group(2)])
                self.i += m.end()
                continue
            if c == "\\":
                nxt = self.peek(1)
                self.i += 2
                if nxt == "x":
                    members.append("\\x" + self.s[self.i:self.i + 2])
                    self.i += 2
                elif nxt == "s":
                    members.append(_WS)
                elif nxt in "wdnrtf":
                    members.append("\\" + nxt)
                elif nxt and not nxt.isalnum():
                    members.append(_lit_in_class(nxt))
                else:
                    raise Unsupported(f"class escape \\{nxt}")
                continue
            self.i += 1
            if self.peek() == "-" and self.peek(1) not in ("]", ""):      # a range a-z
                end = self.peek(1)
                if end == "\\":
                    raise Unsupported("escaped range end")
                self.i += 2
                members.append(f"{c}-{end}")
                continue
            members.append(_lit_in_class(c) if c in "[&~|" else c)
        body = "".join(members)
        if negated:
            if "\\n" not in body:
                body = "\\n" + body
            return Node("class", text=f"[^{body}]")
        single = _single_letter(members)
        plain = [m[-1] for m in members if len(m) == 1 or (len(m) == 2 and m[0] == "\\" and not m[1].isalnum())]
        chars = frozenset(c.lower() for c in plain) if len(plain) == len(members) and len(plain) <= 4 else None
        return Node("class", text=f"[{body}]", lit=single, chars=chars)

    def group(self) -> Node:
        self.i += 1
        capture, flags = True, ""
        if self.peek() == "?":
            if self.s.startswith("?:", self.i):
                capture, self.i = False, self.i + 2
            elif self.s.startswith("?P<", self.i) or self.s.startswith("?<", self.i):
                self.i = self.s.index(">", self.i) + 1
            else:
                m = re.match(r"\?([a-z-]+):", self.s[self.i:])
                if not m:
                    raise Unsupported("group syntax")
                capture, flags = False, m.group(1)
                self.i += m.end()
        index = 0
        if capture:
            self.ngroups += 1
            index = self.ngroups
        self.active.append("")
        body = self.alt()
        self.active.pop()
        if self.peek() != ")":
            raise Unsupported("unclosed group")
        self.i += 1
        if flags == "s":
            flags = ""           # (?s:.) -> . : one line at a time
        return Node("group", items=[body], capture=capture, flags=flags, index=index)


def _lit(ch: str) -> str:
    if ch == "`":
        return "\\x60"
    return re.escape(ch) if not ch.isalnum() and ch != "_" else ch


def _lit_in_class(ch: str) -> str:
    return "\\x60" if ch == "`" else "\\" + ch


def _single_letter(members: list[str]) -> str | None:
    """[Aa] -> "a": a class that is one letter in both cases."""
    if len(members) == 2 and all(len(m) == 1 for m in members) and members[0].lower() == members[1].lower():
        return members[0].lower() if members[0] != members[1] else None
    return None


# ------------------------------------------------------------------------------- emitting
def emit(node: Node, secret: int = 0) -> str:
    k = node.kind
    if k in ("lit", "class", "any", "anchor"):
        return node.text
    if k == "cat":
        return "".join(emit(x, secret) for x in node.items)
    if k == "alt":
        return "|".join(emit(x, secret) for x in node.items)
    if k == "rep":
        inner = emit(node.items[0], secret)
        if node.items[0].kind in ("cat", "alt") or (node.items[0].kind == "lit" and len(inner) > 1
                                                    and not inner.startswith("\\")):
            inner = f"(?:{inner})"
        if (node.lo, node.hi) == (0, None):
            q = "*"
        elif (node.lo, node.hi) == (1, None):
            q = "+"
        elif (node.lo, node.hi) == (0, 1):
            q = "?"
        elif node.hi == node.lo:
            q = f"{{{node.lo}}}"
        else:
            q = f"{{{node.lo},{'' if node.hi is None else node.hi}}}"
        return inner + q + ("?" if node.lazy else "")
    if k == "group":
        body = emit(node.items[0], secret)
        if node.capture and node.index == secret:
            return f"(?P<secret>{body})"
        return f"(?{node.flags}:{body})" if node.flags else f"(?:{body})"
    raise AssertionError(k)


def required(node: Node) -> set[str] | None:
    """Lower-case strings of which every match contains at least one (None: nothing known)."""
    k = node.kind
    if k in ("lit", "class"):
        return {node.lit} if node.lit else None
    if k in ("any", "anchor"):
        return None
    if k == "group":
        return required(node.items[0])
    if k == "rep":
        return required(node.items[0]) if node.lo >= 1 else None
    if k == "alt":
        out: set[str] = set()
        for b in node.items:
            r = required(b)
            if r is None:
                return None
            out |= r
        return out
    # cat: runs of adjacent exact pieces are sets of strings (a small cross product); every
    # match contains one string of each run. Pick the best candidate.
    candidates: list[set[str]] = []
    run: set[str] = set()
    for item in node.items:
        exact = _exact(item)
        if exact is not None and len(run or {""}) * len(exact) <= 32:
            run = {a + b for a in (run or {""}) for b in exact}
            continue
        if run:
            candidates.append(run)
        run = set(exact) if exact is not None else set()
        if exact is not None or item.kind == "anchor":
            continue
        r = required(item)
        if r is not None:
            candidates.append(r)
    if run:
        candidates.append(run)
    candidates = [c for c in candidates if c and min(len(x) for x in c) > 0]
    if not candidates:
        return None
    # the most telling words: most distinct characters ("dropbox" rather than "aaaaaaaaaa")
    return max(candidates, key=lambda c: (min(len(set(s)) for s in c), min(len(s) for s in c), -len(c)))


def _exact(node: Node) -> set[str] | None:
    """The strings a node matches exactly (lower-cased), when they are few; else None."""
    k = node.kind
    if k == "lit":
        return {node.lit} if node.lit else None
    if k == "class":
        return set(node.chars) if node.chars else ({node.lit} if node.lit else None)
    if k == "group":
        return _exact(node.items[0])
    if k == "cat":
        out = {""}
        for x in node.items:
            e = _exact(x)
            if e is None or len(out) * len(e) > 32:
                return None
            out = {a + b for a in out for b in e}
        return out
    if k == "alt":
        out = set()
        for x in node.items:
            e = _exact(x)
            if e is None:
                return None
            out |= e
        return out if len(out) <= 32 else None
    if k == "rep" and node.hi is not None and node.hi <= 3:
        e = _exact(node.items[0])
        if e is None:
            return None
        out, cur = set(), {""}
        for n in range(node.hi + 1):
            if n >= node.lo:
                out |= cur
            cur = {a + b for a in cur for b in e}
            if len(out) + len(cur) > 32:
                return None
        return out
    return None


# ---------------------------------------------------------------------------- translation
@dataclass
class Rule:
    kind: str
    regex: str
    triggers: tuple[str, ...] | None
    starts: tuple[str, ...] | None = None    # lower-case strings every match starts with


def _top_alternatives(tree: Node) -> list[Node]:
    if tree.kind == "alt":
        return list(tree.items)
    if tree.kind == "cat" and len(tree.items) == 1 and tree.items[0].kind == "alt":
        return list(tree.items[0].items)
    return [tree]


def _find_caps(node: Node) -> list[Node]:
    out = []
    if node.kind == "group" and node.capture:
        out.append(node)
    for x in node.items:
        out.extend(_find_caps(x))
    return out


def _split(alt: Node, flags: str, secret_index: int | None, rid: str) -> Rule:
    caps = _find_caps(alt)
    wanted = [c for c in caps if c.index == secret_index] if secret_index else caps[:1]
    items = alt.items if alt.kind == "cat" else [alt]
    head = items
    if not wanted:
        body = "".join(emit(x) for x in items)
        rx = body
    else:
        target = wanted[0]
        # distribute flag-only groups on the way so that the secret group sits at the top level
        flat = _flatten_to(items, target)
        if flat is None:
            raise Unsupported("the secret group is nested")
        items = flat
        items = _strip_lazy_prefix(items, target)
        head = items
        pos = next(i for i, x in enumerate(items) if x is target)
        lead = 0                            # zero-width items (\b, ^) need no group of their own
        while lead < pos and items[lead].kind == "anchor":
            lead += 1
        pre = "".join(emit(x) for x in items[lead:pos])
        post = "".join(emit(x) for x in items[pos + 1:])
        rx = ("".join(emit(x) for x in items[:lead]) + (f"(?P<pre>{pre})" if pre else "")
              + f"(?P<secret>{emit(target.items[0])})"
              + (f"(?P<post>{post})" if post else ""))
    rx = (f"(?{flags})" if flags else "") + rx
    req = required(alt)
    triggers = tuple(sorted(req)) if req else None
    return Rule(rid, rx, triggers, _starts(head))


def _starts(items: list[Node]) -> tuple[str, ...] | None:
    """The strings every match starts with (after zero-width anchors), when its first pieces are
    exact: the scrubber then tries the rule only where one of them occurs."""
    run = _leading(items, {""})
    if run and min(len(s) for s in run) >= 2:
        return tuple(sorted(run))
    return None


def _leading(items: list[Node], run: set[str]) -> set[str]:
    for x in items:
        if x.kind == "anchor" and run == {""}:
            continue
        exact = _exact(x)
        if exact is not None and len(run) * len(exact) <= 32:
            run = {a + b for a in run for b in exact}
            continue
        if x.kind == "group" and x.items[0].kind == "cat":
            return _leading(x.items[0].items, run)
        return run
    return run


def _strip_lazy_prefix(items: list[Node], target: Node) -> list[Node]:
    """Drop lazy, optional runs that open the context before the secret (``[\\w.-]{0,50}?``).

    They only widen the kept ``pre`` text to the left: the secret, and so the output, is the same
    with or without them (the leftmost match with the shortest prefix reaches the same keyword),
    but Python's backtracking pays for them at every position of a long word (two nested ones
    made a 5 MB base64 string take minutes)."""
    items = list(items)
    while items and items[0] is not target:
        first = items[0]
        if first.kind == "rep" and first.lazy and first.lo == 0:
            items.pop(0)
            continue
        if first.kind == "group" and not first.capture and first.items[0].kind == "cat" \
                and not _contains(first, target):
            inner = _strip_lazy_prefix(first.items[0].items, target)
            if len(inner) != len(first.items[0].items):
                items[0] = Node("group", items=[Node("cat", items=inner)], flags=first.flags)
                continue
        break
    return items


def _flatten_to(items: list[Node], target: Node) -> list[Node] | None:
    for _ in range(8):
        if any(x is target for x in items):
            return items
        out: list[Node] = []
        changed = False
        for x in items:
            if x.kind == "group" and not x.capture and _contains(x, target) and x.items[0].kind == "cat":
                for y in x.items[0].items:
                    out.append(Node("group", items=[Node("cat", items=[y])], flags=x.flags) if x.flags else y)
                    if x.flags and y is target:
                        return None
                changed = True
            elif x.kind == "group" and x.capture and x is not target and _contains(x, target):
                # an outer capture group around the secret one: make it non-capturing and flatten
                x.capture = False
                out.append(x)
                changed = True
            else:
                out.append(x)
        items = out
        if not changed:
            return None
    return None


def _contains(node: Node, target: Node) -> bool:
    return node is target or any(_contains(x, target) for x in node.items)


def translate(rule: dict) -> list[Rule]:
    rid = rule["id"]
    src = rule["regex"]
    flags = ""
    m = re.match(r"\(\?([a-z]+)\)", src)
    if m:                                   # a leading global flag stays global
        flags, src = m.group(1), src[m.end():]
    tree = Parser(src).parse()
    alts = _top_alternatives(tree)
    rules: list[Rule] = []
    for n, alt in enumerate(alts):
        r = _split(alt, flags, rule.get("secretGroup"), rid)
        if n and r.regex in (x.regex for x in rules):
            continue
        rules.append(r)
    for r in rules:
        re.compile(r.regex, re.ASCII)
        if "\\s" in r.regex or "(?s" in r.regex:
            raise Unsupported("multi-line construct left")
    return rules


# ------------------------------------------------------------------------------------ I/O
def module_toml() -> pathlib.Path:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("gen_gitleaks_rules: Go is needed to fetch the gitleaks module (go mod download)")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"}
    out = subprocess.run([go, "mod", "download", "-json", f"{MODULE}@{VERSION}"], capture_output=True,
                         text=True, timeout=600, cwd="/", env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"gen_gitleaks_rules: go mod download failed: {out.stderr or out.stdout}")
    info = json.loads(out.stdout)
    if info.get("Sum") != MODULE_SUM:
        raise SystemExit(f"gen_gitleaks_rules: {MODULE}@{VERSION} has sum {info.get('Sum')}, expected {MODULE_SUM}")
    return pathlib.Path(info["Dir"]) / "config" / "gitleaks.toml"


def generate(toml_text: str) -> str:
    data = tomllib.loads(toml_text)
    rules: list[Rule] = []
    skipped: list[tuple[str, str]] = []
    for rule in data["rules"]:
        rid = rule["id"]
        if "regex" not in rule:
            skipped.append((rid, "no regex (a file-name rule)"))
        elif "path" in rule:
            skipped.append((rid, "tied to a file type (path)"))
        elif rid in SKIP:
            skipped.append((rid, SKIP[rid]))
        elif rid in FALSE_POSITIVES:
            skipped.append((rid, FALSE_POSITIVES[rid]))
        else:
            try:
                rules.extend(translate(rule))
            except (Unsupported, re.error) as exc:
                skipped.append((rid, f"not translatable: {exc}"))
    table = [(r.kind, r.regex, r.triggers, r.starts) for r in rules]
    lines = [
        '"""GENERATED by scripts/gen_gitleaks_rules.py from gitleaks\' default rules; do not edit.',
        "",
        f"Source: {MODULE}@{VERSION} (config/gitleaks.toml), module sum {MODULE_SUM}; MIT licence,",
        "Copyright (c) 2019 Zachary Rice. Each entry: (kind, regex, prefilter words or None, the",
        "words every match starts with or None). The regex",
        "means the same to Python ``re`` (with re.ASCII) and Go RE2; its ``pre``/``post`` groups are",
        "kept, ``secret`` is replaced by ``[REDACTED:<kind>]``. See the generator for the translation.",
        '"""',
        "",
        f"GITLEAKS_MODULE = {MODULE!r}",
        f"GITLEAKS_VERSION = {VERSION!r}",
        f"GITLEAKS_MODULE_SUM = {MODULE_SUM!r}",
        "",
        "RULES: tuple[tuple[str, str, tuple[str, ...] | None, tuple[str, ...] | None], ...] = (",
        *(f"    ({kind!r}, {regex!r}, {triggers!r}, {starts!r})," for kind, regex, triggers, starts in table),
        ")",
        "",
        "#: Rules of the source left out, and why.",
        "SKIPPED: tuple[tuple[str, str], ...] = (",
        *(f"    ({rid!r}, {why!r})," for rid, why in skipped),
        ")",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in file is stale")
    parser.add_argument("--toml", help="a local gitleaks.toml instead of the pinned module's")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    toml_path = pathlib.Path(args.toml) if args.toml else module_toml()
    text = generate(toml_path.read_text(encoding="utf-8"))
    out = pathlib.Path(args.out)
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is stale: run scripts/gen_gitleaks_rules.py", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The catalog of programming tasks mockllm knows how to plan, solve and get wrong.

Each :class:`CatalogItem` is one task: a correct module, a real ``unittest`` test file that
passes against it with nothing but the Python standard library, and a plausible buggy first
version (an off-by-one, a forgotten edge case) whose tests really fail. The programs live as
package data in ``programs/<module>.py.txt`` and ``programs/test_<module>.py.txt`` (kept
runnable on Python 3.8+); a buggy version is the correct one with a few exact text edits, which
must apply (checked at import).

A :class:`Project` is an ordered chain of items whose later tasks import the earlier tasks'
modules (``rpn.py`` does ``from stack import Stack``): its tests pass only in a workspace that
holds every earlier task's files, so a mission that loses files between tasks fails with an
ImportError, as it would with a real model.

Goals are matched by keyword regexes, projects first-class: a goal's plan is every project and
item it names, in order of first mention, a project expanding to its tasks (duplicates dropped).
A goal that names nothing gets :data:`GENERIC`, a small text-helper module whose test also
checks the word count of the goal itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files


def program(name: str) -> str:
    """The text of ``programs/<name>.txt`` (package data)."""
    return (files(__package__) / "programs" / f"{name}.txt").read_text(encoding="utf-8")


def _with_bug(source: str, edits: tuple[tuple[str, str], ...], module: str) -> str:
    for old, new in edits:
        if old not in source:
            raise RuntimeError(f"bug edit for {module}.py does not apply: {old[:60]!r}")
        source = source.replace(old, new)
    return source


class _Keywords:
    """Case-insensitive keyword regexes; the position of the earliest hit in a text."""

    keywords: tuple[str, ...]
    _patterns: tuple[re.Pattern[str], ...]

    def _compile(self) -> None:
        object.__setattr__(
            self, "_patterns", tuple(re.compile(k, re.IGNORECASE) for k in self.keywords)
        )

    def first_match(self, text: str) -> int | None:
        """Position of the earliest keyword hit in ``text``, or None."""
        hits = [m.start() for p in self._patterns if (m := p.search(text))]
        return min(hits) if hits else None


@dataclass(frozen=True)
class CatalogItem(_Keywords):
    key: str
    title: str
    module: str
    summary: str
    api: str
    keywords: tuple[str, ...]
    #: exact (old, new) text edits that turn the correct module into the buggy first version
    bug: tuple[tuple[str, str], ...]
    bug_note: str
    #: earlier modules this one imports, with the names it takes from each
    uses: tuple[tuple[str, str], ...] = ()
    source: str = field(init=False, repr=False, compare=False)
    tests: str = field(init=False, repr=False, compare=False)
    buggy_source: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._compile()
        source = program(f"{self.module}.py")
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "tests", program(f"{self.test_module}.py"))
        object.__setattr__(self, "buggy_source", _with_bug(source, self.bug, self.module))

    @property
    def test_module(self) -> str:
        return f"test_{self.module}"

    @property
    def command(self) -> list[str]:
        return ["python3", "-m", "unittest", "-v", self.test_module]

    @property
    def file_names(self) -> list[str]:
        """The files this task writes (and only these)."""
        return [f"{self.module}.py", f"{self.test_module}.py"]

    @property
    def used_files(self) -> list[str]:
        """The earlier tasks' files this task's code and tests need in the workspace."""
        return [f"{module}.py" for module, _ in self.uses]

    def description(self) -> str:
        text = (
            f"{self.summary} Write `{self.module}.py` exposing {self.api}, and "
            f"`{self.test_module}.py` with unittest tests covering normal cases and edge cases. "
        )
        if self.uses:
            imports = "; ".join(f"`from {module} import {names}`" for module, names in self.uses)
            earlier = ", ".join(f"`{name}`" for name in self.used_files)
            text += (
                f"It builds on {earlier} from the earlier task(s), already in the workspace "
                f"({imports}): use them, do not rewrite them. "
            )
        return text + (
            "Only the Python standard library is available. "
            f"The tests run with `{' '.join(self.command)}`."
        )


@dataclass(frozen=True)
class Project(_Keywords):
    """A goal whose plan is several dependent tasks, in order."""

    key: str
    name: str
    keywords: tuple[str, ...]
    items: tuple[CatalogItem, ...]

    def __post_init__(self) -> None:
        self._compile()
        have: set[str] = set()
        for item in self.items:  # every task may use only what earlier tasks wrote
            missing = set(item.used_files) - have
            if missing:
                raise RuntimeError(f"{self.key}: {item.key} uses {sorted(missing)} too early")
            have.update(item.file_names)


# --------------------------------------------------------------------------------------------
# single tasks

FIZZBUZZ = CatalogItem(
    key="fizzbuzz",
    title="FizzBuzz function",
    module="fizzbuzz",
    summary="Implement FizzBuzz for 1..n: multiples of 3 are 'Fizz', of 5 'Buzz', of both "
    "'FizzBuzz', other numbers their decimal string.",
    api="`fizzbuzz(n) -> list[str]` (ValueError for n < 0) and `fizzbuzz_value(i) -> str`",
    keywords=(r"fizz\s*-?\s*buzz",),
    bug=(("range(1, n + 1)", "range(1, n)"),),
    bug_note="iterates range(1, n), so the last number is missing (off-by-one)",
)

ISO_DATE = CatalogItem(
    key="iso_date",
    title="ISO-8601 date parser",
    module="iso_date",
    summary="Parse ISO-8601 dates (YYYY-MM-DD and YYYYMMDD) and date-times "
    "(YYYY-MM-DDTHH:MM[:SS[.fff]][Z|+HH:MM]), rejecting invalid input with ValueError.",
    api="`parse_iso_date(text) -> datetime.date` and "
    "`parse_iso_datetime(text) -> datetime.datetime`",
    keywords=(
        r"iso[\s_-]*8601",
        r"\biso\b[^.\n]{0,20}\bdate",
        r"\bdates?[\s-]+pars",
        r"\bpars\w*\s+(?:\w+\s+){0,3}dates?\b",
    ),
    bug=((
        ("    m = _DATE_EXTENDED.match(s) or _DATE_BASIC.match(s)\n"
         "    if not m:\n"
         '        raise ValueError(f"not an ISO-8601 date: {text!r}")\n'
         "    year, month, day = (int(g) for g in m.groups())\n"),
        ("    if not (_DATE_EXTENDED.match(s) or _DATE_BASIC.match(s)):\n"
         '        raise ValueError(f"not an ISO-8601 date: {text!r}")\n'
         '    s = s.replace("-", "")\n'
         "    year, month, day = int(s[0:4]), int(s[4:6]), int(s[6:7])\n"),
    ),),
    bug_note="slices the day as s[6:7] instead of s[6:8] (off-by-one)",
)

WORD_COUNT = CatalogItem(
    key="word_count",
    title="Word counter",
    module="wordcount",
    summary="Count word occurrences in text, case-insensitively, ignoring punctuation "
    "(apostrophes inside words are kept).",
    api="`count_words(text) -> dict[str, int]`, `total_words(text) -> int` and "
    "`top_words(text, n) -> list[tuple[str, int]]`",
    keywords=(
        r"word[\s_-]*count",
        r"\bcount(?:s|ing)?\s+(?:the\s+)?words",
        r"word[\s_-]*frequenc",
    ),
    bug=(("[w.lower() for w in _WORD.findall(text)]", "list(_WORD.findall(text))"),),
    bug_note="forgets to lower-case words, so counting is case-sensitive",
)

PALINDROME = CatalogItem(
    key="palindrome",
    title="Palindrome checker",
    module="palindrome",
    summary="Check whether text is a palindrome ignoring case, spaces and punctuation, and "
    "find the longest palindromic substring.",
    api="`is_palindrome(text) -> bool` and `longest_palindrome(text) -> str`",
    keywords=(r"palindrom",),
    bug=(('return "".join(c.casefold() for c in text if c.isalnum())', "return text.lower()"),),
    bug_note="does not strip spaces and punctuation before comparing",
)

ROMAN = CatalogItem(
    key="roman",
    title="Roman numeral converter",
    module="roman_numerals",
    summary="Convert integers 1..3999 to Roman numerals and back, with subtractive "
    "notation; reject out-of-range numbers and malformed numerals.",
    api="`to_roman(number) -> str` and `from_roman(numeral) -> int`",
    keywords=(r"\broman\b",),
    bug=(
        (
            ('    (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"),\n'
             '    (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),\n'
             '    (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),\n'),
            ('    (1000, "M"), (500, "D"), (100, "C"), (50, "L"),\n'
             '    (10, "X"), (5, "V"), (1, "I"),\n'),
        ),
        (
            ("        if i + 1 < len(s) and _VALUES[s[i + 1]] > value:\n"
             "            total -= value\n"
             "        else:\n"
             "            total += value"),
            "        total += value",
        ),
    ),
    bug_note="has no subtractive pairs, so 4 becomes 'IIII' and 'IV' reads as 6",
)

FIBONACCI = CatalogItem(
    key="fibonacci",
    title="Fibonacci numbers",
    module="fibonacci",
    summary="Compute Fibonacci numbers iteratively with F(0)=0, F(1)=1.",
    api="`fibonacci(n) -> int` and `fibonacci_sequence(count) -> list[int]`",
    keywords=(r"fibonacci", r"\bfib\b"),
    bug=(("    for _ in range(n):\n", "    for _ in range(n - 1):\n"),),
    bug_note="loops n - 1 times, so fibonacci(n) returns F(n-1) (off-by-one)",
)

STACK = CatalogItem(
    key="stack",
    title="Stack class",
    module="stack",
    summary="Implement a LIFO stack class.",
    api="`class Stack` with push, pop, peek (IndexError when empty), is_empty, clear, "
    "len() and iteration from top to bottom",
    keywords=(r"\bstack\b", r"\blifo\b"),
    bug=(("return self._items.pop()", "return self._items.pop(0)"),
         ("return self._items[-1]", "return self._items[0]")),
    bug_note="pops from the bottom of the list, so it behaves as a queue",
)

CSV_SUM = CatalogItem(
    key="csv_sum",
    title="CSV column summer",
    module="csv_sum",
    summary="Sum numeric columns of CSV text whose first row is a header; quoted fields, "
    "blank cells and non-numeric columns are handled.",
    api="`sum_column(text, column) -> float` (KeyError for a missing column, ValueError "
    "for non-numbers) and `sum_all_columns(text) -> dict[str, float]`",
    keywords=(r"\bcsv\b",),
    bug=(("return header, rows[1:]", "return header, rows[2:]"),),
    bug_note="skips the first data row together with the header (off-by-one)",
)

# --------------------------------------------------------------------------------------------
# tasks that exist only inside projects (they import earlier tasks' modules)

RPN = CatalogItem(
    key="rpn",
    title="RPN evaluator",
    module="rpn",
    summary="Evaluate expressions in reverse Polish notation (+ - * / ^, ints and floats) "
    "with the Stack class of the earlier task; malformed input raises RPNError.",
    api="`evaluate(expression) -> int | float`, `parse_number(token)`, `tokenize(expression)` "
    "and `class RPNError(ValueError)`",
    keywords=(),
    bug=(("            right = stack.pop()\n            left = stack.pop()\n",
          "            left = stack.pop()\n            right = stack.pop()\n"),),
    bug_note="pops the operands in the wrong order, so '10 4 -' gives -6",
    uses=(("stack", "Stack"),),
)

CALCULATOR = CatalogItem(
    key="calculator",
    title="RPN calculator front end",
    module="calculator",
    summary="A calculator front end over the RPN evaluator: variables (`x = 3 4 +`), `_` for "
    "the last result, numbers printed without a needless '.0', and a command line that "
    "evaluates its arguments or stdin lines (exit status 1 if any line failed).",
    api="`class Calculator` (`execute(line) -> str`, `variables`, `history`), "
    "`format_number(value) -> str` and `main(argv=None, stdin=None, stdout=None) -> int`",
    keywords=(),
    bug=((("    if isinstance(value, float):\n"
           "        if value.is_integer():\n"
           "            return str(int(value))\n"
           '        return f"{value:.12g}"\n'), ""),),
    bug_note="formats floats with str(), so '6 3 /' prints 2.0 and '0.1 0.2 +' prints "
    "0.30000000000000004",
    uses=(("rpn", "RPNError, evaluate"),),
)

INVENTORY = CatalogItem(
    key="inventory",
    title="Inventory model",
    module="inventory",
    summary="Products (SKU, name, Decimal unit price) and their stock levels: receive and "
    "ship quantities, never below zero; stock values.",
    api="`class Product` (frozen dataclass: sku, name, unit_price), `class Inventory` "
    "(add_product, product, quantity, receive, ship, skus, value) and "
    "`class StockError(ValueError)`",
    keywords=(),
    bug=((("        if quantity > level:\n"
           '            raise StockError(f"cannot ship {quantity} of {sku!r}: only {level} in '
           'stock")\n'), ""),),
    bug_note="does not check the stock level before shipping, so levels go negative",
)

LEDGER = CatalogItem(
    key="ledger",
    title="Stock movement ledger",
    module="ledger",
    summary="A ledger of stock movements (receipts and shipments with a reference) applied "
    "to the Inventory of the earlier task; a movement the inventory refuses is not recorded.",
    api="`class Movement` (frozen dataclass: sku, quantity, reference) and `class Ledger` "
    "(receive, ship, movements, balance, reconciles, len())",
    keywords=(),
    bug=((("        self.inventory.ship(sku, quantity)\n"
           "        return self._record(sku, -quantity, reference)\n"),
          ("        movement = self._record(sku, -quantity, reference)\n"
           "        self.inventory.ship(sku, quantity)\n"
           "        return movement\n")),),
    bug_note="records a shipment before the inventory accepts it, so a refused shipment "
    "stays in the ledger",
    uses=(("inventory", "Inventory, StockError"),),
)

REPORT = CatalogItem(
    key="report",
    title="Stock report",
    module="report",
    summary="A fixed-width stock report from the Inventory and Ledger of the earlier tasks: "
    "one line per product, the total value, the number of movements, a warning when the "
    "ledger does not reconcile, and the SKUs at or below a low-stock threshold.",
    api="`stock_rows(inventory)`, `low_stock(inventory, threshold) -> list[str]`, "
    "`money(value) -> str` and `render_report(ledger, threshold=5) -> str`",
    keywords=(),
    bug=(("inventory.quantity(sku) <= threshold", "inventory.quantity(sku) < threshold"),),
    bug_note="compares with < instead of <=, so a level equal to the threshold is not low",
    uses=(("inventory", "Inventory"), ("ledger", "Ledger")),
)

CATALOG: tuple[CatalogItem, ...] = (
    FIZZBUZZ, ISO_DATE, WORD_COUNT, PALINDROME, ROMAN, FIBONACCI, STACK, CSV_SUM,
)

PROJECTS: tuple[Project, ...] = (
    Project(
        key="rpn_calculator",
        name="RPN calculator",
        keywords=(r"\brpn\b", r"reverse[\s-]+polish"),
        items=(STACK, RPN, CALCULATOR),
    ),
    Project(
        key="inventory",
        name="Inventory with a ledger and a stock report",
        keywords=(r"\binventory\b", r"\bledger\b", r"\bstock[\s-]+(?:report|level|movement)s?\b"),
        items=(INVENTORY, LEDGER, REPORT),
    ),
)

GENERIC = CatalogItem(
    key="generic",
    title="Text helper module",
    module="text_helpers",
    summary="Provide small, well-tested text helpers for the goal.",
    api="`slugify(text, max_length=60) -> str` and `word_count(text) -> int` (the tests also "
    "check the word count of the goal text itself)",
    keywords=(),
    bug=(('slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")',
          'slug = re.sub(r"[^a-z0-9]", "-", ascii_text.lower()).strip("-")'),),
    bug_note="does not collapse runs of separators into one dash",
)

ALL_ITEMS: tuple[CatalogItem, ...] = tuple(
    {item.key: item for item in (*CATALOG, *(i for p in PROJECTS for i in p.items), GENERIC)}
    .values()
)
BY_KEY: dict[str, CatalogItem] = {item.key: item for item in ALL_ITEMS}
PROJECT_BY_KEY: dict[str, Project] = {project.key: project for project in PROJECTS}


def match_all(text: str) -> list[CatalogItem]:
    """Every task ``text`` names, in order of first mention: a project gives all its tasks,
    each task appears once."""
    entries: list[tuple[int, int, tuple[CatalogItem, ...]]] = []
    for i, project in enumerate(PROJECTS):
        if (pos := project.first_match(text)) is not None:
            entries.append((pos, i, project.items))
    for i, item in enumerate(CATALOG):
        if (pos := item.first_match(text)) is not None:
            entries.append((pos, len(PROJECTS) + i, (item,)))
    out: list[CatalogItem] = []
    for _, _, items in sorted(entries, key=lambda e: (e[0], e[1])):
        out.extend(item for item in items if item not in out)
    return out


def by_title(title: str | None) -> CatalogItem | None:
    """The item (GENERIC included) whose own title starts ``title``, as plans write them."""
    t = (title or "").strip().lower()
    for item in ALL_ITEMS:
        if t.startswith(item.title.lower()):
            return item
    return None


def match_first(*texts: str | None) -> CatalogItem | None:
    """The first item mentioned in the first of ``texts`` that mentions any."""
    for text in texts:
        if text:
            found = match_all(text)
            if found:
                return found[0]
    return None


def generic_tests(goal: str) -> str:
    """The generic test file, pinned to ``goal``."""
    return GENERIC.tests.replace("__GOAL_REPR__", repr(goal)).replace(
        "__GOAL_WORDS__", str(len(goal.split()))
    )

"""The catalog of programming tasks mockllm knows how to plan, solve and get wrong.

Each :class:`CatalogItem` carries a correct module, a real ``unittest`` test file that passes
against it with nothing but the Python standard library, and a plausible buggy first version
(an off-by-one, a forgotten edge case) whose tests really fail. Items are matched from free
text by keyword regexes; a goal that matches nothing gets :data:`GENERIC`, a small text-helper
module whose test also checks the word count of the goal itself.

The sources are plain strings (raw, so regexes inside them survive untouched) and are kept
runnable on Python 3.8+.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogItem:
    key: str
    title: str
    module: str
    summary: str
    api: str
    keywords: tuple[str, ...]
    source: str
    tests: str
    buggy_source: str
    bug_note: str
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_patterns", tuple(re.compile(k, re.IGNORECASE) for k in self.keywords)
        )

    @property
    def test_module(self) -> str:
        return f"test_{self.module}"

    @property
    def command(self) -> list[str]:
        return ["python3", "-m", "unittest", "-v", self.test_module]

    def first_match(self, text: str) -> int | None:
        """Position of the earliest keyword hit in ``text``, or None."""
        hits = [m.start() for p in self._patterns if (m := p.search(text))]
        return min(hits) if hits else None

    def description(self) -> str:
        return (
            f"{self.summary} Write `{self.module}.py` exposing {self.api}, and "
            f"`{self.test_module}.py` with unittest tests covering normal cases and edge cases. "
            f"Only the Python standard library is available. "
            f"The tests run with `{' '.join(self.command)}`."
        )


# --------------------------------------------------------------------------------------------
# FizzBuzz

_FIZZBUZZ = r'''"""FizzBuzz."""

from __future__ import annotations


def fizzbuzz_value(i: int) -> str:
    """Return the FizzBuzz word for a single number."""
    if i % 15 == 0:
        return "FizzBuzz"
    if i % 3 == 0:
        return "Fizz"
    if i % 5 == 0:
        return "Buzz"
    return str(i)


def fizzbuzz(n: int) -> list[str]:
    """Return the FizzBuzz sequence for 1..n inclusive."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return [fizzbuzz_value(i) for i in range(1, n + 1)]
'''

_FIZZBUZZ_BUGGY = _FIZZBUZZ.replace("range(1, n + 1)", "range(1, n)")

_FIZZBUZZ_TESTS = r'''import unittest

from fizzbuzz import fizzbuzz, fizzbuzz_value


class FizzBuzzTest(unittest.TestCase):
    def test_first_fifteen(self):
        self.assertEqual(
            fizzbuzz(15),
            ["1", "2", "Fizz", "4", "Buzz", "Fizz", "7", "8", "Fizz", "Buzz",
             "11", "Fizz", "13", "14", "FizzBuzz"],
        )

    def test_length_is_n(self):
        self.assertEqual(len(fizzbuzz(100)), 100)

    def test_last_value_included(self):
        self.assertEqual(fizzbuzz(30)[-1], "FizzBuzz")
        self.assertEqual(fizzbuzz(5)[-1], "Buzz")

    def test_zero_is_empty(self):
        self.assertEqual(fizzbuzz(0), [])

    def test_negative_rejected(self):
        with self.assertRaises(ValueError):
            fizzbuzz(-1)

    def test_single_values(self):
        self.assertEqual(fizzbuzz_value(9), "Fizz")
        self.assertEqual(fizzbuzz_value(10), "Buzz")
        self.assertEqual(fizzbuzz_value(45), "FizzBuzz")
        self.assertEqual(fizzbuzz_value(7), "7")


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# ISO-8601 dates

_ISODATE = r'''"""A small ISO-8601 date and date-time parser."""

from __future__ import annotations

import datetime as _dt
import re

_DATE_EXTENDED = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DATE_BASIC = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6})\d*)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?$"
)


def parse_iso_date(text: str) -> _dt.date:
    """Parse YYYY-MM-DD (or the basic form YYYYMMDD) into a date."""
    s = text.strip()
    m = _DATE_EXTENDED.match(s) or _DATE_BASIC.match(s)
    if not m:
        raise ValueError(f"not an ISO-8601 date: {text!r}")
    year, month, day = (int(g) for g in m.groups())
    try:
        return _dt.date(year, month, day)
    except ValueError as exc:
        raise ValueError(f"invalid date {text!r}: {exc}") from None


def _parse_offset(tz: str | None) -> _dt.tzinfo | None:
    if tz is None:
        return None
    if tz == "Z":
        return _dt.timezone.utc
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4] or "0")
    if hours > 23 or minutes > 59:
        raise ValueError(f"invalid UTC offset: {tz!r}")
    return _dt.timezone(sign * _dt.timedelta(hours=hours, minutes=minutes))


def parse_iso_datetime(text: str) -> _dt.datetime:
    """Parse YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|+HH:MM] into a datetime."""
    m = _DATETIME.match(text.strip())
    if not m:
        raise ValueError(f"not an ISO-8601 date-time: {text!r}")
    year, month, day, hour, minute = (int(g) for g in m.groups()[:5])
    second = int(m.group(6) or 0)
    micro = int((m.group(7) or "0").ljust(6, "0"))
    try:
        return _dt.datetime(year, month, day, hour, minute, second, micro,
                            tzinfo=_parse_offset(m.group(8)))
    except ValueError as exc:
        raise ValueError(f"invalid date-time {text!r}: {exc}") from None
'''

_ISODATE_BUGGY = _ISODATE.replace(
    '''    s = text.strip()
    m = _DATE_EXTENDED.match(s) or _DATE_BASIC.match(s)
    if not m:
        raise ValueError(f"not an ISO-8601 date: {text!r}")
    year, month, day = (int(g) for g in m.groups())
''',
    '''    s = text.strip()
    if not (_DATE_EXTENDED.match(s) or _DATE_BASIC.match(s)):
        raise ValueError(f"not an ISO-8601 date: {text!r}")
    s = s.replace("-", "")
    year, month, day = int(s[0:4]), int(s[4:6]), int(s[6:7])
''',
)

_ISODATE_TESTS = r'''import datetime as dt
import unittest

from iso_date import parse_iso_date, parse_iso_datetime


class ParseIsoDateTest(unittest.TestCase):
    def test_extended_format(self):
        self.assertEqual(parse_iso_date("2024-03-15"), dt.date(2024, 3, 15))

    def test_basic_format(self):
        self.assertEqual(parse_iso_date("20231231"), dt.date(2023, 12, 31))

    def test_whitespace_is_ignored(self):
        self.assertEqual(parse_iso_date("  1999-01-02\n"), dt.date(1999, 1, 2))

    def test_leap_day(self):
        self.assertEqual(parse_iso_date("2024-02-29"), dt.date(2024, 2, 29))
        with self.assertRaises(ValueError):
            parse_iso_date("2023-02-29")

    def test_rejects_garbage(self):
        for bad in ["", "2024-3-15", "15/03/2024", "2024-13-01", "2024-00-10", "abcd-ef-gh"]:
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    parse_iso_date(bad)


class ParseIsoDateTimeTest(unittest.TestCase):
    def test_naive(self):
        self.assertEqual(parse_iso_datetime("2024-03-15T10:20:30"),
                         dt.datetime(2024, 3, 15, 10, 20, 30))

    def test_utc(self):
        value = parse_iso_datetime("2024-03-15T10:20:30Z")
        self.assertEqual(value.utcoffset(), dt.timedelta(0))

    def test_offset_and_fraction(self):
        value = parse_iso_datetime("2024-03-15T10:20:30.25+05:30")
        self.assertEqual(value.microsecond, 250000)
        self.assertEqual(value.utcoffset(), dt.timedelta(hours=5, minutes=30))

    def test_minutes_only(self):
        self.assertEqual(parse_iso_datetime("2024-03-15 08:05"),
                         dt.datetime(2024, 3, 15, 8, 5))

    def test_rejects_bad_time(self):
        with self.assertRaises(ValueError):
            parse_iso_datetime("2024-03-15T25:00:00")


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# Word counter

_WORDCOUNT = r'''"""Count words in text."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Split text into lower-cased words, dropping punctuation."""
    return [w.lower() for w in _WORD.findall(text)]


def count_words(text: str) -> dict[str, int]:
    """Return a mapping word -> number of occurrences (case-insensitive)."""
    return dict(Counter(words(text)))


def total_words(text: str) -> int:
    return len(words(text))


def top_words(text: str, n: int) -> list[tuple[str, int]]:
    """The n most frequent words, ties broken alphabetically."""
    counts = count_words(text)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
'''

_WORDCOUNT_BUGGY = _WORDCOUNT.replace("[w.lower() for w in _WORD.findall(text)]",
                                      "list(_WORD.findall(text))")

_WORDCOUNT_TESTS = r'''import unittest

from wordcount import count_words, top_words, total_words


class WordCountTest(unittest.TestCase):
    def test_simple(self):
        self.assertEqual(count_words("one two two"), {"one": 1, "two": 2})

    def test_case_insensitive(self):
        self.assertEqual(count_words("The the THE cat"), {"the": 3, "cat": 1})

    def test_punctuation_and_whitespace(self):
        text = "Hello, world!\nHello...   world?\tgoodbye"
        self.assertEqual(count_words(text), {"hello": 2, "world": 2, "goodbye": 1})

    def test_apostrophes_stay_in_words(self):
        self.assertEqual(count_words("don't stop, don't"), {"don't": 2, "stop": 1})

    def test_empty(self):
        self.assertEqual(count_words(""), {})
        self.assertEqual(total_words("  \n "), 0)

    def test_total(self):
        self.assertEqual(total_words("a b, c. d!"), 4)

    def test_top_words_ties_alphabetical(self):
        text = "b a c b a d"
        self.assertEqual(top_words(text, 2), [("a", 2), ("b", 2)])
        self.assertEqual(top_words("Apple apple banana", 1), [("apple", 2)])


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# Palindromes

_PALINDROME = r'''"""Palindrome checks."""

from __future__ import annotations


def normalize(text: str) -> str:
    """Keep only letters and digits, case-folded."""
    return "".join(c.casefold() for c in text if c.isalnum())


def is_palindrome(text: str) -> bool:
    """True if text reads the same backwards, ignoring case, spaces and punctuation."""
    cleaned = normalize(text)
    return cleaned == cleaned[::-1]


def longest_palindrome(text: str) -> str:
    """The longest palindromic substring of text (exact characters, first one wins)."""
    best = ""
    for centre in range(len(text)):
        for lo, hi in ((centre, centre), (centre, centre + 1)):
            while lo >= 0 and hi < len(text) and text[lo] == text[hi]:
                lo -= 1
                hi += 1
            if hi - lo - 1 > len(best):
                best = text[lo + 1:hi]
    return best
'''

_PALINDROME_BUGGY = _PALINDROME.replace(
    'return "".join(c.casefold() for c in text if c.isalnum())',
    "return text.lower()",
)

_PALINDROME_TESTS = r'''import unittest

from palindrome import is_palindrome, longest_palindrome


class PalindromeTest(unittest.TestCase):
    def test_simple_words(self):
        self.assertTrue(is_palindrome("racecar"))
        self.assertTrue(is_palindrome("level"))
        self.assertFalse(is_palindrome("python"))

    def test_case_is_ignored(self):
        self.assertTrue(is_palindrome("RaceCar"))

    def test_punctuation_and_spaces_are_ignored(self):
        self.assertTrue(is_palindrome("A man, a plan, a canal: Panama"))
        self.assertTrue(is_palindrome("No 'x' in Nixon"))
        self.assertFalse(is_palindrome("A man, a plan, a canal: Suez"))

    def test_edge_cases(self):
        self.assertTrue(is_palindrome(""))
        self.assertTrue(is_palindrome("a"))
        self.assertTrue(is_palindrome("12321"))
        self.assertFalse(is_palindrome("ab"))

    def test_longest_palindrome(self):
        self.assertEqual(longest_palindrome("babad"), "bab")
        self.assertEqual(longest_palindrome("cbbd"), "bb")
        self.assertEqual(longest_palindrome("forgeeksskeegfor"), "geeksskeeg")
        self.assertEqual(longest_palindrome(""), "")


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# Roman numerals

_ROMAN = r'''"""Convert between integers and Roman numerals (1..3999)."""

from __future__ import annotations

import re

_TABLE = [
    (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"),
    (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
    (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
]
_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
_CANONICAL = re.compile(r"^M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})$")


def to_roman(number: int) -> str:
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError("number must be an int")
    if not 1 <= number <= 3999:
        raise ValueError("number must be between 1 and 3999")
    out = []
    for value, numeral in _TABLE:
        count, number = divmod(number, value)
        out.append(numeral * count)
    return "".join(out)


def from_roman(numeral: str) -> int:
    s = numeral.strip().upper()
    if not s or not _CANONICAL.match(s):
        raise ValueError(f"not a valid Roman numeral: {numeral!r}")
    total = 0
    for i, ch in enumerate(s):
        value = _VALUES[ch]
        if i + 1 < len(s) and _VALUES[s[i + 1]] > value:
            total -= value
        else:
            total += value
    return total
'''

_ROMAN_BUGGY = _ROMAN.replace(
    '''_TABLE = [
    (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"),
    (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
    (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
]''',
    '''_TABLE = [
    (1000, "M"), (500, "D"), (100, "C"), (50, "L"),
    (10, "X"), (5, "V"), (1, "I"),
]''',
).replace('''        if i + 1 < len(s) and _VALUES[s[i + 1]] > value:
            total -= value
        else:
            total += value''', '''        total += value''')

_ROMAN_TESTS = r'''import unittest

from roman_numerals import from_roman, to_roman


class RomanTest(unittest.TestCase):
    KNOWN = {
        1: "I", 3: "III", 4: "IV", 9: "IX", 14: "XIV", 40: "XL", 90: "XC",
        400: "CD", 944: "CMXLIV", 1994: "MCMXCIV", 2024: "MMXXIV", 3999: "MMMCMXCIX",
    }

    def test_to_roman_known_values(self):
        for number, numeral in self.KNOWN.items():
            with self.subTest(number=number):
                self.assertEqual(to_roman(number), numeral)

    def test_from_roman_known_values(self):
        for number, numeral in self.KNOWN.items():
            with self.subTest(numeral=numeral):
                self.assertEqual(from_roman(numeral), number)

    def test_round_trip(self):
        for number in range(1, 4000):
            self.assertEqual(from_roman(to_roman(number)), number)

    def test_lower_case_accepted(self):
        self.assertEqual(from_roman("xlii"), 42)

    def test_out_of_range(self):
        for bad in (0, -1, 4000):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    to_roman(bad)
        with self.assertRaises(TypeError):
            to_roman(2.5)

    def test_invalid_numerals(self):
        for bad in ("", "IIII", "VX", "ABC", "MMMM"):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    from_roman(bad)


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# Fibonacci

_FIBONACCI = r'''"""Fibonacci numbers, with F(0) = 0 and F(1) = 1."""

from __future__ import annotations


def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n must be an int")
    if n < 0:
        raise ValueError("n must be >= 0")
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def fibonacci_sequence(count: int) -> list[int]:
    """Return the first `count` Fibonacci numbers."""
    if count < 0:
        raise ValueError("count must be >= 0")
    out = []
    a, b = 0, 1
    for _ in range(count):
        out.append(a)
        a, b = b, a + b
    return out
'''

_FIBONACCI_BUGGY = _FIBONACCI.replace(
    """    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a""",
    """    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return a""",
)

_FIBONACCI_TESTS = r'''import unittest

from fibonacci import fibonacci, fibonacci_sequence


class FibonacciTest(unittest.TestCase):
    def test_base_cases(self):
        self.assertEqual(fibonacci(0), 0)
        self.assertEqual(fibonacci(1), 1)
        self.assertEqual(fibonacci(2), 1)

    def test_known_values(self):
        self.assertEqual(fibonacci(10), 55)
        self.assertEqual(fibonacci(20), 6765)
        self.assertEqual(fibonacci(90), 2880067194370816120)

    def test_sequence(self):
        self.assertEqual(fibonacci_sequence(10), [0, 1, 1, 2, 3, 5, 8, 13, 21, 34])
        self.assertEqual(fibonacci_sequence(0), [])

    def test_sequence_agrees_with_fibonacci(self):
        self.assertEqual(fibonacci_sequence(30), [fibonacci(i) for i in range(30)])

    def test_invalid_input(self):
        with self.assertRaises(ValueError):
            fibonacci(-1)
        with self.assertRaises(TypeError):
            fibonacci(2.0)


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# Stack

_STACK = r'''"""A last-in, first-out stack."""

from __future__ import annotations

from typing import Any, Iterable, Iterator


class Stack:
    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items = list(items)

    def push(self, item: Any) -> None:
        self._items.append(item)

    def pop(self) -> Any:
        if not self._items:
            raise IndexError("pop from empty stack")
        return self._items.pop()

    def peek(self) -> Any:
        if not self._items:
            raise IndexError("peek at empty stack")
        return self._items[-1]

    def is_empty(self) -> bool:
        return not self._items

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        """Iterate from the top of the stack to the bottom."""
        return reversed(self._items)

    def __repr__(self) -> str:
        return f"Stack({self._items!r})"
'''

_STACK_BUGGY = _STACK.replace("return self._items.pop()", "return self._items.pop(0)").replace(
    "return self._items[-1]", "return self._items[0]"
)

_STACK_TESTS = r'''import unittest

from stack import Stack


class StackTest(unittest.TestCase):
    def test_lifo_order(self):
        s = Stack()
        for item in (1, 2, 3):
            s.push(item)
        self.assertEqual([s.pop(), s.pop(), s.pop()], [3, 2, 1])

    def test_peek_does_not_remove(self):
        s = Stack([1, 2])
        self.assertEqual(s.peek(), 2)
        self.assertEqual(len(s), 2)

    def test_empty(self):
        s = Stack()
        self.assertTrue(s.is_empty())
        with self.assertRaises(IndexError):
            s.pop()
        with self.assertRaises(IndexError):
            s.peek()

    def test_len_and_clear(self):
        s = Stack("abc")
        self.assertEqual(len(s), 3)
        s.clear()
        self.assertTrue(s.is_empty())

    def test_iteration_top_first(self):
        self.assertEqual(list(Stack([1, 2, 3])), [3, 2, 1])


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# CSV column sums

_CSVSUM = r'''"""Sum numeric columns of CSV text (first row is the header)."""

from __future__ import annotations

import csv
import io


def _rows(text: str) -> tuple[list[str], list[list[str]]]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if not rows:
        return [], []
    header = [h.strip() for h in rows[0]]
    return header, rows[1:]


def sum_column(text: str, column: str) -> float:
    """Sum the values of `column`; blank cells are skipped, a non-number raises ValueError."""
    header, rows = _rows(text)
    if column not in header:
        raise KeyError(column)
    index = header.index(column)
    total = 0.0
    for row in rows:
        cell = row[index].strip() if index < len(row) else ""
        if cell:
            total += float(cell)
    return total


def sum_all_columns(text: str) -> dict[str, float]:
    """Sum every column whose non-blank cells are all numbers."""
    header, _ = _rows(text)
    out = {}
    for name in header:
        try:
            out[name] = sum_column(text, name)
        except ValueError:
            continue
    return out
'''

_CSVSUM_BUGGY = _CSVSUM.replace("return header, rows[1:]", "return header, rows[2:]")

_CSVSUM_TESTS = r'''import unittest

from csv_sum import sum_all_columns, sum_column

DATA = """name,qty,price
apple,3,1.5
pear,2,0.25
"fig, dried",5,2
"""


class CsvSumTest(unittest.TestCase):
    def test_sum_column(self):
        self.assertEqual(sum_column(DATA, "qty"), 10)
        self.assertAlmostEqual(sum_column(DATA, "price"), 3.75)

    def test_quoted_commas(self):
        self.assertEqual(sum_column(DATA, "qty"), 10.0)

    def test_blank_cells_skipped(self):
        self.assertEqual(sum_column("a,b\n1,\n,2\n3,4\n", "a"), 4)

    def test_missing_column(self):
        with self.assertRaises(KeyError):
            sum_column(DATA, "weight")

    def test_non_numeric(self):
        with self.assertRaises(ValueError):
            sum_column(DATA, "name")

    def test_all_columns(self):
        self.assertEqual(sum_all_columns(DATA), {"qty": 10.0, "price": 3.75})

    def test_header_only(self):
        self.assertEqual(sum_column("qty\n", "qty"), 0)


if __name__ == "__main__":
    unittest.main()
'''

# --------------------------------------------------------------------------------------------
# Generic fallback: a text helper whose test also pins the word count of the goal.

_GENERIC = r'''"""Small text helpers: slugify and word count."""

from __future__ import annotations

import re
import unicodedata


def slugify(text: str, max_length: int = 60) -> str:
    """Lower-case ASCII words joined by single dashes, at most max_length characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_length:
        slug = slug[:max_length].rstrip("-")
    return slug


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())
'''

_GENERIC_BUGGY = _GENERIC.replace(
    'slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")',
    'slug = re.sub(r"[^a-z0-9]", "-", ascii_text.lower()).strip("-")',
)

_GENERIC_TESTS = r'''import re
import unittest

from text_helpers import slugify, word_count

GOAL = __GOAL_REPR__


class SlugifyTest(unittest.TestCase):
    def test_basic(self):
        self.assertEqual(slugify("Hello, World!"), "hello-world")

    def test_collapses_separators(self):
        self.assertEqual(slugify("  Multiple   spaces -- here "), "multiple-spaces-here")

    def test_accents_removed(self):
        self.assertEqual(slugify("Café au lait"), "cafe-au-lait")

    def test_empty(self):
        self.assertEqual(slugify(""), "")
        self.assertEqual(slugify("!!!"), "")

    def test_max_length(self):
        slug = slugify("word " * 50, max_length=20)
        self.assertLessEqual(len(slug), 20)
        self.assertFalse(slug.endswith("-"))

    def test_goal_slug_is_well_formed(self):
        self.assertRegex(slugify(GOAL), r"^([a-z0-9]+(-[a-z0-9]+)*)?$")


class WordCountTest(unittest.TestCase):
    def test_simple(self):
        self.assertEqual(word_count("one two  three\nfour"), 4)
        self.assertEqual(word_count("   "), 0)

    def test_goal_word_count(self):
        self.assertEqual(word_count(GOAL), __GOAL_WORDS__)


if __name__ == "__main__":
    unittest.main()
'''


CATALOG: tuple[CatalogItem, ...] = (
    CatalogItem(
        key="fizzbuzz",
        title="FizzBuzz function",
        module="fizzbuzz",
        summary="Implement FizzBuzz for 1..n: multiples of 3 are 'Fizz', of 5 'Buzz', of both "
        "'FizzBuzz', other numbers their decimal string.",
        api="`fizzbuzz(n) -> list[str]` (ValueError for n < 0) and `fizzbuzz_value(i) -> str`",
        keywords=(r"fizz\s*-?\s*buzz",),
        source=_FIZZBUZZ,
        tests=_FIZZBUZZ_TESTS,
        buggy_source=_FIZZBUZZ_BUGGY,
        bug_note="iterates range(1, n), so the last number is missing (off-by-one)",
    ),
    CatalogItem(
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
        source=_ISODATE,
        tests=_ISODATE_TESTS,
        buggy_source=_ISODATE_BUGGY,
        bug_note="slices the day as s[6:7] instead of s[6:8] (off-by-one)",
    ),
    CatalogItem(
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
        source=_WORDCOUNT,
        tests=_WORDCOUNT_TESTS,
        buggy_source=_WORDCOUNT_BUGGY,
        bug_note="forgets to lower-case words, so counting is case-sensitive",
    ),
    CatalogItem(
        key="palindrome",
        title="Palindrome checker",
        module="palindrome",
        summary="Check whether text is a palindrome ignoring case, spaces and punctuation, and "
        "find the longest palindromic substring.",
        api="`is_palindrome(text) -> bool` and `longest_palindrome(text) -> str`",
        keywords=(r"palindrom",),
        source=_PALINDROME,
        tests=_PALINDROME_TESTS,
        buggy_source=_PALINDROME_BUGGY,
        bug_note="does not strip spaces and punctuation before comparing",
    ),
    CatalogItem(
        key="roman",
        title="Roman numeral converter",
        module="roman_numerals",
        summary="Convert integers 1..3999 to Roman numerals and back, with subtractive "
        "notation; reject out-of-range numbers and malformed numerals.",
        api="`to_roman(number) -> str` and `from_roman(numeral) -> int`",
        keywords=(r"\broman\b",),
        source=_ROMAN,
        tests=_ROMAN_TESTS,
        buggy_source=_ROMAN_BUGGY,
        bug_note="has no subtractive pairs, so 4 becomes 'IIII' and 'IV' reads as 6",
    ),
    CatalogItem(
        key="fibonacci",
        title="Fibonacci numbers",
        module="fibonacci",
        summary="Compute Fibonacci numbers iteratively with F(0)=0, F(1)=1.",
        api="`fibonacci(n) -> int` and `fibonacci_sequence(count) -> list[int]`",
        keywords=(r"fibonacci", r"\bfib\b"),
        source=_FIBONACCI,
        tests=_FIBONACCI_TESTS,
        buggy_source=_FIBONACCI_BUGGY,
        bug_note="loops n - 1 times, so fibonacci(n) returns F(n-1) (off-by-one)",
    ),
    CatalogItem(
        key="stack",
        title="Stack class",
        module="stack",
        summary="Implement a LIFO stack class.",
        api="`class Stack` with push, pop, peek (IndexError when empty), is_empty, clear, "
        "len() and iteration from top to bottom",
        keywords=(r"\bstack\b", r"\blifo\b"),
        source=_STACK,
        tests=_STACK_TESTS,
        buggy_source=_STACK_BUGGY,
        bug_note="pops from the bottom of the list, so it behaves as a queue",
    ),
    CatalogItem(
        key="csv_sum",
        title="CSV column summer",
        module="csv_sum",
        summary="Sum numeric columns of CSV text whose first row is a header; quoted fields, "
        "blank cells and non-numeric columns are handled.",
        api="`sum_column(text, column) -> float` (KeyError for a missing column, ValueError "
        "for non-numbers) and `sum_all_columns(text) -> dict[str, float]`",
        keywords=(r"\bcsv\b",),
        source=_CSVSUM,
        tests=_CSVSUM_TESTS,
        buggy_source=_CSVSUM_BUGGY,
        bug_note="skips the first data row together with the header (off-by-one)",
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
    source=_GENERIC,
    tests=_GENERIC_TESTS,
    buggy_source=_GENERIC_BUGGY,
    bug_note="does not collapse runs of separators into one dash",
)

BY_KEY: dict[str, CatalogItem] = {item.key: item for item in (*CATALOG, GENERIC)}


def match_all(text: str) -> list[CatalogItem]:
    """Every catalog item named in ``text``, in order of first mention."""
    hits = [(pos, i, item) for i, item in enumerate(CATALOG)
            if (pos := item.first_match(text)) is not None]
    return [item for _, _, item in sorted(hits, key=lambda h: (h[0], h[1]))]


def by_title(title: str | None) -> CatalogItem | None:
    """The item (GENERIC included) whose own title starts ``title``, as plans write them."""
    t = (title or "").strip().lower()
    for item in (*CATALOG, GENERIC):
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
    return _GENERIC_TESTS.replace("__GOAL_REPR__", repr(goal)).replace(
        "__GOAL_WORDS__", str(len(goal.split()))
    )

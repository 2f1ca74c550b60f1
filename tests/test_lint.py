"""Guard rails: ruff's rule set (pyproject.toml, ``[tool.ruff.lint]``) holds, and every ``noqa`` says why.

``ruff check services tests bench scripts`` must pass: a finding is fixed, or silenced on its line with
the rule's code and the reason after it (``# noqa: BLE001 - a consumer loop never dies of one error``).
A bare ``noqa``, one without a code or without a reason, and a file-wide ``ruff: noqa`` fail here.
RUF100 (on in the rule set) reports a ``noqa`` that no longer silences anything.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINTED = ("services", "tests", "bench", "scripts")
GENERATED = re.compile(r"^services/coo/v1/.*_pb2(_grpc)?\.pyi?$")   # `make proto`'s output, not linted

# The word spelled so that this file's own source holds no such comment.
_NOQA = "no" + "qa"
_ANY = re.compile(rf"#\s*(?:ruff\s*:\s*|flake8\s*:\s*)?{_NOQA}\b", re.IGNORECASE)
# the word, a colon, a code for each rule silenced (comma-separated), then a dash and the reason
_GOOD = re.compile(rf"#\s*{_NOQA}:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*\s+-\s+\S")


def test_ruff_passes():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"ruff check {' '.join(LINTED)} (rules: pyproject.toml):\n{res.stdout}{res.stderr}"


def _python_files() -> list[Path]:
    files = []
    for top in LINTED:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not GENERATED.match(rel) and "/.venv/" not in f"/{rel}" and "__pycache__" not in rel:
                files.append(path)
    return files


def _bad_noqa(source: str) -> list[tuple[int, str]]:
    """(line, comment) of each noqa comment (comments only: strings are not looked at) lacking a code or a reason."""
    bad = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and _ANY.search(tok.string):
            at = _ANY.search(tok.string)
            if not _GOOD.match(tok.string[at.start():]):
                bad.append((tok.start[0], tok.string))
    return bad


def test_every_noqa_names_its_rule_and_says_why():
    files = _python_files()
    assert len(files) > 100, files   # the walk found the code
    bad = [f"{path.relative_to(REPO)}:{line}: {comment}"
           for path in files for line, comment in _bad_noqa(path.read_text(encoding="utf-8"))]
    assert not bad, f"each {_NOQA} needs its code(s) and a reason (`# {_NOQA}: BLE001 - why`):\n" + "\n".join(bad)


def test_the_noqa_check_tells_good_from_bad():
    n = _NOQA
    good = [f"x = 1  # {n}: BLE001 - why", f"x = 1  # {n}: E402, F401 - after sys.path", f"x = 1  # c  # {n}: S105 - w"]
    bad = [f"x = 1  # {n}", f"x = 1  # {n}: BLE001", f"x = 1  # {n}:BLE001 why", f"x = 1  # {n}: - why",
           f"# ruff: {n}", f"# flake8: {n}", f"x = 1  # {n.upper()}: E501", f"x = 1  # {n}: E501 -"]
    for line in good:
        assert _bad_noqa(line + "\n") == [], line
    for line in bad:
        assert _bad_noqa(line + "\n"), line
    assert _bad_noqa(f's = "# {n}"\n') == []   # in a string: not a comment

"""gitleaks' default rules, translated by scripts/gen_gitleaks_rules.py into
services/coo/common/gitleaks_rules.py (checked in): the copy is current, the translation keeps each
rule's meaning, and its prefilter words are sound (a rule skipped for lack of them could not match).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coo.common import gitleaks_rules as gl
from coo.common import secret_patterns as sp

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "scripts" / "gen_gitleaks_rules.py"


def _gen():
    spec = importlib.util.spec_from_file_location("gen_gitleaks_rules", GEN)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_gitleaks_rules"] = module
    spec.loader.exec_module(module)
    return module


def test_checked_in_rules_are_current():
    """Regenerates from the pinned module (go mod download, checksum-verified) and compares."""
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain: the gitleaks module cannot be fetched here")
    r = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr or r.stdout


def test_a_stale_copy_is_detected(tmp_path):
    gen = _gen()
    toml = tmp_path / "gitleaks.toml"
    toml.write_text('[[rules]]\nid = "demo-token"\n'
                    'regex = \'\'\'\\b(demo_[a-z0-9]{20})\\b\'\'\'\nkeywords = ["demo_"]\n')
    out = tmp_path / "rules.py"
    assert gen.main(["--toml", str(toml), "--out", str(out)]) == 0
    assert gen.main(["--toml", str(toml), "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "# edited\n")
    assert gen.main(["--toml", str(toml), "--out", str(out), "--check"]) == 1


def test_the_table_is_pinned_and_large():
    assert gl.GITLEAKS_VERSION.startswith("v8.")
    assert gl.GITLEAKS_MODULE_SUM.startswith("h1:")
    assert len(gl.RULES) >= 200
    assert len({k for k, *_ in gl.RULES}) >= 190
    skipped = dict(gl.SKIPPED)
    assert "generic-api-key" in skipped and "sourcegraph-access-token" in skipped
    # every rule is in the scrubber's table, after the key/value rules and before our own tokens
    names = [s.name for s in sp.PATTERN_SPECS]
    first = names.index("gitleaks:" + gl.RULES[0][0] + ":0")
    assert names.index("kv_bare") < first < names.index("nats_nkey_seed")


@pytest.mark.parametrize("source,expected", [
    # a mid-pattern global flag becomes a scoped group, to the end of its group
    (r"\b(p8e-(?i)[a-z0-9]{4})(?:[;]|$)", r"\b(?P<secret>p8e-(?i:[a-z0-9]{4}))(?P<post>(?:[;]|$))"),
    # POSIX classes are spelled out; \z is $; \s stays on one line
    (r"\b(pat[[:alnum:]]{3})\z", r"\b(?P<secret>pat[A-Za-z0-9]{3})(?P<post>$)"),
    (r"key\s*=\s*([a-f0-9]{8})", r"(?P<pre>key[ \t\r\f]*=[ \t\r\f]*)(?P<secret>[a-f0-9]{8})"),
    # negated classes never cross a line
    (r"x([^\w-]{2})", r"(?P<pre>x)(?P<secret>[^\n\w-]{2})"),
    # the lazy context prefix is dropped (it only widened the kept text); other groups stop capturing
    (r"(?i)[\w.-]{0,50}?(?:acme)[a-z]?=([a-z]{5})", r"(?i)(?P<pre>(?:acme)[a-z]?=)(?P<secret>[a-z]{5})"),
    # no capture group: the whole match is the secret
    (r"AGE-SECRET-KEY-1[QPZ]{3}", r"AGE-SECRET-KEY-1[QPZ]{3}"),
])
def test_translation(source, expected):
    gen = _gen()
    (rule,) = gen.translate({"id": "t", "regex": source})
    assert rule.regex == expected
    re.compile(rule.regex, re.ASCII)


def test_alternatives_become_separate_rules_and_secret_group_is_honoured():
    gen = _gen()
    rules = gen.translate({"id": "t", "regex": r"(?i)(?:foo)=([a-z]{4})|\b(bar_[0-9]{4})"})
    assert [r.regex for r in rules] == [r"(?i)(?P<pre>(?:foo)=)(?P<secret>[a-z]{4})", r"(?i)\b(?P<secret>bar_[0-9]{4})"]
    (r,) = gen.translate({"id": "t", "regex": r"(sonar[_.-]?(login|token))=([a-z]{4})", "secretGroup": 3})
    assert r.regex == r"(?P<pre>(?:sonar[_.-]?(?:login|token))=)(?P<secret>[a-z]{4})"
    assert set(r.triggers) == {w + "=" for w in ("sonarlogin", "sonar_login", "sonar.login", "sonar-login",
                                                 "sonartoken", "sonar_token", "sonar.token", "sonar-token")}


_RULES = list(gl.RULES)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_prefilter_words_are_sound(data):
    """Every string a rule matches contains one of its trigger words, and starts with one of its
    start words: skipping a rule on their absence never changes the output."""
    kind, regex, triggers, starts = data.draw(st.sampled_from(_RULES))
    text = data.draw(st.from_regex(re.compile(regex, re.ASCII), fullmatch=True))
    m = re.compile(regex, re.ASCII).fullmatch(text)
    assert m is not None
    low = text.lower()
    if triggers:
        assert any(w in low for w in triggers), (kind, text)
    if starts:
        assert low.startswith(tuple(starts)), (kind, text)

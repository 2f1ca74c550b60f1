"""The secret scrubber (coo.common.scrub), its pattern table and the collector rule generator.

Every fake secret below is assembled at run time (prefix + generated body) so that no
secret-shaped literal sits in the repository.
"""

from __future__ import annotations

import base64
import collections
import functools
import importlib.util
import io
import json
import os
import random
import re
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coo.common import scrub as scrub_mod
from coo.common import secret_patterns as sp
from coo.common.scrub import (
    CYCLE_MARKER,
    PII_PATTERNS,
    SECRET_KEY_PATTERN,
    SECRET_MARKER,
    SECRET_PATTERNS,
    is_secret_key,
    naive_scrub_text,
    scrub,
    scrub_stream,
    scrub_text,
    structlog_processor,
)

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "scripts" / "gen_collector_redaction.py"

_R = random.Random(20261121)
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


def rnd(n: int, alphabet: str = ALNUM) -> str:
    return "".join(_R.choice(alphabet) for _ in range(n))


def b64url(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def fake_jwt() -> str:
    return ".".join([b64url({"alg": "HS256", "typ": "JWT"}),
                     b64url({"sub": "1234567890", "name": "Jane Doe", "iat": 1516239022}), rnd(43, URLSAFE)])


def pem(kind: str = "RSA ") -> str:
    body = "\n".join(rnd(64, B64) for _ in range(6)) + "\n" + rnd(20, B64) + "=="
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"                       # AWS's documented example id
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"  # AWS's documented example secret
GHP = "ghp_" + rnd(36)
OPENAI = "sk-proj-" + rnd(74, URLSAFE) + "T3Blbk" + "FJ" + rnd(20)
ANTHROPIC = "sk-ant-api03-" + rnd(93, URLSAFE) + "AA"
JWT = fake_jwt()
PEM = pem()

# (kind expected in the marker, text, the secret part that must disappear)
SECRETS: list[tuple[str, str, str]] = [
    ("aws_access_key", f"aws_access_key_id={AWS_ID}", AWS_ID),
    ("aws_access_key", f"using key {AWS_ID} for s3", AWS_ID),
    ("aws_access_key", "ASIA" + rnd(16, string.ascii_uppercase + "234567"), "ASIA"),
    ("secret", f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
    ("secret", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", AWS_SECRET),
    ("aws_secret_key", f"aws_secret_key_id: {AWS_SECRET}", AWS_SECRET),
    ("gcp_api_key", "key AIza" + (g := rnd(35, URLSAFE)), g),
    ("google_oauth", "ya29." + (g := rnd(60, URLSAFE)), g),
    ("secret", "DefaultEndpointsProtocol=https;AccountName=coo;AccountKey=" + (a := rnd(86, B64) + "==")
     + ";EndpointSuffix=core.windows.net", a),
    ("secret", "Endpoint=sb://coo.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey="
     + (a := rnd(43, B64) + "="), a),
    ("azure_client_secret", "client " + (a := rnd(3) + "8Q~" + rnd(34, ALNUM + "_~.-")), a),
    ("github_token", f"cloned with {GHP}", GHP),
    ("github_token", "gho_" + (g := rnd(36)), g),
    ("github_token", "ghu_" + (g := rnd(36)), g),
    ("github_token", "ghs_" + (g := rnd(36)), g),
    ("github_token", "ghr_" + (g := rnd(36)), g),
    ("github_token", "github_pat_" + (g := rnd(22) + "_" + rnd(59)), g),
    ("gitlab_token", "glpat-" + (g := rnd(20, URLSAFE)), g),
    ("secret", "CIRCLE_TOKEN=" + (c := rnd(40, HEX)), c),
    ("secret", "TRAVIS_API_TOKEN: " + (c := rnd(22)), c),
    ("slack_token", "xoxb-" + (x := rnd(12, string.digits) + "-" + rnd(13, string.digits) + "-" + rnd(24)), x),
    ("slack_token", "xoxp-" + (x := rnd(12, string.digits) + "-" + rnd(12, string.digits) + "-" + rnd(32, HEX)), x),
    ("slack_token", "xoxa-2-" + (x := rnd(30)), x),
    ("slack_token",
     "xapp-1-" + (x := "A0" + rnd(9) + "-" + rnd(13, string.digits) + "-" + rnd(64, HEX)), x),
    ("slack_webhook",
     "POST https://hooks.slack.com/services/" + (w := "T0" + rnd(8) + "/B0" + rnd(8) + "/" + rnd(24)), w),
    ("discord_webhook",
     "https://discord.com/api/webhooks/" + rnd(18, string.digits) + "/" + (w := rnd(68, URLSAFE)), w),
    ("discord_token", "bot " + (d := "MT" + rnd(24, URLSAFE) + "." + rnd(6, URLSAFE) + "." + rnd(38, URLSAFE)), d),
    ("telegram_bot_token", "tg " + (t := rnd(10, string.digits) + ":AA" + rnd(33, URLSAFE)), t),
    ("openai_key", f"OpenAI({OPENAI!r})", OPENAI),
    ("openai_key", "sk-" + (o := rnd(48)), o),
    ("anthropic_key", f"key {ANTHROPIC}", ANTHROPIC),
    ("openrouter_key", "sk-or-v1-" + (o := rnd(64, HEX)), o),
    ("groq_key", "gsk_" + (o := rnd(52)), o),
    ("huggingface_token", "hf_" + (o := rnd(34, string.ascii_letters)), o),
    ("xai_key", "xai-" + (o := rnd(80)), o),
    ("perplexity_key", "pplx-" + (o := rnd(48)), o),
    ("replicate_token", "r8_" + (o := rnd(37)), o),
    ("stripe_key", "sk_live_" + (k := rnd(24)), k),
    ("stripe_key", "rk_live_" + (k := rnd(24)), k),
    ("stripe_key", "sk_test_" + (k := rnd(24)), k),
    ("stripe_key", "pk_live_" + (k := rnd(24)), k),
    ("stripe_webhook_secret", "whsec_" + (k := rnd(32)), k),
    ("sendgrid_key", "SG." + (k := rnd(22, URLSAFE) + "." + rnd(43, URLSAFE)), k),
    ("twilio_key", "SK" + (k := rnd(32, HEX)), k),
    ("secret", "//registry.npmjs.org/:_authToken=npm_" + (k := rnd(36)), k),
    ("npm_token", "npm_" + (k := rnd(36)), k),
    ("pypi_token", "pypi-AgEIcHlwaS5vcmc" + (k := rnd(70, URLSAFE)), k),
    ("api_token", "vault hvs." + (k := rnd(95, URLSAFE)), k),
    ("jwt", f"id_token {JWT} received", JWT),
    ("private_key", f"key:\n{PEM}\ndone", PEM.splitlines()[3]),
    ("private_key", pem("OPENSSH "), "OPENSSH PRIVATE KEY-----\n"),
    ("private_key", pem("EC "), "EC PRIVATE KEY-----\n"),
    ("private_key", pem(""), "PRIVATE KEY-----\n"),
    ("private_key", json.dumps({"key": PEM}), PEM.splitlines()[2]),           # JSON-escaped \n
    ("url_password", "postgres://app:" + (p := rnd(16)) + "@db.internal:5432/coo", p),
    ("url_password", "mysql+pymysql://root:" + (p := rnd(12) + "%40x") + "@127.0.0.1/db", p),
    ("url_password", "redis://:" + (p := rnd(20)) + "@cache:6379/0", p),
    ("url_password", "amqp://guest:" + (p := "p@ss:w0rd" + rnd(4)) + "@rabbit/", p),
    ("secret", "Server=tcp:db.windows.net,1433;User ID=sa;Password=" + (p := "P@ss" + rnd(10)) + ";Encrypt=yes", p),
    ("secret", "Driver={SQL};Uid=sa;Pwd=" + (p := rnd(12)) + ";", p),
    ("secret", "Authorization: Bearer " + (b := rnd(40, URLSAFE)), b),
    ("secret", "authorization: Basic " + (b := base64.b64encode(b"user:" + rnd(12).encode()).decode()), b),
    ("secret", '-H "Authorization: Token ' + (b := rnd(40, HEX)) + '"', b),
    ("bearer_token", "sending Bearer " + (b := rnd(48, URLSAFE)) + " upstream", b),
    ("secret", "password=" + (p := rnd(14)), p),
    ("secret", "db_password: " + (p := rnd(14)), p),
    ("secret", "DB_PASS=" + (p := rnd(14)), p),
    ("secret", '{"password": "' + (p := rnd(8) + ' with spaces') + '"}', p),
    ("secret", "{'client_secret': '" + (p := rnd(30)) + "'}", p),
    ("secret", '{"api_key": "' + (p := rnd(30)) + '"}', p),
    ("secret", "X-Api-Key: " + (p := rnd(32)), p),
    ("secret", "apiKey=" + (p := rnd(32)), p),
    ("secret", "accessToken := \"" + (p := rnd(32)) + "\"", p),
    ("secret", "refresh_token=" + (p := rnd(32)) + "&scope=all", p),
    ("secret", "https://x.test/cb?code=1&access_token=" + (p := rnd(32)) + "&state=2", p),
    ("secret", "sessionid=" + (p := rnd(32, HEX)) + "; Path=/", p),
    ("secret", "Cookie: session=" + (p := rnd(20)) + "; theme=dark; csrftoken=" + rnd(10), p),
    ("secret", "Set-Cookie: sid=" + (p := rnd(20)) + "; HttpOnly", p),
    ("secret", "credentials: " + (p := rnd(20)), p),
    ("secret", "PRIVATE_KEY=" + (p := rnd(40, B64)), p),
    ("secret", "--password " + (p := rnd(12)) + " --verbose", p),
    ("secret", "mysql --user=root --password=" + (p := rnd(12)), p),
    ("secret", "token=42", "42"),
    ("secret", '{"token": 4242}', "4242"),
    ("secret", '{\\"password\\": \\"' + (p := rnd(12)) + '\\"}', p),                   # JSON inside a JSON string
    ("secret", "https://blob.core.windows.net/c/f?sv=2022&sig=" + (p := rnd(20) + "%2B" + rnd(10)), p),
]

# Shapes our own rules named first and gitleaks' default rules (applied before them) now name.
GITLEAKS_KINDS = {
    "aws_access_key": ("aws-access-token",), "gcp_api_key": ("gcp-api-key",),
    "azure_client_secret": ("azure-ad-client-secret",),
    "github_token": ("github-pat", "github-oauth", "github-app-token", "github-refresh-token",
                     "github-fine-grained-pat"),
    "gitlab_token": ("gitlab-pat",), "slack_token": ("slack-bot-token", "slack-user-token", "slack-app-token",
                                                      "slack-legacy-workspace-token", "slack-config-access-token"),
    "anthropic_key": ("anthropic-api-key",), "huggingface_token": ("huggingface-access-token",),
    "perplexity_key": ("perplexity-api-key",), "stripe_key": ("stripe-access-token",),
    "sendgrid_key": ("sendgrid-api-token",), "twilio_key": ("twilio-api-key",), "npm_token": ("npm-access-token",),
    "pypi_token": ("pypi-upload-token",), "api_token": ("vault-service-token",), "openai_key": ("openai-api-key",),
    "slack_webhook": ("slack-webhook-url",), "jwt": ("jwt",), "discord_webhook": ("discord-webhook",),
}

ORDINARY = [
    "the token count was 42",
    "input_tokens=1234 output_tokens=56 max_tokens=4096 total_tokens: 1290",
    '{"gen_ai.usage.input_tokens": 12, "token_count": 3, "tokenizer": "cl100k_base"}',
    "uuid 123e4567-e89b-12d3-a456-426614174000 and 8c5f2f1e-0d5b-4c3e-9f77-1a2b3c4d5e6f",
    "commit 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12 (HEAD -> main)",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 sampled=1",
    "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "/home/coo/.cache/coo/tools/otelcol-51843f2a5e46/otelcol-coo --config ./observability/otelcol/config.yaml",
    r"C:\Users\coo\AppData\Local\Temp\x.log",
    "2026-11-21T10:00:00.123456Z 2026-11-21 10:00:00,123 +0000 12:30:45",
    "numbers: 3.14159 42 -7 1e10 0x1F 1,234,567.89 99%",
    "the payload dGhpcyBpcyBhIHRlc3Q= was base64 and so is SGVsbG8gV29ybGQh",
    "Traceback (most recent call last):\n  File \"/app/coo/agent/run.py\", line 42, in <module>\n"
    "    main()\n  File \"/app/coo/agent/run.py\", line 10, in main\n    raise ValueError(\"bad input\")\n"
    "ValueError: bad input",
    "GET https://example.com/v1/missions?limit=10&offset=20 HTTP/1.1 200",
    "http://localhost:8090/v1/chat/completions and nats://nats.internal:4222",
    "author: Jane, secret_name: db-creds, password_file=/run/secrets/db, auth_method=oauth2",
    "Passed 12 tests; tokens are counted per request; the secret is safe",
    "timezone Asia/Tokyo, SKU-1234, task-queue, sk-learn-compatible",
    "mission m-1f7cd5bb: status=running cost_usd=0.0123 retries=2",
    "model gpt-4o-mini temperature=0.2 top_p=1",
    "if token == None: return",
    "let auth::Error = x;",
    "[REDACTED:secret] stays [REDACTED:github_token]",
    "",
    "   ",
    "ünïcødé ✓ 中文 emoji 🎉",
]

PII_SAMPLES = [
    ("email", "contact jane.doe+coo@example.co.uk now", "jane.doe+coo@example.co.uk"),
    ("ipv4", "from 192.168.10.254:8080", "192.168.10.254"),
    ("phone", "call +1 555 123 4567", "555 123 4567"),
    ("phone", "call +44 20 7946 0958", "7946 0958"),
    ("phone", "call (555) 123-4567", "123-4567"),
    ("phone", "call 555-123-4567", "555-123-4567"),
    ("phone", "call +4915112345678", "4915112345678"),
    ("ssn", "ssn 123-45-6789", "123-45-6789"),
]


# --------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("kind,text,secret", SECRETS, ids=[f"{i}-{s[0]}" for i, s in enumerate(SECRETS)])
def test_secret_formats_are_redacted(kind, text, secret):
    out = scrub_text(text)
    assert secret not in out, out
    assert any(f"[REDACTED:{k}]" in out for k in (kind, *GITLEAKS_KINDS.get(kind, ()))), out
    assert naive_scrub_text(text) == out
    assert scrub_text(out) == out


def test_context_is_kept():
    assert scrub_text("postgres://app:pw123@db.internal:5432/coo") == "postgres://app:[REDACTED:url_password]@db.internal:5432/coo"
    assert scrub_text("db: password=hunter2 user=bob") == "db: password=[REDACTED:secret] user=bob"
    # at the start of a line (env file, YAML, header) the value runs to the end of the line
    assert scrub_text("password=hunter2 user=bob") == "password=[REDACTED:secret]"
    assert scrub_text("  password: two words") == "  password: [REDACTED:secret]"
    assert scrub_text("Authorization: Bearer abc.def") == "Authorization: Bearer [REDACTED:secret]"
    assert scrub_text('{"token": "abc", "n": 1}') == '{"token": "[REDACTED:secret]", "n": 1}'
    assert scrub_text('{"token": 42, "n": 1}') == '{"token": "[REDACTED:secret]", "n": 1}'   # still JSON
    assert scrub_text(f"aws_access_key_id={AWS_ID}") == "aws_access_key_id=[REDACTED:aws-access-token]"
    assert scrub_text(f"GITHUB_TOKEN={GHP}") == "GITHUB_TOKEN=[REDACTED:secret]"            # key/value first
    hook = scrub_text("https://hooks.slack.com/services/T00000000/B00000000/" + rnd(24))
    assert hook == "https://hooks.slack.com/services/[REDACTED:slack_webhook]"
    assert scrub_text("Server=x;Password=abc;Encrypt=yes") == "Server=x;Password=[REDACTED:secret];Encrypt=yes"


def test_mockllm_canary_is_caught():
    from coo.mockllm.scenarios import DEFAULT_SECRET

    assert DEFAULT_SECRET not in scrub_text(f"echo {DEFAULT_SECRET}")


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_untouched(text):
    assert scrub_text(text) == text
    assert scrub_text(text, pii=True) == text
    assert scrub(text) == text


@pytest.mark.parametrize("kind,text,part", PII_SAMPLES)
def test_pii_only_when_asked(kind, text, part):
    assert scrub_text(text) == text
    out = scrub_text(text, pii=True)
    assert part not in out and f"[REDACTED:{kind}]" in out, out
    assert naive_scrub_text(text, pii=True) == out


def test_pii_in_objects_and_env(monkeypatch):
    obj = {"user": "jane@example.com", "ip": ["10.1.2.3"]}
    assert scrub(obj) == obj
    assert scrub(obj, pii=True) == {"user": "[REDACTED:email]", "ip": ["[REDACTED:ipv4]"]}
    monkeypatch.setattr(scrub_mod, "PII_FROM_ENV", True)
    assert structlog_processor(None, "info", {"event": "from 10.1.2.3"})["event"] == "from [REDACTED:ipv4]"
    monkeypatch.setattr(scrub_mod, "PII_FROM_ENV", False)
    assert structlog_processor(None, "info", {"event": "from 10.1.2.3"})["event"] == "from 10.1.2.3"


def test_pii_env_is_read_at_import():
    code = ("from coo.common.scrub import PII_FROM_ENV, structlog_processor as p;"
            "print(PII_FROM_ENV, p(None, 'info', {'event': 'a@b.co'})['event'])")
    env = {**os.environ, "COO_SCRUB_PII": "true"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, timeout=60)
    assert out.stdout.split() == ["True", "[REDACTED:email]"], out.stderr


# --------------------------------------------------------------------------------------------
# keys and objects


@pytest.mark.parametrize("key", [
    "password", "PASSWORD", "db_password", "dbPassword", "passwd", "pwd", "DB_PASS", "pass", "passphrase",
    "secret", "client_secret", "clientSecret", "secrets", "token", "GITHUB_TOKEN", "access_token", "id-token",
    "x-auth-token", "api_key", "apikey", "API-KEY", "x-api-key", "apiKeys", "access_key", "secret_key",
    "private_key", "privateKey", "AccountKey", "SharedAccessKey", "auth", "Authorization",
    "http.request.header.authorization", "Proxy-Authorization", "credentials", "creds", "session_id",
    "sessionid", "PHPSESSID", "cookie", "Set-Cookie", "bearer", "signature", "sig",
])
def test_secret_keys(key):
    assert is_secret_key(key)
    assert re.search(SECRET_KEY_PATTERN, key, sp.PY_FLAGS)


@pytest.mark.parametrize("key", [
    "tokens", "input_tokens", "gen_ai.usage.output_tokens", "max_tokens", "token_count", "token_type",
    "tokenizer", "author", "authority", "secret_name", "password_file", "key", "key_id", "monkey",
    "event", "level", "logger", "timestamp", "trace_id", "span_id", "mission_id", "session", "passes",
    "private_key_path", "signal", "design", "", "   ",
])
def test_ordinary_keys(key):
    assert not is_secret_key(key)


def test_is_secret_key_odd_input():
    assert is_secret_key(b"password") is True
    assert is_secret_key(None) is False
    assert is_secret_key(42) is False
    assert is_secret_key("x" * 10_000 + "_token") is True


def test_nested_structures():
    gh = "ghp_" + rnd(36)
    obj = {
        "event": f"push with {gh}",
        "password": {"nested": "anything", "n": 1},      # secret-named key: wholesale
        "token": None,
        "Authorization": 12345,
        "input_tokens": 42,
        "headers": [("Cookie", "a=b"), {"X-Api-Key": "k" * 20}],
        "tags": ("ok", f"dsn=postgres://u:{'p' * 8}@h/db"),
        "set": frozenset({"plain", f"Bearer {'z' * 30}"}),
        "payload": json.dumps({"user": "bob", "api_key": "abc", "list": [{"secret": 1}], "gh": gh}),
        "blob": f"token: {'q' * 12}".encode(),
        7: "seven",
        None: "none-key",
    }
    out = scrub(obj)
    assert out["event"] == "push with [REDACTED:github-pat]"
    assert out["password"] == out["token"] == out["Authorization"] == SECRET_MARKER
    assert out["input_tokens"] == 42
    assert out["headers"][0] == ("Cookie", "a=b")          # a tuple of strings is not a mapping
    assert out["headers"][1] == {"X-Api-Key": SECRET_MARKER}
    assert out["tags"] == ("ok", "dsn=postgres://u:[REDACTED:url_password]@h/db")
    assert out["set"] == frozenset({"plain", "Bearer [REDACTED:bearer_token]"})
    assert json.loads(out["payload"]) == {"user": "bob", "api_key": SECRET_MARKER,
                                          "list": [{"secret": SECRET_MARKER}], "gh": "[REDACTED:github-pat]"}
    assert out["blob"] == "token: [REDACTED:secret]"
    assert out[7] == "seven" and out[None] == "none-key"
    assert obj["password"] == {"nested": "anything", "n": 1}   # the input is not modified
    assert scrub(out) == out


def test_json_strings():
    clean = '{"a": [1, 2, {"b": "c"}]}'
    assert scrub(clean) is clean                       # nothing to redact: the very same string
    assert json.loads(scrub('[{"password": "x"}, "token=1"]')) == [{"password": SECRET_MARKER},
                                                                    "token=[REDACTED:secret]"]
    assert scrub('  {"secret": 1}\n') == '{"secret": "[REDACTED:secret]"}'
    assert scrub('{"password": "x"') == '{"password": "[REDACTED:secret]"'    # not JSON: text rules
    assert scrub("[REDACTED:secret]") == "[REDACTED:secret]"


def test_types_and_odd_values():
    class Thing:
        def __str__(self):
            return "password=hunter2"

    thing = Thing()
    assert scrub(None) is None
    assert scrub(3.5) == 3.5 and scrub(True) is True and scrub(7) == 7
    assert scrub(thing) is thing                        # other types: as they are
    assert scrub(b"\xff\xfe password=x") == "\ufffd\ufffd password=[REDACTED:secret]"
    assert scrub(bytearray(b"token=abc")) == "token=[REDACTED:secret]"
    assert scrub(memoryview(b"token=abc")) == "token=[REDACTED:secret]"
    Point = collections.namedtuple("Point", "x y")
    assert scrub(Point("token=1", 2)) == Point("token=[REDACTED:secret]", 2)
    od = collections.OrderedDict(password="x", a="b")
    assert scrub(od) == collections.OrderedDict(password=SECRET_MARKER, a="b")
    assert type(scrub(od)) is collections.OrderedDict
    dd = collections.defaultdict(list, password="x")
    assert scrub(dd) == {"password": SECRET_MARKER}
    assert scrub_text(None) is None
    assert scrub_text(b"token=1") == "token=[REDACTED:secret]"
    assert scrub_text("") == ""


def test_cycles():
    lst: list = ["token=1"]
    lst.append(lst)
    assert scrub(lst) == ["token=[REDACTED:secret]", CYCLE_MARKER]
    d: dict = {"a": "x"}
    d["self"] = d
    d["list"] = [d, {"deep": d}]
    out = scrub(d)
    assert out == {"a": "x", "self": CYCLE_MARKER, "list": [CYCLE_MARKER, {"deep": CYCLE_MARKER}]}
    shared = {"password": "x"}
    assert scrub([shared, shared]) == [{"password": SECRET_MARKER}] * 2    # shared, not cyclic


def test_deep_nesting_does_not_raise():
    deep: list = []
    cur = deep
    for _ in range(5000):
        nxt: list = []
        cur.append(nxt)
        cur = nxt
    out = scrub(deep)
    assert isinstance(out, list)
    assert "[REDACTED:too_deep]" in json.dumps(out)
    assert scrub("[" * 100_000 + "]" * 100_000).startswith("[[[")   # JSON too deep to parse: text rules


def test_scrub_never_raises_on_hostile_objects():
    class Evil(dict):
        def items(self):
            raise RuntimeError("boom")

    assert scrub(Evil(a=1)) == "[REDACTED:scrub_error]"
    assert structlog_processor(None, "info", Evil(a=1)) == {"event": "[REDACTED:scrub_error]"}


# --------------------------------------------------------------------------------------------
# huge and adversarial input


def _timed(fn) -> float:
    started = time.perf_counter()
    assert isinstance(fn(), str)
    return time.perf_counter() - started


def test_huge_adversarial_strings_are_fast():
    """5 MB strings built to make regexes backtrack: each takes ~0.1-0.6 s (linear scans)."""
    n = 5_000_000
    cases = {
        "word run": "x" * n,
        "jwt starts": "-eyJ" * (n // 4),
        "pem begins": "-----BEGIN PRIVATE KEY-----" * (n // 27),
        "pem begins, no body": "-----BEGIN PRIVATE KEY-----!" * (n // 28),
        "url-ish": ("a" * 200 + "://") * (n // 203),
        "unterminated quote": '"password": "' + "a" * n,
        "prefix no body": "ghp_" * (n // 4),
        "random base64": base64.b64encode(random.Random(0).randbytes(n * 3 // 4)).decode(),
        "discord-ish": ("M" + "a" * 30 + ".") * (n // 32),
        "phone digits": "+1" + "2" * n,
        "email local part": "a" * n + "@",
        "many lines": "the quick brown fox token count 42 /usr/lib\n" * (n // 43),
    }
    for name, text in cases.items():
        pii = name in ("phone digits", "email local part")
        elapsed = _timed(functools.partial(scrub_text, text, pii=pii))
        if elapsed >= 1.0:  # a busy machine: measure once more (backtracking would be minutes, not ~1 s)
            elapsed = min(elapsed, _timed(functools.partial(scrub_text, text, pii=pii)))
        assert elapsed < 1.0, f"{name}: {elapsed:.2f}s"
    # A 5 MB object goes through scrub() too (a JSON-looking string that is not JSON).
    started = time.perf_counter()
    assert scrub({"blob": "[" + "a" * n}) == {"blob": "[" + "a" * n}
    assert time.perf_counter() - started < 1.0


def test_dense_matches_stay_linear():
    # Not backtracking but many real matches: linear, with a larger constant.
    text = "token: " * 200_000
    started = time.perf_counter()
    out = scrub_text(text)
    assert time.perf_counter() - started < 3.0
    assert "[REDACTED:secret]" in out and out == naive_scrub_text(text)


# --------------------------------------------------------------------------------------------
# properties: fast == naive, idempotent, never raises

FRAGMENTS = [
    AWS_ID, AWS_SECRET, GHP, OPENAI, ANTHROPIC, JWT, "xoxb-" + rnd(30), "SK" + rnd(32, HEX), "hf_" + rnd(34),
    "AIza" + rnd(35), "npm_" + rnd(36), "SG." + rnd(22) + "." + rnd(43), "MT" + rnd(24) + "." + rnd(6) + "." + rnd(30),
    "12345678:AA" + rnd(33), "eyJ", "eyJabcdefghij.eyJ", "sk-", "ghp_", "xox", "AKIA",
    "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----\n" + rnd(64, B64) + "\n", "private key",
    "password", "passwd", "pwd", "Password", "secret", "client_secret", "token", "tokens", "TOKEN", "api_key",
    "apiKey", "x-api-key", "auth", "Authorization", "bearer", "Bearer ", "Basic ", "cookie", "Cookie: ", "Set-Cookie",
    "session_id", "sig", "credentials", "aws_secret_access_key", "AccountKey", "DB_PASS", "input_tokens",
    "=", "==", ":", ": ", ":=", "=>", '"', "'", "\\", '\\"', "`", ",", ";", "&", "?", "#", "/", "//", "://", "@",
    "{", "}", "[", "]", "(", ")", "<", ">", " ", "  ", "\t", "\n", "\r\n", "--", "-", "_", ".", "~", "+", "%",
    "postgres://", "user:pw@host", "https://hooks.slack.com/services/", "discord.com/api/webhooks/123456/",
    "[REDACTED:secret]", "[REDACTED:github_token]", "[REDACTED:", "REDACTED", "null", "true", "42", "-1.5e3",
    "a@b.co", "jane.doe@example.com", "10.0.0.1", "255.255.255.255", "+1 555 123 4567", "(555) 123-4567",
    "123-45-6789", "555.123.4567", "é", "中", "İ", "ß",
]
ALPHABET = string.ascii_letters + string.digits + " =:\"'\\,;&@/.-_+{}[]()<>\n\t#~%"

_POOL = FRAGMENTS + [t for _, t, _ in SECRETS] + ORDINARY + [t for _, t, _ in PII_SAMPLES]


@st.composite
def _piece(draw) -> str:
    """A known fragment, a secret sample or ordinary text, maybe cut and re-cased."""
    s = draw(st.sampled_from(_POOL))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(s)))
        s = s[i:draw(st.integers(i, len(s)))]
    case = draw(st.integers(0, 5))
    return s.upper() if case == 0 else s.lower() if case == 1 else s


texts = st.lists(st.one_of(_piece(), st.text(alphabet=ALPHABET, max_size=8)), max_size=16).map("".join)

_PROPS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPS
@given(texts, st.booleans())
def test_fast_path_equals_naive(text, pii):
    assert scrub_text(text, pii=pii) == naive_scrub_text(text, pii=pii)


@_PROPS
@given(texts, st.booleans())
def test_scrub_text_is_idempotent(text, pii):
    once = scrub_text(text, pii=pii)
    assert scrub_text(once, pii=pii) == once


@_PROPS
@given(st.text(max_size=200), st.booleans())
def test_arbitrary_unicode_fast_equals_naive(text, pii):
    assert scrub_text(text, pii=pii) == naive_scrub_text(text, pii=pii)


@_PROPS
@given(st.lists(st.sampled_from(FRAGMENTS + list(ALPHABET)), max_size=6).map("".join).filter(lambda s: len(s) < 8),
       st.booleans())
def test_short_strings_fast_equals_naive(text, pii):
    assert scrub_text(text, pii=pii) == naive_scrub_text(text, pii=pii)
    assert scrub_text("pwd=x") == "pwd=[REDACTED:secret]"     # the shortest match there is


keys = st.one_of(st.sampled_from(["password", "token", "input_tokens", "event", "a", "Authorization", "x-api-key"]),
                 st.text(max_size=8), st.integers())
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts,
                   st.binary(max_size=40), st.text(max_size=30))
objects = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=5),
        st.frozensets(st.one_of(texts, st.integers()), max_size=4),
        st.builds(json.dumps, st.dictionaries(st.sampled_from(["token", "msg", "n"]), st.one_of(texts, st.integers()),
                                              max_size=4)),
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects, st.booleans())
def test_scrub_never_raises_and_is_idempotent(obj, pii):
    once = scrub(obj, pii=pii)
    assert scrub(once, pii=pii) == once


# --------------------------------------------------------------------------------------------
# structlog


def test_structlog_processor_in_a_real_chain():
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog_processor,
            structlog.processors.JSONRenderer(),
        ],
    )
    pw = rnd(16)
    logger.info(f"connecting to postgres://app:{pw}@db/coo", password=pw, input_tokens=12,
                headers={"Authorization": f"Bearer {pw}"}, args=("token=" + pw,), note=None)
    try:
        raise RuntimeError(f"login failed with api_key={pw}")
    except RuntimeError:
        logger.exception("boom", user="bob")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    text = out.getvalue()
    assert pw not in text
    first, second = lines
    assert first["event"] == "connecting to postgres://app:[REDACTED:url_password]@db/coo"
    assert first["password"] == SECRET_MARKER and first["input_tokens"] == 12 and first["level"] == "info"
    assert first["headers"] == {"Authorization": SECRET_MARKER}
    assert first["args"] == ["token=[REDACTED:secret]"] and first["note"] is None
    assert "api_key=[REDACTED:secret]" in second["exception"] and second["user"] == "bob"


# --------------------------------------------------------------------------------------------
# coo scrub (stream)


def test_scrub_stream_multiline_pem_and_lines():
    key = pem()
    src = io.StringIO(f"start token=abc\n{key}\nafter {AWS_ID}\n" + json.dumps({"password": "x"}) + "\nlast")
    dst = io.StringIO()
    n = scrub_stream(src, dst)
    assert n == 4 + len(key.splitlines())
    assert dst.getvalue() == ("start token=[REDACTED:secret]\n[REDACTED:private_key]\n"
                              "after [REDACTED:aws-access-token]\n"
                              '{"password": "[REDACTED:secret]"}\nlast')
    # CRLF, bytes lines, an unterminated block at the end of the input
    dst = io.StringIO()
    lines = [b"a password=x\r\n", b"-----BEGIN EC PRIVATE KEY-----\r\n", (rnd(64, B64) + "\r\n").encode()]
    assert scrub_stream(iter(lines), dst) == 3
    assert dst.getvalue() == "a password=[REDACTED:secret]\r\n[REDACTED:private_key]\r\n"


def test_scrub_stream_pem_bound(monkeypatch):
    monkeypatch.setattr(scrub_mod, "MAX_PEM_LINES", 3)
    body = [rnd(64, B64) for _ in range(10)]
    text = ("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body)
            + "\n-----END RSA PRIVATE KEY----- tail token=1\nnext\n")
    dst = io.StringIO()
    scrub_stream(io.StringIO(text), dst)
    out = dst.getvalue()
    assert not any(b in out for b in body)
    assert out.startswith("[REDACTED:private_key]") and out.endswith(" tail token=[REDACTED:secret]\nnext\n")


def test_scrub_stream_block_interrupted_by_text():
    text = "-----BEGIN PRIVATE KEY-----\n" + rnd(64, B64) + "\nnot base64: {oops}\nok\n"
    dst = io.StringIO()
    scrub_stream(io.StringIO(text), dst)
    assert dst.getvalue() == "[REDACTED:private_key]\nnot base64: {oops}\nok\n"


# --------------------------------------------------------------------------------------------
# the pattern table: RE2 compatibility

_FORBIDDEN = [r"(?=", r"(?!", r"(?<=", r"(?<!", r"(?>", r"(?P=", r"(?#", r"\Z", r"*+", r"++", r"?+", r"}+"]


def _all_sources():
    yield "SECRET_KEY_PATTERN", SECRET_KEY_PATTERN
    for spec in sp.PATTERN_SPECS:
        yield spec.name, spec.regex


def _negated_classes(src: str):
    i = 0
    while i < len(src):
        if src[i] == "\\":
            i += 2
            continue
        if src.startswith("[^", i):
            j = i + 2
            if j < len(src) and src[j] == "]":
                j += 1
            while src[j] != "]":
                j += 2 if src[j] == "\\" else 1
            yield src[i:j + 1]
            i = j + 1
            continue
        i += 1


@pytest.mark.parametrize("name,src", list(_all_sources()))
def test_patterns_are_re2_compatible(name, src):
    re.compile(src, sp.PY_FLAGS)
    for bad in _FORBIDDEN:
        assert bad not in src, f"{name}: {bad}"
    assert not re.search(r"\\[1-9]", src), f"{name}: back-reference"
    assert "(?<" not in src.replace("(?<=", "").replace("(?<!", ""), f"{name}: use (?P<name>...)"
    for m in re.finditer(r"\{(\d+)(?:,(\d*))?\}", src):
        assert all(int(g) <= 1000 for g in m.groups() if g), f"{name}: repeat count > 1000"
    # global flags only at the start
    assert not re.search(r".\(\?[a-z]+\)", src), f"{name}: inline global flag after the start"
    if name != "private_key":
        assert r"\s" not in src and r"\S" not in src, f"{name}: \\s differs between engines; spell it out"
        for cls in _negated_classes(src):
            assert r"\n" in cls, f"{name}: {cls} can cross a line break"


def test_table_shape():
    assert SECRET_PATTERNS and PII_PATTERNS
    assert all(isinstance(k, str) and isinstance(r, str) for k, r in SECRET_PATTERNS + PII_PATTERNS)
    kinds = {k for k, _ in PII_PATTERNS}
    assert kinds == {"email", "ipv4", "phone", "ssn"}
    assert SECRET_PATTERNS[0][0] == "private_key"
    names = [s.name for s in sp.PATTERN_SPECS]
    assert len(names) == len(set(names))
    for spec in sp.PATTERN_SPECS:
        groups = set(re.compile(spec.regex, sp.PY_FLAGS).groupindex)
        assert groups <= {"pre", "secret", "post"}, spec.name
        for word in (spec.triggers or ()) + (spec.requires or ()):
            assert word == word.lower(), spec.name


def _key_words_language() -> set[str]:
    """All strings the secret-word regex matches (it is a finite language)."""
    from re import _parser  # type: ignore[attr-defined]
    from re._constants import BRANCH, IN, LITERAL, MAX_REPEAT, SUBPATTERN  # type: ignore[attr-defined]

    def expand(items) -> set[str]:
        out = {""}
        for op, av in items:
            if op is LITERAL:
                alts = {chr(av)}
            elif op is IN:
                alts = {chr(v) for o, v in av if o is LITERAL}
                assert len(alts) == len(av)
            elif op is SUBPATTERN:
                alts = expand(av[3])
            elif op is BRANCH:
                alts = set().union(*(expand(b) for b in av[1]))
            elif op is MAX_REPEAT:
                lo, hi, sub = av
                assert (lo, hi) == (0, 1)
                alts = {""} | expand(sub)
            else:  # pragma: no cover
                raise AssertionError(op)
            out = {a + b for a in out for b in alts}
        return out

    return expand(_parser.parse(sp._KEY_WORDS))


def test_no_secret_word_is_a_suffix_of_another():
    # scrub._gate_positions relies on it for speed (it stays exact otherwise, via _inner_offsets)
    words = _key_words_language()
    assert {"password", "token", "api-key", "secret_keys", "authorization", "sig"} <= words
    for w in words:
        for i in range(1, len(w)):
            assert w[i:] not in words, (w, w[i:])


# --------------------------------------------------------------------------------------------
# the same rules on Go's regexp (the collector's engine), when a Go toolchain is here

GO_PROGRAM = r"""
package main

import (
	"encoding/json"
	"os"
	"regexp"
)

type input struct {
	Rules [][2]string `json:"rules"`
	Keys  string      `json:"key_pattern"`
	Texts []string    `json:"texts"`
	Names []string    `json:"names"`
}

type output struct {
	Errors []string `json:"errors"`
	Texts  []string `json:"texts"`
	Keys   []bool   `json:"keys"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	out := output{Errors: []string{}, Texts: []string{}, Keys: []bool{}}
	res := []*regexp.Regexp{}
	for _, r := range in.Rules {
		re, err := regexp.Compile(r[0])
		if err != nil {
			out.Errors = append(out.Errors, r[0]+": "+err.Error())
			continue
		}
		res = append(res, re)
	}
	kre, err := regexp.Compile(in.Keys)
	if err != nil {
		out.Errors = append(out.Errors, "key pattern: "+err.Error())
	}
	if len(out.Errors) == 0 {
		for _, t := range in.Texts {
			for i, re := range res {
				t = re.ReplaceAllString(t, in.Rules[i][1])
			}
			out.Texts = append(out.Texts, t)
		}
		for _, k := range in.Names {
			out.Keys = append(out.Keys, kre.MatchString(k))
		}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def _corpus() -> list[str]:
    rng = random.Random(5)
    safe = [f for f in FRAGMENTS if f not in ("İ",)]   # (?i) in Go folds a few non-ASCII letters too
    texts = [t for _, t, _ in SECRETS] + ORDINARY + [t for _, t, _ in PII_SAMPLES]
    for _ in range(400):
        texts.append("".join(rng.choice(safe) if rng.random() < 0.6 else rng.choice(ALPHABET)
                             for _ in range(rng.randint(1, 14))))
    return texts


def test_go_regexp_agrees_with_python(tmp_path):
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain")
    (tmp_path / "main.go").write_text(GO_PROGRAM)
    texts = _corpus()
    names = ["password", "input_tokens", "x-api-key", "token_count", "Authorization", "author", "DB_PASS", "tokens"]
    payload = {
        "rules": [[s.regex, sp.go_template(s)] for s in sp.PATTERN_SPECS],   # secret then PII, table order
        "key_pattern": SECRET_KEY_PATTERN,
        "texts": texts,
        "names": names,
    }
    r = subprocess.run([go, "run", "main.go"], cwd=tmp_path, input=json.dumps(payload), capture_output=True,
                       text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["errors"] == []
    assert result["keys"] == [is_secret_key(n) for n in names]
    mismatches = [(t, g, naive_scrub_text(t, pii=True)) for t, g in zip(texts, result["texts"])
                  if g != naive_scrub_text(t, pii=True)]
    assert not mismatches, mismatches[:3]


# --------------------------------------------------------------------------------------------
# the collector rule generator


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_collector_redaction", GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ottl_strings(statement: str) -> list[str]:
    return [json.loads('"' + m + '"') for m in re.findall(r'"((?:[^"\\]|\\.)*)"', statement)]


@pytest.mark.parametrize("pii", [False, True])
def test_generator_output(pii, tmp_path):
    gen = _load_generator()
    text = gen.render(pii=pii)
    doc = yaml.safe_load(text)
    procs = doc["processors"]
    transform, redaction = procs[gen.TRANSFORM_NAME], procs[gen.REDACTION_NAME]
    assert redaction["allow_all_keys"] is True
    assert redaction["blocked_key_patterns"] == [SECRET_KEY_PATTERN.replace("$", "$$")]
    specs = [s for s in sp.PATTERN_SPECS if pii or not s.pii]
    log_statements = [s for group in transform["log_statements"] for s in group["statements"]]
    body = [st_ for st_ in log_statements if st_.startswith("replace_pattern(log.body")]
    assert len(body) == len(specs)
    for spec, statement in zip(specs, body):       # table order kept
        assert "$" not in statement.replace("$$", "")
        regex, replacement = _ottl_strings(statement.replace("$$", "$"))
        assert regex == spec.regex
        assert replacement == sp.go_template(spec)
    statements = [s for group in transform["trace_statements"] for s in group["statements"]]
    assert len(statements) == 3 * len(specs)
    assert all(s.startswith(("replace_pattern(span.name", "replace_all_patterns(span.attributes",
                             "replace_all_patterns(spanevent.attributes")) for s in statements)
    for s in statements + log_statements:
        assert s.replace("$$", "").count("$") == 0
    # the prefilters: a group of patterns with trigger words runs only where one of its words occurs
    # (any case); every pattern without trigger words runs always; each target's groups in table order
    for signal in ("log_statements", "trace_statements"):
        for group in transform[signal]:
            regexes = [next(x for x in _ottl_strings(st_.replace("$$", "$")) if x != "value")
                       for st_ in group["statements"]]
            members = [next(s for s in specs if s.regex == rx.replace("$$", "$")) for rx in regexes]
            if "conditions" not in group:
                assert all(s.triggers is None for s in members)
                continue
            assert all(s.triggers is not None for s in members) and len(members) <= gen.GROUP_SIZE
            (condition,) = group["conditions"]
            prefilter = re.compile(_ottl_strings(condition.replace("$$", "$"))[-1])
            for s in members:
                for word in s.triggers:
                    assert prefilter.search(word) and prefilter.search(word.upper()), (s.name, word)
            if not pii:
                assert not prefilter.search("an ordinary line: 12 files written in 0.4 seconds")
    blocked = [v.replace("$$", "$") for v in redaction["blocked_values"]]
    assert all(any(v == s.regex for s in specs) for v in blocked)
    assert "(?P<pre>" not in "".join(blocked)
    # every self-contained token kind (no kept context) is in the second net
    assert {s.kind for s in specs if not s.pii and "(?P<pre>" not in s.regex and "(?P<post>" not in s.regex} <= {
        s.kind for s in specs if s.regex in blocked}

    out = tmp_path / "frag.yaml"
    assert gen.main(["--write", str(out)] + (["--pii"] if pii else [])) == 0
    assert out.read_text() == text
    assert gen.main(["--check", str(out)] + (["--pii"] if pii else [])) == 0
    out.write_text(text + "# stale\n")
    assert gen.main(["--check", str(out)] + (["--pii"] if pii else [])) == 1


def test_generator_runs_as_a_script():
    r = subprocess.run([sys.executable, str(GEN)], capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["processors"]


def _cached_collector() -> Path | None:
    script = ROOT / "scripts" / "build-tools.sh"
    if not script.exists():
        return None
    r = subprocess.run(["bash", str(script), "--cached-path", "otelcol"], capture_output=True, text=True, check=False,
                       timeout=60)
    path = Path(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None
    return path if path and path.is_file() else None


def test_collector_accepts_the_generated_processors(tmp_path):
    """`otelcol validate` builds the processors: every OTTL statement parses, every regex compiles in RE2."""
    collector = _cached_collector()
    if collector is None:
        pytest.skip("the collector is not built (scripts/build-tools.sh otelcol)")
    gen = _load_generator()
    for pii in (False, True):
        processors = gen.build(pii=pii)["processors"]
        names = list(processors)
        config = {
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:0"}}}},
            "processors": processors,
            "exporters": {"debug": {}},
            "service": {"pipelines": {
                "traces": {"receivers": ["otlp"], "processors": names, "exporters": ["debug"]},
                "logs": {"receivers": ["otlp"], "processors": names, "exporters": ["debug"]},
            }},
        }
        path = tmp_path / f"config-{pii}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False, width=1_000_000))
        r = subprocess.run([str(collector), "validate", "--config", str(path)], capture_output=True, text=True,
                           check=False, timeout=60)
        assert r.returncode == 0, r.stderr[-3000:]


def test_a_url_glued_to_a_token_loses_its_password_on_the_first_pass():
    """Found by the idempotence property: the scheme glued to a key ("SK<hex>postgres://u:pw@h") was
    no URL until the key was redacted, so the password leaked on the first pass."""
    pw = rnd(12)
    text = "SK" + "0a" * 16 + f"POSTGRES://APP:{pw}@db/coo"
    once = scrub_text(text)
    assert pw not in once and scrub_text(once) == once

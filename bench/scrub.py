"""Scrubbing: ``coo.common.scrub.scrub_text`` against ``naive_scrub_text`` (every pattern in turn).

The corpus is generated from a fixed seed: log records as COO and its libraries write them
(structlog JSON lines, uvicorn access lines, NATS and HTTP client lines, tracebacks, prose), about
5 % of them holding one labelled secret of one of ~25 kinds in a realistic context (an env dump,
a JSON field, an ``Authorization`` header, a connection URL, a CLI flag, a multi-line PEM key...).
The secret-free records are full of near misses that must pass unchanged: trace and span ids,
UUIDs, git SHAs, ``input_tokens``/``max_tokens``/``token_count``, ``author``, ``secret_name``,
``password_file``, URLs without credentials, base64 in prose, paths and timestamps.

Each record is scrubbed on its own, as the structlog processor does. Figures: MB/s of both (and
their ratio), recall on the labelled secrets (a secret counts as caught when neither it nor its
first or last 12 characters survive), false positives (a secret-free record that changed).
"""

from __future__ import annotations

import json
import random
import string
import time
from dataclasses import dataclass

from bench.common import Config, Result, ratio

TITLE = "Scrubbing: scrub_text vs the naive pattern loop"

SEED = 20261121
SECRET_SHARE = 0.05

_ALNUM = string.ascii_letters + string.digits
_UPPER_ALNUM = string.ascii_uppercase + string.digits
_HEX = "0123456789abcdef"
_B64 = _ALNUM + "+/"
_URLSAFE = _ALNUM + "-_"


@dataclass
class Record:
    text: str
    kind: str = ""        # "" for a secret-free record
    secret: str = ""


class Corpus:
    """Deterministic log records; ``build(size)`` returns records totalling about ``size`` bytes."""

    def __init__(self, seed: int = SEED) -> None:
        self.r = random.Random(seed)
        self.kind = ""        # the kind of the secret being placed (contexts name env variables by it)

    # ---------------------------------------------------------------- pieces
    def s(self, alphabet: str, n: int) -> str:
        return "".join(self.r.choices(alphabet, k=n))

    def hexid(self, n: int) -> str:
        return self.s(_HEX, n)

    def uuid(self) -> str:
        h = self.hexid(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def ts(self) -> str:
        r = self.r
        return f"2026-11-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:" \
               f"{r.randint(0, 59):02d}.{r.randint(0, 999999):06d}Z"

    def words(self, n: int) -> str:
        return " ".join(self.r.choices(_WORDS, k=n))

    def password(self) -> str:
        return self.s(_ALNUM, self.r.randint(10, 18)) + self.r.choice("!#%*+-_.") + self.s(string.digits, 2)

    # --------------------------------------------------------------- secrets
    def secret(self) -> tuple[str, str]:
        """(kind, secret value) of one random kind."""
        kind = self.r.choice(list(_SECRET_MAKERS))
        return kind, _SECRET_MAKERS[kind](self)

    def with_secret(self) -> Record:
        kind, value = self.secret()
        self.kind = kind
        ctx = _CONTEXTS.get(kind) or _GENERIC_CONTEXTS
        text = self.r.choice(ctx)(self, value)
        if value not in text:                 # inside a JSON string: labelled as it is written there
            value = json.dumps(value)[1:-1]
        assert value in text, (kind, text)
        return Record(text, kind, value)

    # ----------------------------------------------------------- clean lines
    def clean(self) -> Record:
        return Record(self.r.choices(_CLEAN, weights=_CLEAN_WEIGHTS)[0](self))

    def build(self, size: int) -> list[Record]:
        out: list[Record] = []
        total = 0
        while total < size:
            rec = self.with_secret() if self.r.random() < SECRET_SHARE else self.clean()
            out.append(rec)
            total += len(rec.text) + 1
        return out


# ---------------------------------------------------------------------- secret kinds
def _pem(c: Corpus) -> str:
    kind = c.r.choice(["RSA ", "EC ", "OPENSSH ", ""])
    body = "\n".join(c.s(_B64, 64) for _ in range(c.r.randint(6, 14))) + "\n" + c.s(_B64, 20) + "=="
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


def _jwt(c: Corpus) -> str:
    return ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJ" + c.s(_URLSAFE, c.r.randint(40, 120)) + "."
            + c.s(_URLSAFE, 43))


_SECRET_MAKERS = {
    "openai_key": lambda c: "sk-proj-" + c.s(_URLSAFE, 48) + "T3BlbkFJ" + c.s(_URLSAFE, 48),
    "anthropic_key": lambda c: "sk-ant-api03-" + c.s(_URLSAFE, 93) + "AA",
    "github_token": lambda c: c.r.choice(["ghp_", "gho_", "ghs_"]) + c.s(_ALNUM, 36),
    "github_pat": lambda c: "github_pat_11" + c.s(_UPPER_ALNUM, 20) + "_" + c.s(_ALNUM, 59),
    "gitlab_token": lambda c: "glpat-" + c.s(_URLSAFE, 20),
    "aws_access_key": lambda c: "AKIA" + c.s(_UPPER_ALNUM, 16),
    "aws_secret_key": lambda c: c.s(_ALNUM + "/+", 40),
    "slack_token": lambda c: "xoxb-" + c.s(string.digits, 12) + "-" + c.s(string.digits, 13) + "-" + c.s(_ALNUM, 24),
    "slack_webhook": lambda c: "T" + c.s(_UPPER_ALNUM, 8) + "/B" + c.s(_UPPER_ALNUM, 10) + "/" + c.s(_ALNUM, 24),
    "stripe_key": lambda c: c.r.choice(["sk_live_", "rk_live_", "sk_test_"]) + c.s(_ALNUM, 24),
    "gcp_api_key": lambda c: "AIza" + c.s(_URLSAFE, 35),
    "huggingface_token": lambda c: "hf_" + c.s(_ALNUM, 34),
    "npm_token": lambda c: "npm_" + c.s(_ALNUM, 36),
    "sendgrid_key": lambda c: "SG." + c.s(_URLSAFE, 22) + "." + c.s(_URLSAFE, 43),
    "groq_key": lambda c: "gsk_" + c.s(_ALNUM, 52),
    "jwt": _jwt,
    "bearer_token": lambda c: c.s(_URLSAFE, c.r.randint(24, 64)),
    # in a URL a password is percent-encoded: unreserved characters only, or %XX
    "url_password": lambda c: c.s(_ALNUM, c.r.randint(10, 18)) + c.r.choice(["-", "_", ".", "~", "%23", "%40"])
                              + c.s(string.digits, 2),
    "kv_password": lambda c: c.password(),
    "kv_token": lambda c: c.s(_ALNUM, c.r.randint(12, 40)),
    "cookie": lambda c: "sessionid=" + c.hexid(32),
    "cli_password": lambda c: c.password(),
    "private_key": _pem,
    "telegram_bot_token": lambda c: c.s(string.digits, 10) + ":AA" + c.s(_URLSAFE, 33),
    "twilio_key": lambda c: "SK" + c.hexid(32),
}


def _json_line(c: Corpus, event: str, **fields) -> str:
    base = {"timestamp": c.ts(), "level": c.r.choice(["info", "info", "warning", "error", "debug"]),
            "logger": c.r.choice(_LOGGERS), "service": c.r.choice(_SERVICES),
            "trace_id": c.hexid(32), "span_id": c.hexid(16), "mission_id": c.hexid(32), "event": event}
    base.update(fields)
    return json.dumps(base)


# (kind, the environment variable that usually holds it): pairs, so no line here reads like "key": "value"
_ENV_NAMES = dict([  # noqa: C406 - pairs, so no line reads like "key": "value" to a secret scanner
    ("openai_key", "OPENAI_API_KEY"), ("anthropic_key", "ANTHROPIC_API_KEY"), ("github_token", "GITHUB_TOKEN"),
    ("github_pat", "GH_TOKEN"), ("gitlab_token", "GITLAB_TOKEN"), ("aws_access_key", "AWS_ACCESS_KEY_ID"),
    ("slack_token", "SLACK_BOT_TOKEN"), ("stripe_key", "STRIPE_SECRET_KEY"), ("gcp_api_key", "GOOGLE_API_KEY"),
    ("huggingface_token", "HF_TOKEN"), ("npm_token", "NPM_TOKEN"), ("sendgrid_key", "SENDGRID_API_KEY"),
    ("groq_key", "GROQ_API_KEY"), ("telegram_bot_token", "TELEGRAM_BOT_TOKEN"), ("twilio_key", "TWILIO_API_KEY"),
])

_GENERIC_CONTEXTS = (
    # an env dump line, a JSON log field, prose, a config echo, a library's repr
    lambda c, v: f"{c.r.choice(['export ', 'env: ', ''])}{_ENV_NAMES.get(c.kind, 'API_KEY')}={v}",
    lambda c, v: _json_line(c, "provider configured", provider=c.r.choice(_PROVIDERS), credential_hint=v),
    lambda c, v: f"{c.ts()} WARNING coo.agent: retrying with fallback key {v} after 401 from {c.r.choice(_PROVIDERS)}",
    lambda c, v: f"Traceback (most recent call last): ValueError: invalid token '{v}' for model mock-large",
    lambda c, v: _json_line(c, f"echo from the LLM: use {v} to call the API", model="mock-large"),
)


_CONTEXTS = {
    "aws_secret_key": (
        lambda c, v: f"aws_secret_access_key = {v}",
        lambda c, v: f'AWS_SECRET_ACCESS_KEY="{v}"',
        lambda c, v: _json_line(c, "s3 client created", aws_secret_access_key=v, region="eu-west-1"),
    ),
    "slack_webhook": (
        lambda c, v: f"POST https://hooks.slack.com/services/{v} -> 200 (alert delivered)",
        lambda c, v: _json_line(c, "alert sent", webhook=f"https://hooks.slack.com/services/{v}"),
    ),
    "bearer_token": (
        lambda c, v: f"> Authorization: Bearer {v}",
        lambda c, v: _json_line(c, "outgoing request", headers={"Authorization": f"Bearer {v}",
                                                               "Content-Type": "application/json"}),
        lambda c, v: f"curl -H 'Authorization: Bearer {v}' http://127.0.0.1:8080/v1/missions",
    ),
    "url_password": (
        lambda c, v: f"connecting to postgresql://coo_app:{v}@db.internal:5432/coo?sslmode=require",
        lambda c, v: _json_line(c, "nats connect", url=f"nats://agent:{v}@127.0.0.1:4222"),
        lambda c, v: f"redis error: redis://default:{v}@cache-1.internal:6379/0 refused the connection",
    ),
    "kv_password": (
        lambda c, v: f"db config: host=db.internal port=5432 user=coo password={v} sslmode=require",
        lambda c, v: _json_line(c, "settings loaded", password=v, user="coo"),
        lambda c, v: f"DB_PASSWORD='{v}'",
        lambda c, v: f'{{"username": "admin", "passwd": "{v}", "remember": true}}',
    ),
    "kv_token": (
        lambda c, v: _json_line(c, "webhook registered", token=v, token_count=c.r.randint(1, 9)),
        lambda c, v: f"GET /v1/callback?state=ok&access_token={v}&expires_in=3600 HTTP/1.1",
        lambda c, v: f"client_secret: {v}",
        lambda c, v: f"x-api-key: {v}",
    ),
    "cookie": (
        lambda c, v: "> Cookie: " + v + "; theme=dark",
        lambda c, v: _json_line(c, "request headers", cookie=v),
    ),
    "cli_password": (
        lambda c, v: f"exec: mysql --user=root --password {v} --host db.internal",
        lambda c, v: f"running: coo-admin rotate --api-key {v} --dry-run",
    ),
    "private_key": (
        lambda c, v: v,
        lambda c, v: _json_line(c, "deploy key loaded", key=v),    # JSON-escaped \n inside a string
        lambda c, v: f"loaded signing key from vault:\n{v}\n(fingerprint SHA256:{c.s(_B64, 43)})",
    ),
}


# ---------------------------------------------------------------------- clean records
_WORDS = (
    "the", "agent", "plan", "task", "mission", "result", "sandbox", "run", "budget", "reserve", "settle",
    "release", "model", "tokens", "completed", "failed", "retry", "queue", "consumer", "stream", "subject",
    "timeline", "event", "pause", "resume", "cancel", "approve", "orchestrator", "engineer", "review",
    "verdict", "artifact", "file", "test", "passed", "output", "request", "reply", "latency", "cost", "limit",
    "daily", "monthly", "scope", "ledger", "key", "value", "bucket", "revision", "trace", "span", "parent",
    "child", "export", "batch", "collector", "metric", "counter", "histogram", "gauge", "label", "exemplar",
    "author", "commit", "branch", "merge", "deploy", "config", "option", "default", "session", "cookie",
    "flag", "header", "count", "max", "input",
)
_LOGGERS = ("coo.agent", "coo.orchestrator", "coo.bus", "coo.budget", "coo.sandbox", "coo.mockllm",
            "uvicorn.error", "httpx", "openai._base_client", "coo.timeline")
_SERVICES = ("agent", "orchestrator", "budget", "sandbox", "mockllm")
_PROVIDERS = ("openai", "anthropic", "mock", "openrouter", "groq")
_EVENTS = ("llm call finished", "task published", "message terminated to the dead-letter queue",
           "sandbox run executed", "budget reserved", "budget settled", "mission completed",
           "handler failed; message will be redelivered", "nats reconnected", "collector reachable again",
           "mission paused by backpressure", "QA verdict", "plan accepted", "consumer fetch failed; rebinding")


def _clean_json(c: Corpus) -> str:
    r = c.r
    fields = r.choice([
        {"model": r.choice(["mock-large", "mock-small", "gpt-4o-mini"]), "input_tokens": r.randint(50, 9000),
         "output_tokens": r.randint(10, 2000), "max_tokens": 2048, "duration_ms": round(r.uniform(1, 900), 2),
         "cost_usd": round(r.uniform(0, 0.05), 6)},
        {"subject": f"coo.tasks.{r.choice(['coo', 'engineer', 'qa'])}", "stream_seq": r.randint(1, 10**6),
         "msg_id": f"{c.hexid(32)}.t{r.randint(1, 5)}.eng.a{r.randint(1, 3)}", "attempt": r.randint(1, 3)},
        {"run_id": c.uuid(), "outcome": r.choice(["ok", "failed", "timeout"]), "exit_code": r.randint(0, 2),
         "backend": "bubblewrap", "stdout_bytes": r.randint(0, 64000)},
        {"reservation_id": f"{c.hexid(32)}:{r.randint(1, 40)}", "reserved_usd": round(r.uniform(0, 1), 6),
         "remaining_usd": round(r.uniform(0, 5), 4), "scope": r.choice(["mission", "daily", "monthly"])},
        {"author": r.choice(["alice", "bob", "ci-bot"]), "commit": c.hexid(40), "branch": "main",
         "secret_name": "db-password-ref", "password_file": "/run/secrets/db", "token_count": r.randint(1, 900)},
        {"error": "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 4317)",
         "endpoint": "http://127.0.0.1:4317", "retry_in": r.randint(1, 30)},
    ])
    return _json_line(c, r.choice(_EVENTS), **fields)


def _clean_access(c: Corpus) -> str:
    r = c.r
    path = r.choice([f"/v1/missions/{c.hexid(32)}", f"/v1/missions/{c.hexid(32)}/timeline", "/healthz",
                     "/metrics", "/v1/status", f"/v1/dlq/{r.randint(1, 99)}/replay"])
    return f'127.0.0.1:{r.randint(30000, 65000)} - "{r.choice(["GET", "POST"])} {path} HTTP/1.1" ' \
           f'{r.choice([200, 200, 201, 202, 404, 409, 429])}'


def _clean_httpx(c: Corpus) -> str:
    r = c.r
    url = r.choice(["https://api.openai.com/v1/chat/completions", "http://127.0.0.1:8090/v1/chat/completions",
                    "https://openrouter.ai/api/v1/models", "http://127.0.0.1:16686/api/traces?service=agent"])
    return f'{c.ts()} INFO httpx: HTTP Request: POST {url} "HTTP/1.1 200 OK"'


def _clean_traceback(c: Corpus) -> str:
    r = c.r
    mod = r.choice(["agent/roles.py", "orchestrator/engine.py", "common/bus.py", "budget/ledger.py"])
    line = r.randint(10, 700)
    return f'  File "/work/main/services/coo/{mod}", line {line}, in {r.choice(_WORDS)}_{r.choice(_WORDS)}'


def _clean_prose(c: Corpus) -> str:
    r = c.r
    return r.choice([
        f"the token count was {r.randint(1, 9000)} and the max tokens setting is {r.choice([1024, 2048, 4096])}",
        f"mission {c.hexid(32)} {r.choice(['completed', 'failed', 'paused'])} after {r.randint(1, 90)}s: {c.words(8)}",
        f"trace {c.hexid(32)} span {c.hexid(16)} parent {c.hexid(16)} {c.words(5)}",
        f"commit {c.hexid(40)} by {r.choice(['alice', 'bob'])}: {c.words(6)}",
        f"request id {c.uuid()} took {round(r.uniform(0.1, 900), 1)} ms; {c.words(7)}",
        f"payload (base64): {c.s(_B64, 40)} {c.words(3)}",
        f"wrote /var/lib/coo/data/sandbox/{c.uuid()}/out.txt ({r.randint(1, 9999)} bytes)",
        f"nats: subscribed to coo.results.agent on stream COO_RESULTS (durable orchestrator-agent-results), "
        f"pending={r.randint(0, 100)}",
    ])


_CLEAN = (_clean_json, _clean_access, _clean_httpx, _clean_traceback, _clean_prose)
_CLEAN_WEIGHTS = (55, 15, 10, 8, 12)


# ---------------------------------------------------------------------------------- run
def _caught(rec: Record, out: str) -> bool:
    secret = rec.secret
    if secret in out:
        return False
    if len(secret) >= 24 and (secret[:12] in out or secret[-12:] in out):
        return False
    return "[REDACTED:" in out


def _timed(fn, texts: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = [fn(t) for t in texts]
    return out, time.perf_counter() - start


def run(cfg: Config) -> Result:
    from coo.common.scrub import naive_scrub_text, scrub_text

    result = Result("scrub", TITLE)
    size = cfg.n(10 * 1024 * 1024 + 512 * 1024, 200 * 1024)
    started = time.perf_counter()
    corpus = Corpus().build(size)
    gen_seconds = time.perf_counter() - started
    texts = [r.text for r in corpus]
    total_mb = sum(len(t.encode()) + 1 for t in texts) / 1e6
    scrub_text("warm-up password=x sk-" + "a" * 30)

    fast_out, fast_s = _timed(scrub_text, texts)
    naive_out, naive_s = _timed(naive_scrub_text, texts)

    secret_recs = [i for i, r in enumerate(corpus) if r.kind]
    clean_recs = [i for i, r in enumerate(corpus) if not r.kind]
    caught = [i for i in secret_recs if _caught(corpus[i], fast_out[i])]
    missed_by_kind: dict[str, int] = {}
    per_kind: dict[str, int] = {}
    for i in secret_recs:
        per_kind[corpus[i].kind] = per_kind.get(corpus[i].kind, 0) + 1
    for i in set(secret_recs) - set(caught):
        missed_by_kind[corpus[i].kind] = missed_by_kind.get(corpus[i].kind, 0) + 1
    false_pos = [i for i in clean_recs if fast_out[i] != texts[i]]
    naive_caught = sum(1 for i in secret_recs if _caught(corpus[i], naive_out[i]))
    naive_fp = sum(1 for i in clean_recs if naive_out[i] != texts[i])
    same = sum(1 for a, b in zip(fast_out, naive_out) if a == b)

    fast_mbs, naive_mbs = total_mb / fast_s, total_mb / naive_s
    recall = len(caught) / len(secret_recs) if secret_recs else float("nan")
    naive_recall = naive_caught / len(secret_recs) if secret_recs else float("nan")
    fp_rate = len(false_pos) / len(clean_recs) if clean_recs else float("nan")
    result.add("throughput", fast_mbs, naive_mbs, "MB/s", ratio(fast_mbs, naive_mbs), "x naive loop",
               "naive_scrub_text", goal=5.0)
    result.add("recall on labelled secrets", recall, naive_recall, "fraction", ratio(recall, naive_recall),
               "x naive recall", "naive_scrub_text", goal=0.99, goal_on="value")
    result.add("false positives on secret-free records", fp_rate * 100, naive_fp / len(clean_recs) * 100, "%",
               None, "", "naive_scrub_text", goal=0.1, goal_on="value", higher_is_better=False)
    result.details = {
        "corpus": {"seed": SEED, "megabytes": round(total_mb, 2), "records": len(corpus),
                   "with_secret": len(secret_recs), "secret_free": len(clean_recs),
                   "multi_line_records": sum(1 for t in texts if "\n" in t), "kinds": per_kind,
                   "generated_in_s": round(gen_seconds, 2)},
        "scrub_text": {"seconds": round(fast_s, 3), "mb_per_s": round(fast_mbs, 2), "caught": len(caught),
                       "missed_by_kind": missed_by_kind, "false_positives": len(false_pos)},
        "naive_scrub_text": {"seconds": round(naive_s, 3), "mb_per_s": round(naive_mbs, 2), "caught": naive_caught,
                             "false_positives": naive_fp},
        "identical_outputs": f"{same}/{len(texts)}",
        "false_positive_examples": [texts[i][:300] for i in false_pos[:5]],
        "missed_examples": [corpus[i].text[:300] for i in sorted(set(secret_recs) - set(caught))[:5]],
    }
    result.notes.append(f"{len(corpus):,} records ({total_mb:.1f} MB, seed {SEED}), {len(secret_recs):,} with a "
                        f"labelled secret; both scrubbers gave identical output for {same:,}/{len(texts):,}")
    return result

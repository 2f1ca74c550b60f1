"""A labelled corpus of secrets in the shapes logs take, and of benign look-alikes, generated from a
fixed seed (nothing secret-shaped is committed: every value is assembled here at run time).

* :func:`secret_records`: at least 60 kinds of secret (vendor tokens from gitleaks' rule set and our
  own, passwords holding ``& # % ; : @ / ?`` and spaces, URL user-info, headers, cookies, CLI flags,
  connection strings, PEM blocks, NATS credentials files), each kind in every shape it can take
  (env and dotenv lines, YAML, JSON, a JSON log line, a query string, a header, a cookie, a CLI
  flag, a connection string, prose), each value encoded the way that shape encodes it;
* :func:`benign_records`: lines with no secret that look like some (hashes, ids, base64 payloads,
  NATS public keys, host:port/@path URLs, token counts...).

A record's ``needles`` are the secret as it appears in its text; :func:`leaked` says whether any
of it survived (a fragment of eight characters counts: a half-redacted secret is a miss).
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

SEED = 20261206

ALNUM = string.ascii_letters + string.digits
UPPER = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# Passwords hold the characters that used to cut a value short; quotes, backslash and backtick
# are left out (each shape's quoting of those is its own escape rule, tested in test_scrub.py).
SPECIALS = "&#%;:@/?!$^*()-_=+[]{},.<>|~ "


@dataclass
class Record:
    kind: str
    shape: str
    text: str
    needles: list[str] = field(default_factory=list)


class Gen:
    def __init__(self, seed: int = SEED) -> None:
        self.r = random.Random(seed)

    def s(self, alphabet: str, n: int) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def password(self) -> str:
        # at least one special in the middle, so a value cut at any of them leaves a tail
        head, tail = self.s(ALNUM, self.r.randint(5, 9)), self.s(ALNUM, self.r.randint(5, 9))
        mid = self.s(SPECIALS.replace(" ", ""), 1) + self.s(ALNUM + SPECIALS, self.r.randint(3, 8))
        return head + mid.strip() + tail


def _b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


# ------------------------------------------------------------------------------------ tokens
# kind -> (environment variable that usually holds it, maker)
TOKENS: dict[str, tuple[str, Callable[[Gen], str]]] = {
    "aws_access_key": ("AWS_ACCESS_KEY_ID", lambda g: "AKIA" + g.s("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
    "github_pat": ("GITHUB_TOKEN", lambda g: "ghp_" + g.s(ALNUM, 36)),
    "github_oauth": ("GH_OAUTH_TOKEN", lambda g: "gho_" + g.s(ALNUM, 36)),
    "github_app": ("GH_APP_TOKEN", lambda g: "ghs_" + g.s(ALNUM, 36)),
    "github_fine_grained": ("GH_PAT", lambda g: "github_pat_11" + g.s(UPPER, 20) + "_" + g.s(ALNUM, 59)),
    "gitlab_pat": ("GITLAB_TOKEN", lambda g: "glpat-" + g.s(URLSAFE, 20)),
    "gitlab_deploy": ("CI_DEPLOY_PASSWORD", lambda g: "gldt-" + g.s(URLSAFE, 20)),
    "gitlab_runner": ("RUNNER_TOKEN", lambda g: "glrt-" + g.s(URLSAFE, 20)),
    "slack_bot": ("SLACK_BOT_TOKEN", lambda g: "xoxb-" + g.s(string.digits, 12) + "-" + g.s(string.digits, 13)
                  + "-" + g.s(ALNUM, 24)),
    "slack_user": ("SLACK_USER_TOKEN", lambda g: "xoxp-" + g.s(string.digits, 12) + "-" + g.s(string.digits, 12)
                   + "-" + g.s(string.digits, 13) + "-" + g.s(HEX, 32)),
    "slack_app": ("SLACK_APP_TOKEN", lambda g: "xapp-1-A" + g.s(UPPER, 10) + "-" + g.s(string.digits, 13) + "-"
                  + g.s(HEX, 64)),
    "stripe_live": ("STRIPE_SECRET_KEY", lambda g: "sk_live_" + g.s(ALNUM, 32)),
    "stripe_restricted": ("STRIPE_RK", lambda g: "rk_live_" + g.s(ALNUM, 32)),
    "stripe_webhook": ("STRIPE_WEBHOOK_SECRET", lambda g: "whsec_" + g.s(ALNUM, 32)),
    "openai": ("OPENAI_API_KEY", lambda g: "sk-proj-" + g.s(URLSAFE, 74) + "T3Blbk" + "FJ" + g.s(URLSAFE, 74)),
    "anthropic": ("ANTHROPIC_API_KEY", lambda g: "sk-ant-api03-" + g.s(URLSAFE, 93) + "AA"),
    "openrouter": ("OPENROUTER_API_KEY", lambda g: "sk-or-v1-" + g.s(HEX, 64)),
    "groq": ("GROQ_API_KEY", lambda g: "gsk_" + g.s(ALNUM, 52)),
    "xai": ("XAI_API_KEY", lambda g: "xai-" + g.s(ALNUM, 80)),
    "perplexity": ("PPLX_API_KEY", lambda g: "pplx-" + g.s(ALNUM, 48)),
    "replicate": ("REPLICATE_API_TOKEN", lambda g: "r8_" + g.s(ALNUM, 37)),
    "huggingface": ("HF_TOKEN", lambda g: "hf_" + g.s(string.ascii_letters, 34)),
    "gcp_api_key": ("GOOGLE_API_KEY", lambda g: "AIza" + g.s(URLSAFE, 35)),
    "google_oauth": ("GOOGLE_ACCESS_TOKEN", lambda g: "ya29." + g.s(URLSAFE, 120)),
    "npm": ("NPM_TOKEN", lambda g: "npm_" + g.s(ALNUM, 36)),
    "pypi": ("TWINE_PASSWORD", lambda g: "pypi-AgEIcHlwaS5vcmc" + g.s(URLSAFE, 70)),
    "rubygems": ("GEM_HOST_API_KEY", lambda g: "rubygems_" + g.s(HEX, 48)),
    "sendgrid": ("SENDGRID_API_KEY", lambda g: "SG." + g.s(URLSAFE, 22) + "." + g.s(URLSAFE, 43)),
    "twilio": ("TWILIO_API_KEY", lambda g: "SK" + g.s(HEX, 32)),
    "digitalocean": ("DIGITALOCEAN_TOKEN", lambda g: "dop_v1_" + g.s(HEX, 64)),
    "vault": ("VAULT_TOKEN", lambda g: "hvs." + g.s(URLSAFE, 90)),
    "age": ("SOPS_AGE_KEY", lambda g: "AGE-SECRET-KEY-1" + g.s("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)),
    "shopify": ("SHOPIFY_ACCESS_TOKEN", lambda g: "shpat_" + g.s(HEX, 32)),
    "linear": ("LINEAR_API_KEY", lambda g: "lin_api_" + g.s(ALNUM, 40)),
    "postman": ("POSTMAN_API_KEY", lambda g: "PMAK-" + g.s(HEX, 24) + "-" + g.s(HEX, 34)),
    "pulumi": ("PULUMI_ACCESS_TOKEN", lambda g: "pul-" + g.s(HEX, 40)),
    "sentry": ("SENTRY_AUTH_TOKEN", lambda g: "sntryu_" + g.s(HEX, 64)),
    "grafana_sa": ("GRAFANA_TOKEN", lambda g: "glsa_" + g.s(ALNUM, 32) + "_" + g.s(HEX, 8)),
    "doppler": ("DOPPLER_TOKEN", lambda g: "dp.pt." + g.s(ALNUM, 43)),
    "newrelic": ("NEW_RELIC_API_KEY", lambda g: "NRAK-" + g.s(UPPER, 27)),
    "databricks": ("DATABRICKS_TOKEN", lambda g: "dapi" + g.s(HEX, 32)),
    "planetscale": ("PLANETSCALE_TOKEN", lambda g: "pscale_tkn_" + g.s(URLSAFE, 43)),
    "heroku": ("HEROKU_API_KEY", lambda g: "HRKU-AA" + g.s(URLSAFE, 58)),
    "flyio": ("FLY_API_TOKEN", lambda g: "fo1_" + g.s(URLSAFE, 43)),
    "atlassian": ("JIRA_API_TOKEN", lambda g: "ATATT3" + g.s(URLSAFE + "=", 186)),
    "onepassword_sa": ("OP_SERVICE_ACCOUNT_TOKEN", lambda g: "ops_eyJ" + g.s(ALNUM + "+/", 260)),
    "azure_ad_client_secret": ("AZURE_CLIENT_SECRET", lambda g: g.s(ALNUM, 3) + "8Q~" + g.s(ALNUM + "_~.-", 34)),
    "telegram_bot": ("TELEGRAM_BOT_TOKEN", lambda g: g.s("123456789", 1) + g.s(string.digits, 9) + ":AA"
                     + g.s(URLSAFE, 33)),
    "jwt": ("ID_TOKEN", lambda g: _b64url({"alg": "RS256", "typ": "JWT"}) + "." + _b64url(
        {"sub": g.s(ALNUM, 12), "iat": g.r.randint(1_600_000_000, 1_900_000_000)}) + "." + g.s(URLSAFE, 86)),
    # our own rules: what gitleaks lacks
    "nats_nkey_seed": ("NATS_NKEY_SEED", lambda g: "SU" + g.s(BASE32, 56)),
    "dockerhub_pat": ("DOCKERHUB_TOKEN", lambda g: "dckr_pat_" + g.s(URLSAFE, 27)),
    "ecr_login": ("ECR_PASSWORD", lambda g: "eyJwYXlsb2FkIjoi" + g.s(B64, 600) + "="),
}

# Values with no recognisable shape: only their context (a key, a URL, a flag...) gives them away.
PLAIN = ("password", "db_password", "client_secret", "api_key", "auth_token", "session_id", "private_key",
         "x-api-key", "passphrase", "signing_key")


def _sh_single(v: str) -> str:
    return "'" + v + "'"


def _yaml_scalar(v: str) -> str:
    plain_ok = not any(c in v for c in ":#{}[],&*!|>'\"%@`") and v == v.strip()
    return v if plain_ok else "'" + v.replace("'", "''") + "'"


def _token_shapes(g: Gen, env: str, v: str) -> list[tuple[str, str, str]]:
    """(shape, text, needle) for a self-identifying token."""
    lower = env.lower()
    return [
        ("env", f"export {env}={v}", v),
        ("dotenv", f"{env}={v}", v),
        ("yaml", f"  {lower}: {v}", v),
        ("json", json.dumps({"level": "info", "event": "configured", lower: v}), v),
        ("json-prose", json.dumps({"event": f"retrying with {v} after a 401", "attempt": 2}), v),
        ("prose", f"2026-12-06T10:00:00Z WARN coo.agent: fallback credential {v} rejected by upstream", v),
        ("header", f"> Authorization: Bearer {v}", v),
        ("query", f"GET /v1/hook?state=ok&access_token={urllib.parse.quote(v, safe='')}&n=2 HTTP/1.1",
         urllib.parse.quote(v, safe="")),
        ("cli", f"running: deploy --token {v} --dry-run", v),
        ("traceback", f"ValueError: invalid credential '{v}' for model mock-large", v),
    ]


def _password_shapes(g: Gen, key: str, v: str) -> list[tuple[str, str, str]]:
    """(shape, text, needle) for a context-only secret holding special characters."""
    q = urllib.parse.quote(v, safe="")
    braced = "{" + v.replace("}", "}}") + "}"
    dq = json.dumps(v)[1:-1]
    esc = json.dumps(json.dumps({key: v}))          # JSON inside a JSON string
    inner = json.dumps(v)[1:-1]
    esc_needle = json.dumps(inner)[1:-1]
    return [
        ("dotenv", f"{key.upper().replace('-', '_')}={v}", v),
        ("env-quoted", f'export {key.upper().replace("-", "_")}="{v}"', v),
        ("shell-flag", f"exec: tool --{key.replace('_', '-')} {_sh_single(v)} --verbose", v),
        ("shell-flag-eq", f"exec: tool --{key.replace('_', '-')}={_sh_single(v)}", v),
        ("yaml", f"  {key}: {_yaml_scalar(v)}", _yaml_scalar(v).strip("'").replace("''", "'")
         if "''" not in _yaml_scalar(v) else v.split("'")[0]),
        ("json", json.dumps({"user": "coo", key: v, "port": 5432}), dq),
        ("json-log", json.dumps({"event": f"settings loaded: {key}={v}", "logger": "coo.sandbox"}), dq),
        ("escaped-json", esc, esc_needle),
        ("query", f"POST /login?user=coo&{key}={q}&next=%2Fhome HTTP/1.1", q),
        ("header", f"{key.title()}: {v}", v),
        ("conn-string", f"Server=tcp:db.internal,1433;Database=coo;User Id=sa;{key}={braced};Encrypt=true", braced),
        ("logfmt", f'ts=2026-12-06T10:00:00Z level=info msg="connect" {key}="{v}" host=db', v),
        ("python-repr", f"Settings(host='db', {key}={v!r}, port=5432)", v),
    ]


def secret_records(seed: int = SEED) -> list[Record]:
    g = Gen(seed)
    out: list[Record] = []
    for kind, (env, make) in TOKENS.items():
        for shape, text, needle in _token_shapes(g, env, make(g)):
            out.append(Record(kind, shape, text, [needle]))
    for key in PLAIN:
        for _ in range(4):
            for shape, text, needle in _password_shapes(g, key, g.password()):
                out.append(Record(f"plain:{key}", shape, text, [needle]))
    # URL user-info, whatever it holds (raw, as people paste it: # @ : / ? % included)
    for scheme in ("postgres", "mysql+pymysql", "redis", "amqp", "mongodb+srv", "https", "nats"):
        for _ in range(3):
            pw = g.s(ALNUM, 5) + g.s("#@:/?%&;!$", 2) + g.s(ALNUM, 5)
            out.append(Record(f"url_userinfo:{scheme}", "url", f"connecting to {scheme}://app:{pw}@db.internal:5432/coo",
                              [pw]))
            out.append(Record(f"url_userinfo:{scheme}", "url-json",
                              json.dumps({"event": "dial", "url": f"{scheme}://svc:{pw}@10.0.0.7/x"}), [pw]))
    # headers and cookies
    for _ in range(5):
        b = g.s(URLSAFE, g.r.randint(24, 64))
        out.append(Record("bearer", "header", f"< Authorization: Bearer {b}", [b]))
        out.append(Record("bearer", "curl", f"curl -H 'Authorization: Bearer {b}' https://api.example.com/v1", [b]))
        basic = base64.b64encode(f"coo:{g.password()}".encode()).decode()
        out.append(Record("basic_auth", "header", f"Authorization: Basic {basic}", [basic]))
        sid = g.s(HEX, 32)
        csrf = g.s(ALNUM, 16)
        out.append(Record("cookie", "header", f"Cookie: theme=dark; sessionid={sid}; csrftoken={csrf}", [sid]))
        out.append(Record("cookie", "set-cookie", f"Set-Cookie: session={sid}; Path=/; HttpOnly", [sid]))
        tok = g.s(HEX, 40)
        out.append(Record("django_token", "header", f'-H "Authorization: Token {tok}"', [tok]))
    # command lines
    for _ in range(4):
        pw = g.password().replace(" ", "")
        out.append(Record("cli:docker_login", "cli", f"docker login -u ci -p {pw} registry.example.com", [pw]))
        out.append(Record("cli:mysql", "cli", f"mysql -h db -u root -p{pw} coo", [pw]))
        out.append(Record("cli:curl_user", "cli", f"curl -sS -u admin:{pw} https://jenkins.internal/api", [pw]))
        key = g.s(B64, 86) + "=="
        out.append(Record("azure_storage", "conn-string",
                          f"DefaultEndpointsProtocol=https;AccountName=coo;AccountKey={key};EndpointSuffix=core.windows.net",
                          [key]))
        aws = g.s(ALNUM + "/+", 40)
        out.append(Record("aws_secret_key", "ini", f"aws_secret_access_key = {aws}", [aws]))
        hook = "T" + g.s(UPPER, 10) + "/B" + g.s(UPPER, 10) + "/" + g.s(ALNUM, 24)
        out.append(Record("slack_webhook", "url", f"POST https://hooks.slack.com/services/{hook} -> 200", [hook]))
        dcfg = base64.b64encode(json.dumps({"auths": {"registry.example.com": {
            "auth": base64.b64encode(f"ci:{g.password()}".encode()).decode()}}}).encode()).decode()
        out.append(Record("dockerconfigjson", "k8s", f"  .dockerconfigjson: {dcfg}", [dcfg]))
    # multi-line blocks
    for label in ("RSA ", "EC ", "OPENSSH ", ""):
        body = [g.s(B64, 64) for _ in range(8)] + [g.s(B64, 20) + "=="]
        block = f"-----BEGIN {label}PRIVATE KEY-----\n" + "\n".join(body) + f"\n-----END {label}PRIVATE KEY-----"
        out.append(Record("private_key", "pem", f"loaded key:\n{block}\ndone", body))
        out.append(Record("private_key", "pem-json", json.dumps({"event": "key", "pem": block}), body))
    for _ in range(3):
        seed_ = "SU" + g.s(BASE32, 56)
        jwt = TOKENS["jwt"][1](g)
        creds = ("-----BEGIN NATS USER JWT-----\n" + jwt + "\n------END NATS USER JWT------\n\n"
                 "************************* IMPORTANT *************************\n"
                 "NKEY Seed printed below can be used to sign and prove identity.\n\n"
                 "-----BEGIN USER NKEY SEED-----\n" + seed_ + "\n------END USER NKEY SEED------")
        out.append(Record("nats_creds", "creds-file", creds, [seed_, jwt.split(".")[2]]))
    return out


# ----------------------------------------------------------------------------------- benign
def benign_records(seed: int = SEED) -> list[Record]:
    g = Gen(seed + 1)
    out: list[str] = []
    for _ in range(40):
        sha, sha256 = g.s(HEX, 40), g.s(HEX, 64)
        uuid = "-".join(g.s(HEX, n) for n in (8, 4, 4, 4, 12))
        b64 = base64.b64encode(g.r.randbytes(g.r.randint(15, 150))).decode()
        ulid = g.s("0123456789ABCDEFGHJKMNPQRSTVWXYZ", 26)
        nkey_pub = "U" + g.s(BASE32, 55)
        out += [
            f"commit {sha} (HEAD -> main) merged by alice",
            f"image ghcr.io/coo/agent@sha256:{sha256} pulled in 2.1s",
            f"md5 {g.s(HEX, 32)} size {g.r.randint(1, 10**6)}",
            json.dumps({"event": "sandbox run executed", "run_id": uuid, "trace_id": g.s(HEX, 32),
                        "span_id": g.s(HEX, 16), "input_tokens": g.r.randint(1, 9000), "max_tokens": 2048}),
            f"payload (base64): {b64}",
            json.dumps({"event": "llm call", "payload": b64, "model": "mock-large", "token_count": 12}),
            f"request {ulid} took {g.r.randint(1, 900)} ms",
            f"nats user public key {nkey_pub} connected from 127.0.0.1:{g.r.randint(30000, 60000)}",
            f"GET https://registry.npmjs.org:443/@types/{g.s(string.ascii_lowercase, 6)} 200",
            f"http://127.0.0.1:{g.r.randint(8000, 9000)}/api/users/@me -> 200",
            f"docker run -p 8080:80 -e MODE=demo ghcr.io/coo/sandbox:{g.r.randint(1, 9)}.{g.r.randint(0, 9)}",
            f"ssh://git@github.com/coo/{g.s(string.ascii_lowercase, 8)}.git fetched",
            f"the token count was {g.r.randint(1, 9000)} and max_tokens is 4096",
            f"password_file=/run/secrets/db secret_name=db-creds auth_method=oauth2 key_id={g.s(HEX, 8)}",
            f"go.sum: github.com/nats-io/nkeys v0.4.7 h1:{base64.b64encode(g.r.randbytes(32)).decode()}",
            f"wrote /var/lib/coo/data/sandbox/{uuid}/out.txt ({g.r.randint(1, 9999)} bytes)",
            f"traceparent: 00-{g.s(HEX, 32)}-{g.s(HEX, 16)}-01",
            f"k8s pod coo-agent-{g.s(HEX, 10)}-{g.s(string.ascii_lowercase + string.digits, 5)} Running",
            f"sk-learn compatible; SKU-{g.r.randint(1000, 9999)}; task-queue depth {g.r.randint(0, 50)}",
            "Authorization header missing: send a bearer token (see docs)",
            f"{g.r.randint(1, 28):02d}/12/2026 12:{g.r.randint(10, 59)}:{g.r.randint(10, 59)} INFO done",
        ]
    return [Record("", "benign", t) for t in out]


_MARKER = re.compile(r"\[REDACTED:[^\]]*\]")


def leaked(rec: Record, out: str, window: int = 8) -> bool:
    """True when any fragment (``window`` characters) of any needle is still in ``out`` (markers
    aside: ``[REDACTED:rubygems-api-token]`` is not a piece of a rubygems token)."""
    out = _MARKER.sub("\x00", out)
    for needle in rec.needles:
        if len(needle) <= window:
            if needle in out:
                return True
            continue
        for i in range(len(needle) - window + 1):
            if needle[i:i + window] in out:
                return True
    return False

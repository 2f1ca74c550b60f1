"""The one table of secret (and optional PII) patterns.

Everything that redacts secrets in COO is generated from this table:

* :mod:`coo.common.scrub` (structlog processor, ``coo scrub``) compiles it with Python ``re``;
* ``scripts/gen_collector_redaction.py`` turns it into the OpenTelemetry Collector's ``transform``
  (OTTL ``replace_pattern``) and ``redaction`` rules, which run on Go's RE2.

So every regex here must mean the same thing to both engines. The rules (tested in
tests/test_scrub.py, also against Go's own ``regexp`` when a Go toolchain is present):

* RE2 syntax only: no look-around, no back-references, no possessive or atomic groups, no ``\\Z``,
  repetition counts <= 1000, named groups spelled ``(?P<name>...)``; global flags only as a
  leading ``(?i)``/``(?m)``, otherwise scoped ``(?i:...)``. Python compiles them with ``re.ASCII`` so
  ``\\b``/``\\w``/``\\d`` are ASCII, as in RE2; whitespace is spelled out (:data:`_WS`) instead of
  ``\\s`` because the two engines disagree on ``\\v``.
* Only the ``private_key`` pattern may match across a line break. Every other pattern stays
  inside one line (no ``\\s``, every negated class excludes ``\\n``), which lets the scrubber work
  line by line and ``coo scrub`` stream.
* A pattern may carry the named groups ``pre`` and ``post``: context that is kept (the key name,
  the URL scheme and user, the ``@``). The rest of the match is the secret, replaced by
  ``[REDACTED:<kind>]``. Patterns are applied one after the other, in table order.
* Idempotence (``scrub(scrub(x)) == scrub(x)``): no pattern matches a marker, except key/value
  patterns, which turn their own marker into the same marker; and a marker must not open a new
  match next to it, so a token pattern anchored by ``\\b`` ends with an open-ended run that covers
  every letter and digit (``{n,}``) or with ``\\b``: it never stops inside a word whose rest a
  marker's ``]`` would turn into a fresh start. The e-mail pattern does not start after ``]``.

Key/value rule (documented in the module docs of :mod:`coo.common.scrub` too): a key *names a
secret* when it ENDS with one of :data:`_KEY_WORDS` (case-insensitive, ``-``/``_``/``.`` between
parts optional): ``password``, ``DB_PASS``, ``GITHUB_TOKEN``, ``x-api-key``, ``clientSecret``,
``Authorization``, ``session_id``, ``Cookie``... but not ``token_count``, ``input_tokens``,
``max_tokens``, ``author``, ``secret_name``, ``password_file``. In text, such a key followed by
``=``, ``:``, ``:=`` or ``=>`` and a value of at least ONE character is redacted (``token=42`` is
redacted; prose such as "the token count was 42" has no separator right after the key and is left
alone). The value runs to the closing quote when quoted, else to whitespace or one of
``" ' ` , ; & < >``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from coo.common.gitleaks_rules import RULES as _GITLEAKS_RULES

__all__ = [
    "MARKER_PREFIX",
    "PATTERN_SPECS",
    "PII_PATTERNS",
    "PY_FLAGS",
    "SECRET_KEY_PATTERN",
    "SECRET_PATTERNS",
    "PatternSpec",
    "go_template",
    "marker",
    "python_template",
]

MARKER_PREFIX = "[REDACTED:"


def marker(kind: str) -> str:
    """The text that replaces a secret: ``[REDACTED:<kind>]``."""
    return f"{MARKER_PREFIX}{kind}]"


#: Python compile flags for every pattern (RE2's \b, \w, \d are ASCII).
PY_FLAGS = re.ASCII


class PatternSpec(NamedTuple):
    name: str                          # unique id
    kind: str                          # the label in [REDACTED:<kind>]
    regex: str                         # RE2-compatible source
    triggers: tuple[str, ...] | None   # lower-case substrings, one of which must occur for a match (None: no test)
    requires: tuple[str, ...] | None = None  # a second any-of test of the same kind, ANDed with triggers
    pii: bool = False                  # only with pii=True
    quote: bool = False                # replacement wraps the marker in double quotes (JSON literals)
    gate: str | None = None            # a cheap necessary condition: regex searched (case-sensitively) in the lower-cased text
    gate_at_start: bool = False        # the gate matches where the pattern's match starts (so its hits are the only candidates)
    gate_bucket: str | None = None     # key/value gates only: which value shape follows the separator (see scrub._gate_positions)
    starts: tuple[str, ...] | None = None  # lower-case words every match starts with: tried only where one occurs


# Whitespace spelled out: Python's \s includes \v, RE2's does not.
_WS = r" \t\r\n\f\v"

# Words a secret-naming key ENDS with. No left boundary on purpose: GITHUB_TOKEN, dbpassword,
# clientSecret, x-api-key all end with one. Plurals are accepted except for ``tokens`` (LLM token
# counts: input_tokens, max_tokens).
_KEY_WORDS = (
    r"(?:p(?:ass(?:word|wd|phrase)?s?|wd|rivate[_.-]?keys?)"
    r"|s(?:ecrets?|ecret[_.-]?keys?|ession[_.-]?(?:id|key)|essid|ig(?:nature)?|igning[_.-]?keys?)"
    r"|token|bearer"
    r"|a(?:uth(?:orization)?|uth[_.-]?keys?|pi[_.-]?keys?|ccess[_.-]?keys?|ccount[_.-]?keys?)"
    r"|c(?:redentials?|reds|ookies?|lient[_.-]?keys?)"
    r"|encryption[_.-]?keys?|master[_.-]?keys?)"
)

#: Regex source that matches a secret-naming key (a dict key, an attribute name) as a whole:
#: it must END with a secret word. Used by :func:`coo.common.scrub.is_secret_key` and the
#: collector's ``blocked_key_patterns``.
SECRET_KEY_PATTERN = r"(?i)" + _KEY_WORDS + r"$"

_KEY_QUOTE = r"""(?:\\*["'])?"""                 # the key's closing quote, maybe JSON-escaped
_SEP = r"[ \t]*(?::=|=>|[:=])[ \t]*"
_SCHEME = r"(?:(?:bearer|basic|digest|token|bot|negotiate)[ \t]+)?"   # Authorization: Bearer <secret>

# A bare (unquoted) value: at least one character; may not start with a separator-like character
# (so ``token == x`` and Rust's ``auth::x`` are left alone) nor with ``["``/``{"`` (a JSON array or
# object follows: its own keys decide). ``\`` is part of the value unless it escapes a quote.
# A value runs to the end of its token in the format it is in, not to the first special
# character: & # % ; , belong to a bare value (an env line, a shell argument, logfmt); only a
# query string ends a value at & or # (a raw & cannot be in a value there: it would be %26), a
# connection string at ; (a value holding ; is quoted or braced there), a line-start
# ``key: value`` / ``KEY=value`` (YAML scalar, header, env file) at the end of the line.
_BARE_STOP = _WS + r"\"'`"
#: A redaction marker as a value: matched first, so a key/value rule applied to its own output
#: keeps the marker and does not run on into what follows it.
_MARKER_VALUE = r"\[REDACTED:[A-Za-z0-9_.:-]{1,64}\]"
_BARE_VALUE = (
    _MARKER_VALUE + r"|"
    r"(?:[^" + _BARE_STOP + r"\\=:\[{(]"
    r"|[\[{(][^" + _BARE_STOP + r"\\\[{(]"
    r"|\\[^" + _WS + r"\"'])"
    r"(?:[^" + _BARE_STOP + r"\\]|\\[^" + _WS + r"\"'])*"
)
_DQ_VALUE = r"""(?:[^"\\\r\n]+|\\.)+"""
_SQ_VALUE = r"""(?:[^'\\\r\n]+|\\.|'')+"""   # '' is a quote inside a YAML/SQL single-quoted scalar
# Inside a JSON-escaped string (\"value\"): a \\ pair escapes the inner string's own escapes
# (\\\\ a backslash, \\\" a quote, \\n...); a lone \" closes it.
_EDQ_VALUE = r"""(?:[^"\\\r\n]|\\\\\\\\|\\\\\\"|\\\\[^"\\\r\n])+"""
_LINE_VALUE = _MARKER_VALUE + r"|[^" + _WS + r"\"'\[{(][^\r\n]*"      # to the end of the line
_QUERY_VALUE = _MARKER_VALUE + r"|[^" + _BARE_STOP + r"&#]+"
_CONN_VALUE = _MARKER_VALUE + r"|\{(?:[^}\r\n]|\}\})*\}|[^\r\n\"'`;]+"
# A line's start: indentation, then an optional shell/YAML/diff/curl prefix.
_LINE_START = r"(?im)(?P<pre>^[ \t]*(?:(?:export|set|setx|ENV|env:?|[-*>+<]|[0-9]+[.)])[ \t]+)?"
_KEY_CHARS = r"[A-Za-z0-9_.-]{0,64}?"

_KV_TRIGGERS = ("pass", "pwd", "secret", "token", "bearer", "auth", "key", "cred", "cookie", "sess", "sig")
_KV_REQUIRES = ("=", ":")
# Every key/value pattern starts with a secret word, its quote and a separator; searched without
# (?i) in lower-cased text this is ~10x faster than the case-insensitive patterns themselves and
# rules out almost every line (``"input_tokens": 12`` included).
_KV_GATE = r"(" + _KEY_WORDS + r")" + _KEY_QUOTE + _SEP

# Body of a PEM block: base64, armour headers (Proc-Type: 4,ENCRYPTED; Version: ...), line
# breaks, and JSON-escaped line breaks (\n). The same class serves the terminated form and the
# unterminated fallback (a truncated key is redacted up to where its body visibly ends), which
# also keeps the Python scan linear.
_PEM_BODY = r"[A-Za-z0-9+/=\\ \t\r\n:,.-]"
_PEM_BEGIN = r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"

PATTERN_SPECS: tuple[PatternSpec, ...] = (
    # --- multi-line: must stay first ------------------------------------------------------
    PatternSpec("private_key", "private_key",
                _PEM_BEGIN + r"(?:" + _PEM_BODY + r"*?" + _PEM_END + r"|" + _PEM_BODY + r"*)",
                ("private key",)),
    # --- context patterns: keep the key / the URL, redact the value -----------------------
    # URL user-info, whatever it holds (# ? @ : % ...): everything from the user's ":" to the last
    # "@" of the authority. A "/" is taken only when something other than digits precedes it, so
    # host:port/path@x (npm scopes, /@me) stays a URL without user-info.
    PatternSpec("url_password", "url_password",
                r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^" + _WS + r":/?#\"'<>\[\]]{0,256}:)"
                r"(?P<secret>[^" + _WS + r"\"'<>/]{1,256}|[^" + _WS + r"\"'<>/]{0,256}[^" + _WS + r"\"'<>/0-9]"
                r"[^" + _WS + r"\"'<>/]{0,256}/[^" + _WS + r"\"'<>]{0,256})(?P<post>@)",
                ("://",)),
    PatternSpec("url_token_user", "url_password",         # https://<token>@host: a token as the user
                r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]{0,30}://)(?P<secret>[A-Za-z0-9_~%+-]{20,256})(?P<post>@)",
                ("://",)),
    PatternSpec("kv_json_literal", "secret",
                r"(?im)(?P<pre>" + _KEY_WORDS + r"\\*\"[ \t]*:[ \t]*)"
                r"(?P<secret>-?[0-9][0-9.e+-]*|true|false|null)(?P<post>[ \t]*(?:[,}\]\r]|$))",
                _KV_TRIGGERS, (":",), quote=True, gate=_KV_GATE, gate_at_start=True, gate_bucket="json"),
    PatternSpec("kv_dq", "secret",
                r"(?i)(?P<pre>" + _KEY_WORDS + _KEY_QUOTE + _SEP + r"\"" + _SCHEME + r")"
                r"(?P<secret>" + _DQ_VALUE + r")",
                _KV_TRIGGERS, _KV_REQUIRES, gate=_KV_GATE, gate_at_start=True, gate_bucket="dq"),
    PatternSpec("kv_edq", "secret",
                r"(?i)(?P<pre>" + _KEY_WORDS + _KEY_QUOTE + _SEP + r"\\+\"" + _SCHEME + r")"
                r"(?P<secret>" + _EDQ_VALUE + r")",
                _KV_TRIGGERS, _KV_REQUIRES, gate=_KV_GATE, gate_at_start=True, gate_bucket="edq"),
    PatternSpec("kv_sq", "secret",
                r"(?i)(?P<pre>" + _KEY_WORDS + _KEY_QUOTE + _SEP + r"'" + _SCHEME + r")"
                r"(?P<secret>" + _SQ_VALUE + r")",
                _KV_TRIGGERS, _KV_REQUIRES, gate=_KV_GATE, gate_at_start=True, gate_bucket="sq"),
    PatternSpec("cookie_header", "secret",
                r"(?i)(?P<pre>cookie[ \t]*:[ \t]*)(?P<secret>[^" + _WS + r"\"'][^\r\n\"']*)",
                ("cookie",), (":",)),
    PatternSpec("kv_line", "secret",                      # YAML "password: a b", "X-Api-Key: k", env file
                # "key: value" (YAML, a header) or "KEY=value" with no blank around "=" (env file);
                # "token = f(x)" is code, whose value ends at a blank like any bare value
                _LINE_START + _KEY_CHARS + _KEY_WORDS + _KEY_QUOTE + r"(?:[ \t]*:[ \t]*|=)" + _SCHEME + r")"
                r"(?P<secret>" + _LINE_VALUE + r")",
                _KV_TRIGGERS, _KV_REQUIRES),
    PatternSpec("kv_query", "secret",                     # ?a=1&access_token=SECRET&b=2
                r"(?i)(?P<pre>[?&]" + _KEY_CHARS + _KEY_WORDS + r"=)(?P<secret>" + _QUERY_VALUE + r")",
                _KV_TRIGGERS, ("?", "&")),
    PatternSpec("kv_conn", "secret",                      # Server=x;Password=SECRET;Encrypt=yes
                r"(?i)(?P<pre>;[ \t]*" + _KEY_CHARS + _KEY_WORDS + r"[ \t]*=[ \t]*)(?P<secret>" + _CONN_VALUE + r")",
                _KV_TRIGGERS, (";",)),
    PatternSpec("kv_bare", "secret",
                r"(?i)(?P<pre>" + _KEY_WORDS + _KEY_QUOTE + _SEP + _SCHEME + r")"
                r"(?P<secret>" + _BARE_VALUE + r")",
                _KV_TRIGGERS, _KV_REQUIRES, gate=_KV_GATE, gate_at_start=True, gate_bucket="bare"),
    PatternSpec("kv_flag_quoted", "secret",               # --api-key 'a b', --password "x y" (quotes go too)
                r"(?i)(?P<pre>--[A-Za-z0-9_-]{0,40}?" + _KEY_WORDS + r"[ \t]+)"
                r"(?P<secret>'[^'\r\n]*'|\"(?:[^\"\\\r\n]|\\.)*\")",
                ("--",)),
    PatternSpec("kv_flag", "secret",                      # --password hunter2
                r"(?i)(?P<pre>--[A-Za-z0-9_-]{0,40}?" + _KEY_WORDS + r"[ \t]+)"
                r"(?P<secret>" + _MARKER_VALUE + r"|[^" + _BARE_STOP + r"\\=:\[{(-][^" + _BARE_STOP + r"]*)",
                ("--",)),
    PatternSpec("cli_login_password", "secret",           # docker login -u x -p SECRET, mysql -pSECRET
                r"(?P<pre>\b(?:(?:docker|podman|nerdctl|buildah|skopeo|oras|crane|helm[ \t]+registry)[ \t]+login"
                r"[^\r\n]*?[ \t](?:-p|--password)(?:[ \t]+|=)|\bmysql(?:admin|dump)?(?:[ \t][^\r\n]*?)?[ \t]-p)['\"]?)"
                r"(?P<secret>" + _MARKER_VALUE + r"|[^" + _BARE_STOP + r"-][^" + _BARE_STOP + r"]*)",
                ("login", "mysql")),
    PatternSpec("cli_user_password", "secret",            # curl -u user:SECRET, --user=user:SECRET
                r"(?P<pre>\bcurl(?:[ \t][^\r\n]*?)?[ \t](?:-u|--user)(?:[ \t]+|=)['\"]?[^:" + _WS + r"'\"]{1,256}:)"
                r"(?P<secret>" + _MARKER_VALUE + r"|[^" + _BARE_STOP + r"]+)",
                ("curl",)),
    PatternSpec("aws_secret_key", "aws_secret_key",       # aws_secret_whatever = <40 chars>
                r"(?P<pre>(?i:aws)[A-Za-z0-9_.-]{0,32}(?i:secret)[A-Za-z0-9_.-]{0,32}" + _KEY_QUOTE + _SEP
                + r"(?:\\?[\"'])?)(?P<secret>[A-Za-z0-9/+=]{40,})",
                None, gate=r"aws[a-z0-9_.-]{0,32}secret", gate_at_start=True),
    PatternSpec("bearer_token", "bearer_token",
                r"(?P<pre>\b[Bb]earer[ \t]+)(?P<secret>[A-Za-z0-9_.~+/-]{16,}=*)",
                ("bearer",)),
    PatternSpec("slack_webhook", "slack_webhook",
                r"(?P<pre>\bhooks\.slack\.com/(?:services|workflows|triggers)/)(?P<secret>[A-Za-z0-9+/_-]{8,})",
                ("hooks.slack.com/",)),
    PatternSpec("discord_webhook", "discord_webhook",
                r"(?P<pre>\bdiscord(?:app)?\.com/api(?:/v[0-9]{1,2})?/webhooks/[0-9]{5,30}/)(?P<secret>[A-Za-z0-9_-]{20,})",
                ("discord",)),
    # --- gitleaks' default rules (generated: coo.common.gitleaks_rules) ---------------------
    *(PatternSpec(f"gitleaks:{_kind}:{_n}", _kind, _rx, _trig, starts=_starts)
      for _n, (_kind, _rx, _trig, _starts) in enumerate(_GITLEAKS_RULES)),
    # --- our own rules: what gitleaks lacks, and shapes its rules leave out ------------------
    PatternSpec("nats_nkey_seed", "nats_nkey_seed",       # NATS nkey seeds: S + type + base32 (58 chars)
                r"\bS[UAONCXP][A-Z2-7]{56}\b", None, gate=r"\bs[uaoncxp][a-z2-7]{56}\b", gate_at_start=True),
    PatternSpec("container_registry_token", "container_registry_token",
                # Docker Hub personal/organisation access tokens; AWS ECR login tokens (base64 of
                # {"payload":"...); a base64 .dockerconfigjson ({"auths":...)
                r"\b(?:dckr_(?:pat|oat)_[A-Za-z0-9_-]{20,}|eyJwYXlsb2FkIjoi[A-Za-z0-9+/=]{40,}"
                r"|eyJhdXRocyI6[A-Za-z0-9+/=]{20,})",
                ("dckr_", "eyjwyxlsb2fkijoi", "eyjhdxrocyi6")),
    PatternSpec("aws_access_key", "aws_access_key",
                r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
                ("akia", "asia", "abia", "acca", "a3t")),
    PatternSpec("gcp_api_key", "gcp_api_key", r"\bAIza[0-9A-Za-z_-]{35,}", ("aiza",)),
    PatternSpec("google_oauth", "google_oauth",
                r"\b(?:ya29\.[0-9A-Za-z_-]{20,}|GOCSPX-[0-9A-Za-z_-]{20,})", ("ya29.", "gocspx-")),
    PatternSpec("azure_client_secret", "azure_client_secret",
                r"\b[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,}", ("q~",)),
    PatternSpec("github_token", "github_token",
                r"\b(?:gh[pousr]_[A-Za-z0-9_]{36,}|github_pat_[A-Za-z0-9_]{22,})",
                ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    PatternSpec("gitlab_token", "gitlab_token",
                r"\b(?:glpat|gldt|glrt|glptt|glcbt|glft|glimt|glagent|gloas|glsoat|glffct)-[0-9A-Za-z_.-]{20,}",
                ("glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "glft-", "glimt-", "glagent-", "gloas-",
                 "glsoat-", "glffct-")),
    PatternSpec("slack_token", "slack_token",
                r"\b(?:xox[abeoprs]-[0-9A-Za-z_-]{10,}|xapp-[0-9]-[0-9A-Za-z_-]{10,})", ("xox", "xapp-")),
    PatternSpec("discord_token", "discord_token",
                r"\b[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}", None, (".",),
                gate=r"\.[a-z0-9_-]{6}\."),
    PatternSpec("telegram_bot_token", "telegram_bot_token", r"\b[0-9]{5,16}:AA[0-9A-Za-z_-]{33,}", None,
                gate=r":aa[a-z0-9_-]{33}"),
    PatternSpec("anthropic_key", "anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}", ("sk-ant-",)),
    PatternSpec("openrouter_key", "openrouter_key", r"\bsk-or-v1-[A-Za-z0-9_-]{20,}", ("sk-or-",)),
    PatternSpec("openai_key", "openai_key",
                r"\bsk-(?:(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{16,}|[A-Za-z0-9]{20}[A-Za-z0-9_-]*)",
                ("sk-",)),
    PatternSpec("groq_key", "groq_key", r"\bgsk_[A-Za-z0-9]{20,}", ("gsk_",)),
    PatternSpec("huggingface_token", "huggingface_token", r"\b(?:hf|api_org)_[A-Za-z0-9]{30,}", ("hf_", "api_org_")),
    PatternSpec("xai_key", "xai_key", r"\bxai-[A-Za-z0-9]{20,}", ("xai-",)),
    PatternSpec("perplexity_key", "perplexity_key", r"\bpplx-[A-Za-z0-9]{20,}", ("pplx-",)),
    PatternSpec("replicate_token", "replicate_token", r"\br8_[A-Za-z0-9_-]{20,}", ("r8_",)),
    PatternSpec("stripe_key", "stripe_key",
                r"\b(?:[sr]k_(?:live|test|prod)_[A-Za-z0-9]{10,}|pk_live_[A-Za-z0-9]{10,})",
                ("k_live_", "k_test_", "k_prod_")),
    PatternSpec("stripe_webhook_secret", "stripe_webhook_secret", r"\bwhsec_[A-Za-z0-9+/=]{20,}", ("whsec_",)),
    PatternSpec("sendgrid_key", "sendgrid_key", r"\bSG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,}", ("sg.",)),
    PatternSpec("twilio_key", "twilio_key", r"\bSK[0-9a-fA-F]{32}\b", None, gate=r"sk[0-9a-f]{32}", gate_at_start=True),
    PatternSpec("npm_token", "npm_token", r"\bnpm_[A-Za-z0-9]{36,}", ("npm_",)),
    PatternSpec("pypi_token", "pypi_token", r"\bpypi-AgE[A-Za-z0-9_-]{50,}", ("pypi-age",)),
    PatternSpec("api_token", "api_token",                 # other vendors with a distinctive prefix
                r"\b(?:AGE-SECRET-KEY-1[0-9A-Z]{58}|hv[sb]\.[A-Za-z0-9_-]{24,}|do[opr]_v1_[a-f0-9]{64}"
                r"|dapi[a-f0-9]{32}|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}|lin_api_[A-Za-z0-9]{40}"
                r"|PMAK-[a-fA-F0-9]{24}-[a-fA-F0-9]{34}|pul-[a-f0-9]{40}|rubygems_[a-f0-9]{48}"
                r"|sntry[us]_[A-Za-z0-9+/=_]{40,}|gl(?:c|sa)_[A-Za-z0-9+/=_]{32,}|dp\.pt\.[A-Za-z0-9]{43}"
                r"|NRAK-[A-Za-z0-9]{27})\b",
                ("age-secret-key-1", "hvs.", "hvb.", "_v1_", "dapi", "shpat_", "shpca_", "shppa_", "shpss_",
                 "lin_api_", "pmak-", "pul-", "rubygems_", "sntryu_", "sntrys_", "glc_", "glsa_", "dp.pt.",
                 "nrak-")),
    PatternSpec("jwt", "jwt",
                # header: no "-" (base64url of an ASCII JSON header has none in practice), which keeps
                # the scan linear on "-eyJ-eyJ..."; payload and signature: base64url
                r"\beyJ[A-Za-z0-9_]{8,}\.eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?", ("eyj",)),
    # --- PII (pii=True only) ---------------------------------------------------------------
    # e-mail: starts after a character that cannot be in the address (no look-behind in RE2),
    # which keeps the scan linear; not after "]" so that a marker never starts a new address.
    PatternSpec("email", "email",
                r"(?m)(?P<pre>^|[^A-Za-z0-9._%+\n\]-])(?P<secret>[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}"
                r"(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24})\b",
                ("@",), pii=True),
    PatternSpec("ssn", "ssn", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", ("-",), pii=True),
    PatternSpec("phone", "phone",
                r"(?:\+[1-9][0-9]{7,14}\b|\+[1-9][0-9]{0,2}[ .-]?\(?[0-9]{1,4}\)?(?:[ .-][0-9]{2,4}){1,4}\b"
                r"|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}\b|\b[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}\b)",
                None, pii=True),
    PatternSpec("ipv4", "ipv4",
                r"\b(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}\b",
                (".",), pii=True),
)

#: (kind, regex source) of every secret pattern, in the order they are applied. The collector's
#: rules are generated from it (with the ``pre``/``post`` groups kept, see :func:`go_template`).
SECRET_PATTERNS: tuple[tuple[str, str], ...] = tuple((s.kind, s.regex) for s in PATTERN_SPECS if not s.pii)
#: (kind, regex source) of the optional PII patterns, applied after the secret ones.
PII_PATTERNS: tuple[tuple[str, str], ...] = tuple((s.kind, s.regex) for s in PATTERN_SPECS if s.pii)


def _groups(regex: str) -> set[str]:
    return set(re.compile(regex, PY_FLAGS).groupindex)


def _parts(spec: PatternSpec) -> tuple[bool, str, bool]:
    groups = _groups(spec.regex)
    mid = marker(spec.kind)
    if spec.quote:
        mid = f'"{mid}"'
    return "pre" in groups, mid, "post" in groups


def python_template(spec: PatternSpec) -> str:
    """Replacement template for ``re.sub``."""
    pre, mid, post = _parts(spec)
    return ("\\g<pre>" if pre else "") + mid.replace("\\", "\\\\") + ("\\g<post>" if post else "")


def go_template(spec: PatternSpec) -> str:
    """Replacement template for Go's ``Regexp.ReplaceAllString`` (OTTL ``replace_pattern``);
    a literal ``$`` in it would need doubling, but markers contain none."""
    pre, mid, post = _parts(spec)
    return ("${pre}" if pre else "") + mid + ("${post}" if post else "")

"""Secret leaks: one canary per kind the scrubber knows (``coo.common.secret_patterns``), sent through
every path (a mission's goal, the LLM's answer via ``[mock:echo-secret=...]``, an exception message,
a log line, span attributes, HTTP headers and paths), searched in every sink of the whole embedded
stack: the collector's log files, Jaeger, Prometheus, every component's output, the timelines and
the DLQ. A well-known secret scanner (detect-secrets; gitleaks when it is built) reads the same dumps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import string
import subprocess
import sys
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from coo.common.scrub import scrub_text
from coo.common.secret_patterns import PATTERN_SPECS
from coo.stack.components import StackSettings
from tests.harness import embedded_stack, missing_stack_tools
from tests.reliability import helpers

SEED = int(os.environ.get("COO_RELIABILITY_SEED", "20261121"))
_rng = random.Random(f"{SEED}-{uuid.uuid4()}")   # fresh canaries every run, never found by accident


def _pick(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def alnum(n: int) -> str:
    return _pick(string.ascii_letters + string.digits, n)


def upper(n: int) -> str:
    return _pick(string.ascii_uppercase + string.digits, n)


def digits(n: int) -> str:
    return _pick("123456789", 1) + _pick(string.digits, n - 1)


def hexs(n: int) -> str:
    return _pick("0123456789abcdef", n)


def b64(n: int) -> str:
    return _pick(string.ascii_letters + string.digits + "+/", n)


def canaries() -> list[dict]:
    """One canary per secret kind: the text that carries it and the secret itself (the needle)."""
    out = []

    def add(kind: str, text: str, secret: str, token: bool = False) -> None:
        out.append({"kind": kind, "text": text, "secret": secret, "token": token})

    pem = [b64(64), b64(64), b64(40)]
    add("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA" + "\n".join(pem)
        + "\n-----END RSA PRIVATE KEY-----", pem[1])
    s = "Pw" + alnum(16)
    add("url_password", f"postgres://app:{s}@db.internal:5432/app", s)
    s = digits(13)
    add("secret (JSON literal)", '{"api_token": ' + s + "}", s)
    s = "dq" + alnum(18)
    add("secret (double-quoted)", f'password="{s}"', s)
    s = "edq" + alnum(18)
    add("secret (escaped JSON)", '{\\"access_key\\": \\"' + s + '\\"}', s)
    s = "sq" + alnum(18)
    add("secret (single-quoted)", f"client_secret='{s}'", s)
    s = "ck" + alnum(18)
    add("secret (cookie header)", f"Cookie: session={s}", s)
    s = "bare" + alnum(16)
    add("secret (key=value)", f"DB_PASSWORD={s}", s)
    s = "flag" + alnum(16)
    add("secret (--flag value)", f"--api-key {s}", s)
    s = b64(40)
    add("aws_secret_key", f"aws_secret_access_key = {s}", s)
    s = alnum(40)
    add("bearer_token", f"it went out with Bearer {s}", s)
    s = "B" + upper(10) + "/" + alnum(24)
    add("slack_webhook", f"https://hooks.slack.com/services/T{upper(10)}/{s}", s)
    s = alnum(68)
    add("discord_webhook", f"https://discord.com/api/webhooks/{digits(18)}/{s}", s)
    for kind, token in (
        ("aws_access_key", "AKIA" + upper(16)),
        ("gcp_api_key", "AIza" + alnum(35)),
        ("google_oauth", "ya29." + alnum(48)),
        ("azure_client_secret", alnum(3) + "8Q~" + alnum(34)),
        ("github_token", "ghp_" + alnum(36)),
        ("gitlab_token", "glpat-" + alnum(24)),
        ("slack_token", "xoxb-" + digits(12) + "-" + alnum(24)),
        ("discord_token", "M" + alnum(25) + "." + alnum(6) + "." + alnum(30)),
        ("telegram_bot_token", digits(10) + ":AA" + alnum(34)),
        ("anthropic_key", "sk-ant-api03-" + alnum(48)),
        ("openrouter_key", "sk-or-v1-" + hexs(64)),
        ("openai_key", "sk-proj-" + alnum(48)),
        ("groq_key", "gsk_" + alnum(52)),
        ("huggingface_token", "hf_" + alnum(34)),
        ("xai_key", "xai-" + alnum(48)),
        ("perplexity_key", "pplx-" + alnum(48)),
        ("replicate_token", "r8_" + alnum(37)),
        ("stripe_key", "sk_live_" + alnum(32)),
        ("stripe_webhook_secret", "whsec_" + alnum(32)),
        ("sendgrid_key", "SG." + alnum(22) + "." + alnum(43)),
        ("twilio_key", "SK" + hexs(32)),
        ("npm_token", "npm_" + alnum(36)),
        ("pypi_token", "pypi-AgE" + alnum(64)),
        ("api_token", "hvs." + alnum(90)),
        ("jwt", "eyJ" + alnum(30) + ".eyJ" + alnum(60) + "." + alnum(43)),
        ("nats_nkey_seed", "SU" + _pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 56)),
        ("container_registry_token", "dckr_pat_" + alnum(27)),
    ):
        add(kind, token, token, token=True)
    return out


@pytest.fixture(scope="module")
def fullstack(tmp_path_factory):
    if why := missing_stack_tools():
        pytest.skip(f"the embedded stack is incomplete here ({why}); make test builds it")
    root = tmp_path_factory.mktemp("leaks")
    with embedded_stack(root) as (s, token):
        yield s, token, root


def _send_bus_exceptions(nats_url: str, state: Path, cans: list[dict]) -> None:
    """Bad messages whose error text carries a canary: an unknown Coo-Type (the decoder's message)
    and a control message for an unknown mission (the handler's message)."""
    import nats

    from coo.v1 import agent_pb2, control_pb2

    async def main():
        nc = await nats.connect(nats_url, **_nats_auth(state))
        js = nc.jetstream()
        try:
            for c in cans:
                await js.publish("coo.results.agent", agent_pb2.AgentResult(task_id="x").SerializeToString(),
                                 headers={"Coo-Type": c["text"], "Nats-Msg-Id": uuid.uuid4().hex})
                ctl = control_pb2.Control(control_id=uuid.uuid4().hex, mission_id=c["secret"], action=1,
                                          reason=f"because {c['text']}")
                await js.publish("coo.control.m-unknown", ctl.SerializeToString(),
                                 headers={"Coo-Type": "coo.v1.Control", "Nats-Msg-Id": uuid.uuid4().hex})
        finally:
            await nc.close()

    asyncio.run(main())


def _nats_auth(state: Path) -> dict:
    """The local stack runs NATS with users: connect as its admin user when it has them."""
    try:
        from coo.stack import nats_auth
    except ImportError:
        return {}
    auth = nats_auth.NatsAuth.for_state(state)
    if not auth.password_file(nats_auth.ADMIN).exists():
        return {}
    return {"user": nats_auth.ADMIN, "password": auth.password(nats_auth.ADMIN)}


def _collect_sinks(s: StackSettings, token: str, mission_ids: list[str]) -> dict[str, str]:
    sinks: dict[str, str] = {}
    api = httpx.Client(base_url=s.url(s.orchestrator_port), timeout=30,
                       headers={"Authorization": f"Bearer {token}"})
    jaeger = s.url(s.jaeger_query_port)
    services = httpx.get(f"{jaeger}/api/services", timeout=10).json().get("data") or []
    for name in services:
        sinks[f"Jaeger ({name})"] = httpx.get(f"{jaeger}/api/traces", params={
            "service": name, "lookback": "1h", "limit": 3000}, timeout=60).text
    logs = s.state / "logs"
    sinks["collector log file"] = "".join(p.read_text(errors="replace") for p in sorted(logs.glob("coo-audit*")))
    for p in sorted(logs.glob("*.log")):
        sinks[f"output of {p.stem}"] = p.read_text(errors="replace")
    prom = s.url(s.prometheus_port)
    series = httpx.get(f"{prom}/api/v1/series", params={"match[]": '{__name__=~".+"}'}, timeout=30).text
    sinks["Prometheus series"] = series + urllib.parse.unquote(series)
    sinks["timelines"] = "".join(api.get(f"/v1/missions/{m}/timeline").text for m in mission_ids)
    sinks["system timeline"] = api.get("/v1/system/timeline").text
    sinks["DLQ"] = api.get("/v1/dlq", params={"limit": 1000}).text
    return sinks


def _variants(secret: str) -> set[str]:
    return {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}


def _sink_of(path: str) -> str:
    return Path(path).stem.split("-", 1)[-1]


def _scanners(dump: Path, cans: list[dict]) -> list[tuple[str, str, bool | None, str]]:
    """detect-secrets (and gitleaks when built) over the sink dumps: (name, value, ok, note)."""
    rows = []
    hashes = {hashlib.sha1(c["secret"].encode(), usedforsecurity=False).hexdigest(): c["kind"] for c in cans}
    exe = shutil.which("detect-secrets") or str(Path(sys.executable).parent / "detect-secrets")
    if Path(exe).exists():
        res = subprocess.run([exe, "scan", "--all-files", str(dump)], capture_output=True, text=True, check=False,
                             timeout=300, cwd=dump)
        try:
            found = [{**f, "file": name} for name, fs in json.loads(res.stdout)["results"].items() for f in fs]
        except (ValueError, KeyError):
            found = []
        canary_hits = sorted({f"{hashes[f['hashed_secret']]} in {_sink_of(f['file'])}" for f in found
                              if f["hashed_secret"] in hashes})
        types = {}
        for f in found:
            types[f["type"]] = types.get(f["type"], 0) + 1
        rows.append(("detect-secrets: findings in the sink dumps", str(len(found)), None,
                     ", ".join(f"{k} {v}" for k, v in sorted(types.items())) or "none"))
        rows.append(("detect-secrets: canaries among them", str(len(canary_hits)), not canary_hits,
                     ", ".join(canary_hits) or "none (other findings are markers, ids and hashes)"))
    else:
        rows.append(("detect-secrets", "not installed", None, "pip install detect-secrets"))
    gitleaks = shutil.which("gitleaks") or next(iter(sorted(Path.home().glob(".cache/coo/tools/gitleaks*/gitleaks"))),
                                                 None)
    if gitleaks:
        report = dump.parent / "gitleaks.json"
        subprocess.run([str(gitleaks), "dir", str(dump), "--no-banner", "--report-format", "json",
                        "--report-path", str(report), "--exit-code", "0"], capture_output=True, text=True,
                       check=False, timeout=300)
        try:
            found = json.loads(report.read_text() or "[]")
        except (OSError, ValueError):
            found = []
        canary_hits = sorted({f"{c['kind']} in {_sink_of(f.get('File', ''))}" for c in cans for f in found
                              if f.get("Secret") and c["secret"] in f["Secret"]})
        rows.append(("gitleaks: findings in the sink dumps", str(len(found)), None,
                     ", ".join(sorted({f.get('RuleID', '?') for f in found})[:8]) or "none"))
        rows.append(("gitleaks: canaries among them", str(len(canary_hits)), not canary_hits,
                     ", ".join(canary_hits) or "none"))
    else:
        rows.append(("gitleaks", "not built", None, "GOBIN=~/.cache/coo/tools/gitleaks go install "
                                                     "github.com/zricethezav/gitleaks/v8@v8.30.1"))
    return rows


@pytest.mark.timeout(420)
def test_canaries_of_every_kind_reach_no_sink(fullstack, figures, tmp_path):
    s, token, _root = fullstack
    cans = canaries()
    # COO's own kinds here; gitleaks' ~200 (generated into the same table) go through every scrubber
    # in tests/reliability/test_scrub_corpus.py's generated corpus
    kinds_in_table = {spec.kind for spec in PATTERN_SPECS if not spec.pii and not spec.name.startswith("gitleaks:")}
    covered = {c["kind"].split(" ")[0] for c in cans}
    # the canaries must be canaries: the scrubber itself redacts each one
    unscrubbed = [c["kind"] for c in cans if c["secret"] in scrub_text(c["text"])]
    figures.add("secrets", "canaries (one per secret kind of the scrubber)", len(cans),
                target=f"every kind ({len(kinds_in_table)})", ok=kinds_in_table <= covered,
                note="not covered: " + ", ".join(sorted(kinds_in_table - covered)) if kinds_in_table - covered
                else f"{len(kinds_in_table)} kinds, the key/value kind in its 7 shapes; fresh random values each run")
    figures.add("secrets", "canaries the scrubber itself does not redact", len(unscrubbed), target="0",
                ok=not unscrubbed, note=", ".join(unscrubbed))

    api = httpx.Client(base_url=s.url(s.orchestrator_port), timeout=30, headers={"Authorization": f"Bearer {token}"})
    tokens = [c for c in cans if c["token"]]
    # 1-2: goals carry every canary; the LLM echoes one token canary per mission
    goals = []
    for i, echo in enumerate(tokens):
        carried = [c["text"].replace("\n", " ") if c["kind"] != "private_key" else c["text"]
                   for c in cans[i::len(tokens)]]
        goals.append(f"write a FizzBuzz function with tests; config: {'; '.join(carried)} "
                     f"[mock:echo-secret={echo['secret']}]")

    def submit(goal: str) -> str:
        resp = api.post("/v1/missions", json={"goal": goal})
        assert resp.status_code == 201, resp.text
        return resp.json()["mission_id"]

    with ThreadPoolExecutor(4) as pool:
        mission_ids = list(pool.map(submit, goals))
    # 3-4: exception messages and the log lines that report them
    _send_bus_exceptions(f"nats://127.0.0.1:{s.nats_port}", s.state, [c for c in tokens if "." not in c["secret"]][:8])
    # 5-6: HTTP paths and headers (span attributes of the server spans)
    for c in tokens[:10]:
        httpx.get(s.url(s.orchestrator_port, f"/v1/missions/{c['secret']}"), timeout=10,
                  headers={"User-Agent": f"coo-reliability {c['secret']}", "X-Api-Key": c["secret"],
                           "Cookie": f"session={c['secret']}"})
        httpx.post(s.url(s.orchestrator_port, "/v1/missions"), json={"goal": "x"}, timeout=10,
                   headers={"Authorization": f"Bearer {c['secret']}"})
    stack_view = helpers.wait_final(_ApiStack(api), mission_ids, timeout=180)
    statuses = {}
    for m in stack_view.values():
        statuses[m["status"]] = statuses.get(m["status"], 0) + 1
    time.sleep(6)   # spans to Jaeger, logs through the collector's file exporter, a Prometheus scrape

    sinks = _collect_sinks(s, token, mission_ids)
    leaks: dict[str, list[str]] = {}
    for c in cans:
        for where, text in sinks.items():
            if any(v in text for v in _variants(c["secret"])):
                leaks.setdefault(where, []).append(c["kind"])
    for where in sorted(sinks):
        found = leaks.get(where, [])
        figures.add("secrets", f"canaries in {where}", len(found), target="0", ok=not found,
                    note=(", ".join(found) if found else f"{len(sinks[where]) // 1024} KiB searched"))
    figures.add("secrets", "paths the canaries went through", 6,
                note=f"{len(mission_ids)} missions ({', '.join(f'{k} {v}' for k, v in statuses.items())}): goal "
                     f"(with prompt capture on spans), LLM answer ([mock:echo-secret]), exception text "
                     f"(unknown Coo-Type, unknown mission), its log line, HTTP path and headers (User-Agent, "
                     f"X-Api-Key, Cookie, Authorization)")
    proof = sum(1 for m in mission_ids if m in sinks.get("collector log file", "")) and "[REDACTED" in "".join(
        v for k, v in sinks.items() if k.startswith("Jaeger"))
    figures.add("secrets", "the sinks really saw the missions (ids in logs, redaction markers in Jaeger)",
                "yes" if proof else "no", target="yes", ok=bool(proof))

    dump = tmp_path / "sinks"
    dump.mkdir()
    for i, (where, text) in enumerate(sinks.items()):
        (dump / f"{i:02d}-{''.join(ch if ch.isalnum() else '-' for ch in where)}.txt").write_text(text)
    for name, value, ok, note in _scanners(dump, cans):
        figures.add("secrets", name, value, target="0" if ok is not None else "", ok=ok, note=note)

    total = sum(len(v) for v in leaks.values())
    assert proof, "the sinks did not see the missions: the search proves nothing"
    assert not total, leaks


class _ApiStack:
    """Just enough of ServiceStack for helpers.wait_final on the supervised stack."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def api(self):
        return _NoClose(self.client)


class _NoClose:
    def __init__(self, client):
        self.client = client

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        return False

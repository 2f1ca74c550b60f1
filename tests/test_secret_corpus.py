"""The labelled secret corpus (tests/secret_corpus.py, generated from a fixed seed) through every
scrubber COO has: the structlog processor, ``coo scrub`` and the running collector (OTLP in; the
audit file and Jaeger out). Recall >= 0.99 with a half-redacted secret counted as missed, and not
one benign look-alike line changed.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from coo.common.scrub import naive_scrub_text, scrub_text, structlog_processor
from tests.secret_corpus import Record, benign_records, leaked, secret_records
from tests.test_observability_tools import (  # noqa: F401 - fixtures
    _audit_records,
    _wait_for,
    jaeger_bin,
    otelcol_bin,
    scrape_target,
    stack,
)

RECALL = 0.99
SECRETS = secret_records()
BENIGN = benign_records()


def _kinds(records: list[Record]) -> set[str]:
    return {r.kind for r in records}


def _score(outputs: list[str]) -> tuple[float, list[tuple[Record, str]], list[tuple[Record, str]]]:
    """(recall, missed, changed benign) for outputs in the order SECRETS + BENIGN."""
    n = len(SECRETS)
    missed = [(r, o) for r, o in zip(SECRETS, outputs[:n]) if leaked(r, o)]
    changed = [(r, o) for r, o in zip(BENIGN, outputs[n:]) if o != r.text]
    return 1 - len(missed) / n, missed, changed


def _report(missed, changed) -> str:
    lines = [f"missed {r.kind}/{r.shape}: {o[:200]!r}" for r, o in missed[:10]]
    lines += [f"changed benign: {r.text[:120]!r} -> {o[:120]!r}" for r, o in changed[:10]]
    return "\n".join(lines)


def test_corpus_is_broad_and_generated():
    kinds = _kinds(SECRETS)
    assert len(kinds) >= 60, sorted(kinds)
    shapes = {r.shape for r in SECRETS}
    for shape in ("env", "dotenv", "yaml", "json", "query", "header", "cli", "conn-string", "pem", "creds-file",
                  "url", "set-cookie", "escaped-json"):
        assert shape in shapes, shape
    assert len(BENIGN) >= 500
    # the same seed, the same corpus; another seed, other values
    assert [r.text for r in secret_records()] == [r.text for r in SECRETS]
    assert secret_records(1)[0].text != SECRETS[0].text


def test_scrub_text_and_the_naive_loop():
    outputs = [scrub_text(r.text) for r in SECRETS + BENIGN]
    recall, missed, changed = _score(outputs)
    assert recall >= RECALL and not changed, _report(missed, changed)
    assert recall == 1.0, _report(missed, changed)
    # the fast path and the reference loop agree, and scrubbing twice changes nothing more
    for r, o in zip(SECRETS + BENIGN, outputs):
        assert naive_scrub_text(r.text) == o, r.text
        assert scrub_text(o) == o, o


def test_structlog_processor():
    outputs, detail = [], []
    for r in SECRETS + BENIGN:
        event = structlog_processor(None, "info", {"event": r.text, "detail": {"note": r.text, "n": 1}})
        outputs.append(event["event"])
        detail.append(event["detail"]["note"])
    for outs in (outputs, detail):
        recall, missed, changed = _score(outs)
        assert recall >= RECALL and not changed, _report(missed, changed)


SEPARATOR = "=== corpus record {} ==="


def test_coo_scrub_command():
    coo = Path(sys.executable).parent / "coo"
    records = SECRETS + BENIGN
    stdin = io.StringIO()
    for i, r in enumerate(records):
        stdin.write(SEPARATOR.format(i) + "\n" + r.text + "\n")
    proc = subprocess.run([str(coo), "scrub"], input=stdin.getvalue(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = re.split(r"^=== corpus record \d+ ===\n", proc.stdout, flags=re.MULTILINE)
    assert parts[0] == "" and len(parts) == len(records) + 1, len(parts)
    outputs = [p.removesuffix("\n") for p in parts[1:]]
    recall, missed, changed = _score(outputs)
    assert recall >= RECALL and not changed, _report(missed, changed)


def _send(endpoint: str, service: str, records: list[Record]) -> None:
    """Every record as a log body, a log attribute and a span attribute, over OTLP/gRPC, as a service
    without in-process scrubbing would send them."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service})
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=30), max_queue_size=len(records) + 10))
    traces = TracerProvider(resource=resource)
    traces.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=30), max_queue_size=len(records) + 10))
    try:
        logger = logs.get_logger("coo.tests.corpus")
        tracer = traces.get_tracer("coo.tests.corpus")
        for i, r in enumerate(records):
            logger.emit(severity_number=SeverityNumber.INFO, body=r.text,
                        attributes={"corpus.record": i, "coo.detail": r.text})
            with tracer.start_as_current_span(f"corpus {i}", attributes={"corpus.record": i, "coo.note": r.text}):
                pass
        assert logs.force_flush(60_000) and traces.force_flush(60_000)
    finally:
        logs.shutdown()
        traces.shutdown()


@pytest.mark.timeout(600)
def test_the_running_collector(stack):  # noqa: F811 - the fixture imported above
    records = SECRETS + BENIGN
    service = f"coo-corpus-{uuid.uuid4().hex[:8]}"
    _send(stack["otlp_grpc"], service, records)

    def audit() -> dict[int, dict[str, Any]] | None:
        found = {}
        for rec in _audit_records(stack["audit"]):
            if rec["resource"].get("service.name") != {"stringValue": service}:
                continue
            attrs = {a["key"]: a["value"] for a in rec.get("attributes", [])}
            found[int(attrs["corpus.record"]["intValue"])] = {"body": rec["body"]["stringValue"],
                                                               "detail": attrs["coo.detail"]["stringValue"]}
        return found if len(found) == len(records) else None

    logged = _wait_for(f"{len(records)} log records in the audit file", audit, timeout=120, log=stack["otelcol"].log)
    for field in ("body", "detail"):
        recall, missed, changed = _score([logged[i][field] for i in range(len(records))])
        assert recall >= RECALL and not changed, f"audit file, log {field}:\n" + _report(missed, changed)
    # nothing of any secret anywhere in the file (resource, scope, other fields included)
    text = stack["audit"].read_text()
    whole = [r for r in SECRETS if leaked(r, text)]
    assert len(whole) <= (1 - RECALL) * len(SECRETS), _report([(r, "") for r in whole], [])

    def jaeger() -> dict[int, str] | None:
        resp = httpx.get(f"{stack['query']}/api/traces", params={"service": service, "limit": len(records) + 100},
                         timeout=30)
        resp.raise_for_status()
        found = {}
        for trace in resp.json().get("data") or []:
            for span in trace["spans"]:
                tags = {t["key"]: t["value"] for t in span["tags"]}
                if "corpus.record" in tags:
                    found[int(tags["corpus.record"])] = tags["coo.note"]
        return found if len(found) == len(records) else None

    spans = _wait_for(f"{len(records)} spans in Jaeger", jaeger, timeout=120, log=stack["otelcol"].log)
    recall, missed, changed = _score([spans[i] for i in range(len(records))])
    assert recall >= RECALL and not changed, "Jaeger, span attribute:\n" + _report(missed, changed)
    # and the collector agrees with the in-process scrubber, record for record
    same = sum(1 for i, r in enumerate(records) if spans[i] == scrub_text(r.text))
    assert same == len(records), f"{len(records) - same} records differ between the collector and scrub_text"
    print(json.dumps({"records": len(records), "kinds": len(_kinds(SECRETS)), "recall": recall}))

#!/usr/bin/env python3
"""What the collector's secret scrubbing costs: collector CPU per record, measured.

Runs the project's collector (``scripts/build-tools.sh --print-path otelcol``) with a configuration
(default ``observability/otelcol/config.yaml``) in front of a Jaeger of its own, sends it the same
records over OTLP/gRPC as a service without in-process scrubbing would (each record as a log body, a
log attribute and a span attribute), waits until the audit file holds them all, and reads the
collector's CPU time (``/proc/<pid>/stat``: user + system) before and after; the idle CPU of the same
wall time, measured just before, is taken off.

Records: the benchmark's log corpus (``bench/scrub.py``, seed 20261121: service log lines, access
lines, tracebacks, prose, ~5% with a secret), ``--records`` of them. Compare two configurations on
the same records by running the script once with each (``--config``)::

    .venv/bin/python scripts/measure_collector_scrub.py                     # the current config
    .venv/bin/python scripts/measure_collector_scrub.py --config OLD.yaml   # e.g. `git show REV:...`
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "services")]

from bench.scrub import Corpus  # noqa: E402 - needs the repository root on sys.path first
from tests.test_secret_corpus import _send  # noqa: E402 - needs the repository root on sys.path first

TICKS = os.sysconf("SC_CLK_TCK")


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime, stime


def _tool(name: str) -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build-tools.sh"), "--print-path", name],
                         capture_output=True, text=True, check=True, timeout=3600)
    return out.stdout.strip()


def _wait(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what}: not after {timeout}s")


def measure(config: Path, records: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="coo-collector-cost-"))
    p = dict(zip(["j_grpc", "j_http", "j_query", "j_query_grpc", "j_health", "j_metrics",
                  "c_grpc", "c_http", "c_health", "c_prom", "c_metrics", "dead"], _ports(12)))
    audit = work / "log" / "coo-audit.jsonl"
    nothing = f"[127.0.0.1:{p['dead']}]"
    env = {**os.environ,
           "COO_JAEGER_OTLP_GRPC": f"127.0.0.1:{p['j_grpc']}", "COO_JAEGER_OTLP_HTTP": f"127.0.0.1:{p['j_http']}",
           "COO_JAEGER_QUERY": f"127.0.0.1:{p['j_query']}", "COO_JAEGER_QUERY_GRPC": f"127.0.0.1:{p['j_query_grpc']}",
           "COO_JAEGER_HEALTH": f"127.0.0.1:{p['j_health']}", "COO_JAEGER_METRICS_HOST": "127.0.0.1",
           "COO_JAEGER_METRICS_PORT": str(p["j_metrics"]),
           "COO_OTELCOL_OTLP_GRPC": f"127.0.0.1:{p['c_grpc']}", "COO_OTELCOL_OTLP_HTTP": f"127.0.0.1:{p['c_http']}",
           "COO_OTELCOL_HEALTH": f"127.0.0.1:{p['c_health']}", "COO_OTELCOL_PROM_EXPORTER": f"127.0.0.1:{p['c_prom']}",
           "COO_OTELCOL_METRICS_HOST": "127.0.0.1", "COO_OTELCOL_METRICS_PORT": str(p["c_metrics"]),
           "COO_AUDIT_LOG": str(audit), "COO_DEPLOYMENT_ENVIRONMENT": "cost", "COO_SCRAPE_INTERVAL": "60s",
           "COO_SCRAPE_ORCHESTRATOR": nothing, "COO_SCRAPE_AGENT": nothing, "COO_SCRAPE_BUDGET": nothing,
           "COO_SCRAPE_SANDBOX": nothing, "COO_SCRAPE_MOCKLLM": nothing, "COO_SPANMETRICS_FLUSH_INTERVAL": "60s"}
    procs = []
    try:
        with open(work / "jaeger.log", "wb") as jlog, open(work / "otelcol.log", "wb") as clog:
            procs.append(subprocess.Popen([_tool("jaeger"), "--config", str(ROOT / "observability/jaeger/config.yaml")],
                                          env=env, stdout=jlog, stderr=subprocess.STDOUT, cwd=work))
            _wait("jaeger", lambda: httpx.get(f"http://127.0.0.1:{p['j_health']}/status", timeout=2).status_code == 200,
                  60)
            collector = subprocess.Popen([_tool("otelcol"), "--config", str(config)], env=env, stdout=clog,
                                         stderr=subprocess.STDOUT, cwd=work)
            procs.append(collector)
            _wait("collector", lambda: httpx.get(f"http://127.0.0.1:{p['c_health']}/", timeout=2).status_code == 200,
                  60)
        time.sleep(2)
        idle0, t0 = _cpu_seconds(collector.pid), time.monotonic()
        time.sleep(5)
        idle_rate = (_cpu_seconds(collector.pid) - idle0) / (time.monotonic() - t0)
        service = f"coo-cost-{uuid.uuid4().hex[:8]}"

        class R:  # what _send reads
            def __init__(self, text: str) -> None:
                self.text = text

        cpu0, t0 = _cpu_seconds(collector.pid), time.monotonic()
        _send(f"http://127.0.0.1:{p['c_grpc']}", service, cast(Any, [R(t) for t in records]))

        def all_in_audit() -> bool:
            return audit.exists() and _count_records(audit, service) >= len(records)

        _wait("every record in the audit file", all_in_audit, 600)
        cpu = _cpu_seconds(collector.pid) - cpu0 - idle_rate * (time.monotonic() - t0)
        return {"config": str(config), "records": len(records), "collector_cpu_s": round(cpu, 3),
                "ms_per_record": round(1000 * cpu / len(records), 3), "idle_cpu_per_s": round(idle_rate, 4)}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _count_records(audit: Path, service: str) -> int:
    n = 0
    for line in audit.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        for rl in doc.get("resourceLogs", []):
            attrs = {a["key"]: a["value"].get("stringValue") for a in rl.get("resource", {}).get("attributes", [])}
            if attrs.get("service.name") == service:
                n += sum(len(sl.get("logRecords", [])) for sl in rl.get("scopeLogs", []))
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "observability/otelcol/config.yaml")
    parser.add_argument("--records", type=int, default=5040)
    parser.add_argument("--plain", action="store_true",
                        help="only records with no trigger word of any pattern (they open no prefilter)")
    args = parser.parse_args(argv)
    records = [r.text for r in Corpus().build(10 << 20)]
    if args.plain:
        import re

        from coo.common.secret_patterns import PATTERN_SPECS

        words = sorted({t for s in PATTERN_SPECS if not s.pii for t in (s.triggers or ())})
        any_word = re.compile("|".join(re.escape(w) for w in words))
        records = [t for t in records if not any_word.search(t.lower())]
    records = records[: args.records]
    print(json.dumps(measure(args.config.resolve(), records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

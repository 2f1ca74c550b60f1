"""The sandbox's metrics: runs by outcome and backend, durations, duplicate requests.

Registered in the process that imports this module (the sandbox service): no other service exports
them. Names follow Prometheus conventions (``_total``, ``_seconds``, base units); labels are bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from coo.common.metrics import LATENCY_BUCKETS

SANDBOX_RUNS = Counter("coo_sandbox_runs_total", "Sandbox runs by outcome and backend", ["outcome", "backend"])
SANDBOX_SECONDS = Histogram("coo_sandbox_run_duration_seconds", "Sandbox run wall time", ["backend"],
                            buckets=(*LATENCY_BUCKETS, 120))
SANDBOX_DUPLICATES = Counter("coo_sandbox_duplicate_requests_total",
                             "Redelivered run requests answered from the stored result")

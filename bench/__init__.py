"""COO's benchmarks: ``make bench`` (``python -m bench.run``) and ``make bench-smoke``.

Each benchmark module has ``TITLE`` and ``run(cfg) -> Result``; every figure it reports is a
ratio against a baseline measured in the same run, next to the absolute numbers. ``bench.run``
runs each module in a process of its own, so one benchmark's global set-up (a tracer provider,
structlog's configuration) cannot colour another's.
"""

BENCHMARKS = ("bus", "scrub", "telemetry", "missions", "inflight", "sandbox", "budget", "history", "cluster")

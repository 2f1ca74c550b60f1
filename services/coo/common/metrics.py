"""The bus's Prometheus metrics, and the histogram buckets every service uses.

Each service owns its metrics (``coo.<service>.metrics``), registered only in its own process
(prometheus-client's default registry): a service exports the bus's and its own, never another's.
Names follow Prometheus conventions (``_total``, ``_seconds``, base units); labels are bounded
— never a mission id: observations carry the trace id as an exemplar instead.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LONG_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

# ---------------------------------------------------------------------------- bus
BUS_MESSAGES = Counter("coo_bus_messages_total", "Bus messages by subject template and outcome",
                       ["subject", "outcome"])
BUS_PROCESS_SECONDS = Histogram("coo_bus_process_duration_seconds", "Time to handle one bus message",
                                ["subject"], buckets=LATENCY_BUCKETS)
BUS_REDELIVERIES = Counter("coo_bus_redeliveries_total", "Messages delivered more than once", ["subject"])
BUS_REQUESTS = Counter("coo_bus_requests_total", "Request/reply calls by subject, side and outcome",
                       ["subject", "side", "outcome"])

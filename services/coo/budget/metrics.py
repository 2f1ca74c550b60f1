"""The budget service's metrics: the ledger by scope, operations, conflicts, expiries.

Registered in the process that imports this module (the budget service): no other service exports
them. Names follow Prometheus conventions (``_total``, ``_seconds``, base units); labels are bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BUDGET_SPENT = Gauge("coo_budget_spent_usd", "Settled spend by scope (daily, monthly)", ["scope"])
BUDGET_RESERVED = Gauge("coo_budget_reserved_usd", "Outstanding reservations by scope", ["scope"])
BUDGET_LIMIT = Gauge("coo_budget_limit_usd", "Configured limit by scope", ["scope"])
BUDGET_REMAINING = Gauge("coo_budget_remaining_usd", "Limit minus spent and reserved, by scope", ["scope"])
BUDGET_EXCEEDED = Counter("coo_budget_exceeded_total", "Reservations refused or settlements over a limit",
                          ["scope"])
BUDGET_OPERATIONS = Counter("coo_budget_operations_total", "Budget operations by verb and outcome",
                            ["operation", "outcome"])
BUDGET_CAS_CONFLICTS = Counter("coo_budget_cas_conflicts_total", "Compare-and-set retries on the ledger")
BUDGET_EXPIRED = Counter("coo_budget_reservations_expired_total", "Orphaned reservations expired")

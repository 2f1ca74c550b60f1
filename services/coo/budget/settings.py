"""Configuration of the budget service (``COO_BUDGET_*`` variables, pydantic-settings).

Limits are in USD and tokens; a limit of 0 means "no limit" in that unit. The pricing table
(``COO_BUDGET_PRICING``, JSON ``{"model": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}``)
is merged over the built-in defaults of :mod:`coo.budget.pricing`; a model found in neither is
priced at ``COO_BUDGET_DEFAULT_INPUT_PER_MTOK`` / ``COO_BUDGET_DEFAULT_OUTPUT_PER_MTOK``, which
are deliberately high (never zero) so an unknown model is never free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coo.budget.pricing import DEFAULT_PRICES, ModelPrice
from coo.common.config import CommonSettings


class BudgetSettings(CommonSettings):
    # env prefix COO_ (inherited): budget_port <- COO_BUDGET_PORT, etc.
    budget_port: int = Field(8082, description="HTTP port of /healthz, /readyz, /metrics")

    budget_mission_usd: float = Field(1.0, ge=0, description="default per-mission limit in USD (0: none)")
    budget_mission_tokens: int = Field(0, ge=0, description="default per-mission limit in tokens (0: none)")
    budget_daily_usd: float = Field(50.0, ge=0, description="global limit of one UTC day in USD (0: none)")
    budget_daily_tokens: int = Field(0, ge=0, description="global limit of one UTC day in tokens (0: none)")
    budget_monthly_usd: float = Field(500.0, ge=0, description="global limit of one UTC month in USD (0: none)")
    budget_monthly_tokens: int = Field(0, ge=0, description="global limit of one UTC month in tokens (0: none)")
    budget_warning_ratio: float = Field(0.8, gt=0, le=1,
                                        description="spent+reserved over limit that raises a warning")
    budget_reservation_ttl_seconds: float = Field(300.0, gt=0,
                                                  description="default lifetime of a reservation")
    budget_max_reservation_ttl_seconds: float = Field(3600.0, gt=0,
                                                      description="upper bound of a requested ttl")
    # What the orchestrator does when a mission's budget is exceeded; it reads the same variable.
    budget_on_exceeded: Literal["fail", "pause"] = "fail"

    budget_pricing: dict[str, ModelPrice] = Field(
        default_factory=dict, description="JSON price table merged over the built-in defaults")
    budget_default_input_per_mtok: float = Field(10.0, gt=0, description="USD/Mtok input of an unknown model")
    budget_default_output_per_mtok: float = Field(30.0, gt=0, description="USD/Mtok output of an unknown model")

    # Housekeeping.
    budget_sweep_interval_seconds: float = Field(2.0, gt=0, description="how often expired reservations are looked for")
    budget_stuck_seconds: float = Field(
        10.0, gt=0, description="a settle/release left half-done this long is finished by the sweeper")
    budget_gauge_interval_seconds: float = Field(5.0, gt=0, description="how often gauges are refreshed from KV")
    budget_record_retention_seconds: float = Field(
        86400.0, gt=0, description="finished reservation records kept (idempotency of retries; per-message TTL)")
    budget_mission_retention_seconds: float = Field(
        90 * 86400.0, ge=0, description="a mission ledger untouched this long disappears (0: kept forever)")
    budget_marker_seconds: float = Field(
        120.0, gt=0, description="how long a scope remembers that it closed a reservation (race guard)")
    budget_cas_deadline_seconds: float = Field(4.0, gt=0, description="give up a contended compare-and-set after this")

    def price_table(self) -> dict[str, ModelPrice]:
        table = dict(DEFAULT_PRICES)
        table.update(self.budget_pricing)
        return table

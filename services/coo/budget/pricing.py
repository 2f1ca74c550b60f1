"""Prices per model, and cost arithmetic in integer nano-dollars.

Amounts on the ledger are integers of 1e-9 USD ("nUSD"), so sums and limit checks are exact
(no floating-point drift between replicas); they become USD floats only in replies.

:data:`DEFAULT_PRICES` are *defaults to override*: the mock models' prices are invented, the
others are public list prices (USD per million tokens) at the time of writing and will go
stale. Override or extend them with ``COO_BUDGET_PRICING``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

from pydantic import BaseModel, Field

NANO = 1_000_000_000


class ModelPrice(BaseModel):
    """USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


DEFAULT_PRICES: dict[str, ModelPrice] = {
    # the deterministic mock LLM (coo.mockllm): invented, but not free, so budgets are exercised
    "mock-small": ModelPrice(input_per_mtok=0.50, output_per_mtok=1.50),
    "mock-large": ModelPrice(input_per_mtok=5.00, output_per_mtok=15.00),
    # public list prices (defaults to override)
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60),
    "gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00),
    "gpt-4.1": ModelPrice(input_per_mtok=2.00, output_per_mtok=8.00),
    "gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60),
    "gpt-4.1-nano": ModelPrice(input_per_mtok=0.10, output_per_mtok=0.40),
}


def usd_to_nusd(usd: float) -> int:
    return int(Decimal(str(usd)).scaleb(9).to_integral_value(rounding=ROUND_CEILING))


def nusd_to_usd(nusd: int) -> float:
    return nusd / NANO


@dataclass(frozen=True)
class Price:
    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    known: bool

    def cost_nusd(self, input_tokens: int, output_tokens: int) -> int:
        """Cost in nUSD, rounded up: tokens x USD/Mtok x 1e-6 x 1e9 = tokens x USD/Mtok x 1e3."""
        exact = (Decimal(input_tokens) * self.input_per_mtok
                 + Decimal(output_tokens) * self.output_per_mtok) * 1000
        return int(exact.to_integral_value(rounding=ROUND_CEILING))


class PricingSettings(Protocol):
    """What :meth:`Pricing.from_settings` reads (``BudgetSettings`` has it): pricing is the domain,
    the settings module depends on it, not the other way round."""

    budget_default_input_per_mtok: float
    budget_default_output_per_mtok: float

    def price_table(self) -> dict[str, ModelPrice]: ...


class Pricing:
    """Looks a model up: exact name, then the longest known name that is a prefix followed by
    ``-`` (dated snapshots such as ``gpt-4o-mini-2024-07-18``), after dropping a ``provider/``
    prefix; otherwise the configured default price for unknown models."""

    def __init__(self, table: dict[str, ModelPrice], default: ModelPrice) -> None:
        self._table = {k.strip().lower(): v for k, v in table.items()}
        self._default = default

    @classmethod
    def from_settings(cls, settings: PricingSettings) -> Pricing:
        return cls(settings.price_table(), ModelPrice(input_per_mtok=settings.budget_default_input_per_mtok,
                                                     output_per_mtok=settings.budget_default_output_per_mtok))

    def price(self, model: str) -> Price:
        name = (model or "").strip().lower()
        found = self._table.get(name)
        if found is None and "/" in name:
            name = name.rsplit("/", 1)[-1]
            found = self._table.get(name)
        if found is None:
            prefixes = [k for k in self._table if name.startswith(k + "-")]
            if prefixes:
                found = self._table[max(prefixes, key=len)]
        known = found is not None
        p = found or self._default
        return Price(model, Decimal(str(p.input_per_mtok)), Decimal(str(p.output_per_mtok)), known)

    def cost_nusd(self, model: str, input_tokens: int, output_tokens: int) -> int:
        return self.price(model).cost_nusd(input_tokens, output_tokens)

"""What a request costs, in integer micro-units of the platform's currency.

Prices are per million tokens, so a request's exact cost is a fraction of a micro-unit;
it is rounded once per request, half up, and that rounded amount is what the ledger holds
(FORMATS.md §3: cached input at its own price, reasoning billed as output, image and video
tokens as input).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from stepflash.config import BillingSettings, Rates
from stepflash.core.events import Usage

MICRO = 1_000_000  # micro-units per unit of currency
TOKENS_PER_PRICE = 1_000_000  # prices are per million tokens


def to_micro(amount: Decimal) -> int:
    return int((amount * MICRO).to_integral_value(ROUND_HALF_UP))


def format_money(micro: int) -> str:
    """Six decimals: the ledger's precision, shown as-is (integer arithmetic: it is on every
    billed response's headers)."""
    units, fraction = divmod(abs(micro), MICRO)
    return f"{'-' if micro < 0 else ''}{units}.{fraction:06d}"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Micro-units per million tokens (integers, so a cost is one exact division)."""

    input: int
    cached_input: int
    output: int

    @classmethod
    def of(cls, rates: Rates) -> ModelPrice:
        return cls(to_micro(rates.input), to_micro(rates.cached_input), to_micro(rates.output))

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        """`prompt_tokens` includes the cached ones, as every usage report counts them."""
        cached = min(cached_tokens, prompt_tokens)
        scaled = (
            (prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + completion_tokens * self.output
        )
        return (2 * scaled + TOKENS_PER_PRICE) // (2 * TOKENS_PER_PRICE)  # half up


class PriceList:
    def __init__(self, billing: BillingSettings) -> None:
        assert billing.prices is not None and billing.web_search_per_call is not None
        assert billing.storage_per_gb_day is not None
        self.currency = billing.currency
        self._prices = {name: ModelPrice.of(rates) for name, rates in billing.prices.items()}
        self._default = self._prices[billing.default_model]
        self.web_search_per_call = to_micro(billing.web_search_per_call)
        self.storage_per_gb_day = to_micro(billing.storage_per_gb_day)

    def model(self, name: str) -> ModelPrice:
        return self._prices.get(name, self._default)

    def usage_cost(self, model: str, usage: Usage) -> int:
        return self.model(model).cost(
            usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
        )

    def storage_cost(self, byte_seconds: int) -> int:
        """The cost of `byte_seconds` (bytes times seconds stored); GB = 10^9 B, day = 86,400 s."""
        scaled = byte_seconds * self.storage_per_gb_day
        unit = 1_000_000_000 * 86_400
        return (2 * scaled + unit) // (2 * unit)

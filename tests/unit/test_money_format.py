"""Money as the API and the CLI show it: six decimals of the integer micro-units, exactly."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from stepflash.accounts.pricing import MICRO, format_money


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_money_is_the_exact_decimal_to_six_places(micro: int) -> None:
    assert format_money(micro) == f"{Decimal(micro) / MICRO:.6f}"


def test_format_money_examples() -> None:
    assert format_money(0) == "0.000000"
    assert format_money(-5) == "-0.000005"
    assert format_money(66) == "0.000066"
    assert format_money(-1_234_567) == "-1.234567"
    assert format_money(10_000 * MICRO) == "10000.000000"

"""Response and file ids sort in the order they were made (the ledger's index depends on it)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from stepflash.core.ids import time_ordered_id

SHAPE = re.compile(r"chatcmpl-[0-9a-f]{24}")
MOMENTS = st.floats(min_value=0, max_value=16**12 / 1000 - 1)  # all 12 hex digits hold


@given(MOMENTS, MOMENTS)
def test_an_id_made_at_a_later_millisecond_sorts_later(first: float, second: float) -> None:
    a, b = time_ordered_id("chatcmpl-", first), time_ordered_id("chatcmpl-", second)
    assert SHAPE.fullmatch(a) and SHAPE.fullmatch(b)
    if int(first * 1000) < int(second * 1000):
        assert a < b
    elif int(first * 1000) > int(second * 1000):
        assert a > b


def test_ids_made_now_are_distinct_and_in_order_across_milliseconds() -> None:
    ids = [time_ordered_id("msg_") for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    stamps = [int(i[len("msg_") : len("msg_") + 12], 16) for i in ids]
    assert stamps == sorted(stamps)

"""Step 3.7 image and video token accounting (FORMATS.md section 4)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepflash.media.tokens import (
    CROP_TOKENS,
    GLOBAL_VIEW_TOKENS,
    crop_grid,
    image_tokens,
    video_frames,
    video_tokens,
)

# Worked by hand from the rules: (width, height, crop columns, crop rows, tokens).
TABLE = [
    (728, 728, 0, 0, 171),  # small and square: the global view alone
    (700, 400, 2, 1, 337),  # small but elongated: window = short side
    (1000, 500, 2, 1, 337),  # remainder 496 > 504/5: rounds up
    (1024, 1024, 2, 2, 504),  # remainder 16 < 504/5: rounds down; one newline
    (600, 1200, 1, 3, 422),
    (3000, 600, 6, 1, 669),  # ratio 5: window min(short, 504) = 504
    (2000, 300, 7, 1, 752),  # ratio 6.7: window = short side 300
    (3024, 3024, 6, 6, 3164),  # the maximum, 36 crops
    (6048, 6048, 6, 6, 3164),  # scaled down to 3024 first
    (4032, 3024, 6, 5, 2665),  # a phone photo: 3024 x 2268 after scaling
    (20, 200, 0, 0, 171),  # tiny and elongated: padded square first
]


@pytest.mark.parametrize(("width", "height", "columns", "rows", "tokens"), TABLE)
def test_token_table(width: int, height: int, columns: int, rows: int, tokens: int) -> None:
    assert crop_grid(width, height) == (columns, rows)
    assert image_tokens(width, height) == tokens
    assert tokens == GLOBAL_VIEW_TOKENS + CROP_TOKENS * columns * rows + max(rows - 1, 0)


def sliding_windows(side: int, window: int) -> int:
    """The processor's way: snap the side with a float ratio, then slide a window over it."""
    ratio = side / window
    if ratio >= 1:
        fraction = ratio - side // window
        side = window * (int(ratio) + 1 if fraction > 0.2 else int(ratio))
    return 1 if side <= window else math.ceil((side - window) / window + 1)


def scaled(width: int, height: int) -> tuple[int, int]:
    if min(width, height) < 32 and max(width, height) > 4 * min(width, height):
        width = height = max(width, height)
    if max(width, height) > 3024:
        factor = 3024 / max(width, height)
        return int(width * factor), int(height * factor)
    return width, height


def processor_window(width: int, height: int) -> int:
    long, short = max(width, height), min(width, height)
    if long <= 728:
        return short if long / short > 1.5 else 0
    return min(short, 504) if long / short > 4 else 504


sides = st.integers(min_value=1, max_value=9000)


@given(sides, sides)
def test_the_grid_matches_a_sliding_window_count(width: int, height: int) -> None:
    """The integer snapping agrees with the processor's float ratios and sliding windows."""
    seen_width, seen_height = scaled(width, height)
    window = processor_window(seen_width, seen_height)
    expected = (
        (sliding_windows(seen_width, window), sliding_windows(seen_height, window))
        if window
        else (0, 0)
    )
    assert crop_grid(width, height) == expected


@given(sides, sides)
def test_turning_an_image_turns_its_grid(width: int, height: int) -> None:
    """Same crops either way; only the row separators (newline tokens) differ."""
    columns, rows = crop_grid(width, height)
    assert crop_grid(height, width) == (rows, columns)
    assert image_tokens(width, height) - image_tokens(height, width) == (
        max(rows - 1, 0) - max(columns - 1, 0)
    )


@given(st.integers(1, 9000), st.integers(1, 9000))
def test_moderate_aspect_ratios_stay_within_the_documented_maximum(w: int, h: int) -> None:
    tokens = image_tokens(w, h)
    assert tokens >= GLOBAL_VIEW_TOKENS
    if max(w, h) <= 4 * min(w, h):
        assert tokens <= 3164


@pytest.mark.parametrize(
    ("seconds", "frames"), [(0.2, 1), (1.0, 1), (2.5, 3), (60.0, 60), (600.0, 128)]
)
def test_video_frames_are_sampled_at_one_per_second_up_to_the_cap(
    seconds: float, frames: int
) -> None:
    assert video_frames(seconds, 1.0, 128) == frames
    assert video_tokens(seconds, 1.0, 128) == frames * GLOBAL_VIEW_TOKENS
    assert video_frames(seconds, 2.0, 10_000) == max(1, math.ceil(seconds * 2))

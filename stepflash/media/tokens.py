"""What an image or a video costs in prompt tokens on Step 3.7 Flash (FORMATS.md section 4).

The model sees every image as one 728x728 global view (169 tokens between <im_start> and
<im_end>) plus, for larger or elongated images, a grid of local crops (81 tokens each between
<patch_start> and <patch_end>, a <patch_newline> after every row but the last). The grid
follows the Step processor: scale the long side down to 3024, pick a window (504, or the
short side for very elongated images, none for small ones), snap each side to a whole
number of windows (rounding up when the remainder is over a fifth of a window).
"""

from __future__ import annotations

import math

GLOBAL_VIEW_TOKENS = 169 + 2
CROP_TOKENS = 81 + 2
MAX_SIDE = 3024
GLOBAL_SIDE = 728
CROP_SIDE = 504


def _preprocessed(width: int, height: int) -> tuple[int, int]:
    """Tiny elongated images are padded square; big ones scaled down to MAX_SIDE."""
    if min(width, height) < 32 and max(width, height) > 4 * min(width, height):
        width = height = max(width, height)
    if max(width, height) > MAX_SIDE:
        scale = MAX_SIDE / max(width, height)
        width, height = int(width * scale), int(height * scale)
    return width, height


def _window(long: int, short: int) -> int:
    if long <= GLOBAL_SIDE:
        return short if long > 1.5 * short else 0
    return min(short, CROP_SIDE) if long > 4 * short else CROP_SIDE


def _windows_along(side: int, window: int) -> int:
    """Windows along one side, rounding as the processor does: in floating point, so a
    remainder of exactly a fifth sometimes rounds up (1127 / 35 leaves 0.2000000000000028)."""
    ratio = side / window
    whole = int(ratio)
    if whole == 0:
        return 1
    return whole + 1 if ratio - whole > 0.2 else whole


def crop_grid(width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of local crops; (0, 0) when the global view alone is used."""
    width, height = _preprocessed(width, height)
    window = _window(max(width, height), min(width, height))
    if window == 0:
        return 0, 0
    return _windows_along(width, window), _windows_along(height, window)


def image_tokens(width: int, height: int) -> int:
    """Prompt tokens of one image at detail high."""
    columns, rows = crop_grid(width, height)
    return GLOBAL_VIEW_TOKENS + CROP_TOKENS * columns * rows + max(rows - 1, 0)


def video_frames(seconds: float, frames_per_second: float, max_frames: int) -> int:
    """Frames sampled from a video: one per 1/fps seconds, at least one, at most max_frames."""
    return max(1, min(max_frames, math.ceil(seconds * frames_per_second)))


def video_tokens(seconds: float, frames_per_second: float, max_frames: int) -> int:
    """Each sampled frame is seen as one global view."""
    return GLOBAL_VIEW_TOKENS * video_frames(seconds, frames_per_second, max_frames)

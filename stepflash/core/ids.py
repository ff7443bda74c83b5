"""Ids that sort in the order they were made: a prefix, the unix millisecond in 12 hex digits,
then 48 random bits.

Response ids are the ledger's keys, and its unique index on them is a B-tree: random ids land
on a random leaf page each, so every group of charges rewrote one index page per row (4 KB of
write-ahead log for a row of about a hundred bytes, and most of SQLite's commit work). Ids made
later land at the index's right edge, where a whole group shares a page or two. Files sort in
upload order for the same reason, which also breaks ties between their whole-second times.
"""

from __future__ import annotations

import secrets
import time


def time_ordered_id(prefix: str, moment: float | None = None) -> str:
    """`prefix` + the millisecond of `moment` (unix seconds; default now) + 48 random bits."""
    millisecond = time.time_ns() // 1_000_000 if moment is None else int(moment * 1000)
    return f"{prefix}{millisecond:012x}{secrets.token_hex(6)}"

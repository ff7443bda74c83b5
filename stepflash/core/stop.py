"""Incremental stop-string matching over streamed text.

Text that might be the beginning of a stop string is held back until the next chunk decides
it, so any split of the same text into chunks releases the same text and finds the same stop.
"""

from __future__ import annotations

from collections.abc import Sequence


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


class StopMatcher:
    """Feeds text, releases what is safe, and reports the first stop string found."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Return the text that can be released; after a match, nothing more is released."""
        if self.matched is not None:
            return ""
        buffer = self._held + text
        earliest: tuple[int, str] | None = None
        for stop in self._stops:
            position = buffer.find(stop)
            if position >= 0 and (earliest is None or position < earliest[0]):
                earliest = (position, stop)
        # A longer stop may still complete at an earlier position than a match already seen.
        hold = max((partial_suffix(buffer, stop) for stop in self._stops), default=0)
        undecided_from = len(buffer) - hold
        if earliest is not None and earliest[0] <= undecided_from:
            self.matched = earliest[1]
            self._held = ""
            return buffer[: earliest[0]]
        self._held = buffer[undecided_from:]
        return buffer[:undecided_from]

    def flush(self) -> str:
        """At the end of the text: held text may still hold a stop that a longer one shadowed."""
        held, self._held = self._held, ""
        if self.matched is not None:
            return ""
        hits = [(held.find(stop), stop) for stop in self._stops if stop in held]
        if not hits:
            return held
        position, self.matched = min(hits, key=lambda hit: hit[0])
        return held[:position]

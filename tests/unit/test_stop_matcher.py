"""Stop strings: found wherever chunk boundaries fall, and nothing after them is released."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stepflash.core.stop import StopMatcher, partial_suffix


def feed_all(stops: list[str], chunks: list[str]) -> tuple[str, str | None]:
    matcher = StopMatcher(stops)
    released = "".join(matcher.feed(chunk) for chunk in chunks)
    if matcher.matched is None:
        released += matcher.flush()
    return released, matcher.matched


def reference(stops: list[str], text: str) -> tuple[str, str | None]:
    hits = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    if not hits:
        return text, None
    position, stop = min(hits, key=lambda hit: hit[0])
    return text[:position], stop


def test_partial_suffix() -> None:
    assert partial_suffix("hello </th", "</think>") == 4
    assert partial_suffix("hello", "</think>") == 0
    assert partial_suffix("</think>", "</think>") == 0  # a whole marker is a match, not a partial


ALPHABET = st.sampled_from(list("ab</>xy\n"))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.text(ALPHABET, min_size=1, max_size=4), min_size=1, max_size=3),
    st.text(ALPHABET, max_size=40),
    st.lists(st.integers(0, 40), max_size=8),
)
def test_any_chunking_matches_the_reference(stops: list[str], text: str, cuts: list[int]) -> None:
    cuts = sorted(min(cut, len(text)) for cut in cuts)
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    released, matched = feed_all(stops, chunks)
    expected_text, expected_stop = reference(stops, text)
    assert released == expected_text
    # When two stops match at the same position either may be reported, but it is a real match.
    assert (matched is None) == (expected_stop is None)
    if matched is not None:
        assert text.find(matched) == len(expected_text)

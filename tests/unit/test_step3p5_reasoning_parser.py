"""Step's reasoning split: forced `<think>`, the newlines around `</think>`, any chunking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stepflash.core.events import Event, ReasoningDelta, TextDelta
from stepflash.dialects.step3p5.reasoning_parser import ReasoningParser


def split(chunks: list[str], forced: bool = True) -> tuple[str, str]:
    """Feed the chunks; the reasoning and the answer, each joined."""
    parser = ReasoningParser(index=2, forced=forced)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    for event in events:
        assert isinstance(event, ReasoningDelta | TextDelta) and event.index == 2 and event.text
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    return reasoning, answer


def test_reasoning_then_answer() -> None:
    assert split(["The user says hi.\n</think>\nHello!"]) == ("The user says hi.", "Hello!")


def test_only_one_newline_is_dropped_on_each_side() -> None:
    assert split(["a\n\n</think>\n\nb\n"]) == ("a\n", "\nb\n")
    assert split(["a</think>b"]) == ("a", "b")


def test_without_a_closing_tag_everything_is_reasoning() -> None:
    # Cut off by the token limit: no answer, and the last newline was not before `</think>`.
    assert split(["Still thinking\n", "about it\n"]) == ("Still thinking\nabout it\n", "")
    assert split(["Hmm </thi"]) == ("Hmm </thi", "")


def test_a_stray_leading_think_tag_is_dropped() -> None:
    assert split(["<think>\nplan\n</think>\nanswer"]) == ("plan", "answer")
    assert split(["<thi", "nk>", "plan</think>answer"]) == ("plan", "answer")
    assert split(["x<think>y</think>z"]) == ("x<think>y", "z")  # only at the very start


def test_only_the_first_closing_tag_counts() -> None:
    assert split(["r</think>a</think>b"]) == ("r", "a</think>b")


def test_a_tag_split_across_chunks_is_held_back() -> None:
    parser = ReasoningParser()
    assert parser.feed("thinking\n</th") == [ReasoningDelta("thinking")]
    assert parser.feed("ink>\nanswer") == [TextDelta("answer")]
    assert parser.finish() == []


def test_a_trailing_newline_waits_for_what_follows() -> None:
    parser = ReasoningParser()
    assert parser.feed("line\n") == [ReasoningDelta("line")]
    assert parser.feed("more") == [ReasoningDelta("\nmore")]


def test_unforced_output_is_answer_unless_it_opens_a_think_block() -> None:
    assert split(["Hello </think> there"], forced=False) == ("", "Hello </think> there")
    assert split(["<think>\nplan\n</think>\n\nHi"], forced=False) == ("plan", "\nHi")
    assert split(["<th"], forced=False) == ("", "<th")


def test_empty_output() -> None:
    assert split([]) == ("", "")
    assert split(["</think>"]) == ("", "")


PIECES = st.sampled_from(
    ["<think>", "</think>", "</th", "ink>", "<", "\n", "\n\n", "a", "think", "é ✓", " ", ">"]
)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = "".join(draw(st.lists(PIECES, max_size=12)))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    return text, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(chunked(), st.booleans())
def test_any_chunking_gives_the_same_split(case: tuple[str, list[str]], forced: bool) -> None:
    text, chunks = case
    assert split(chunks, forced) == split([text], forced)


@settings(max_examples=300, deadline=None)
@given(chunked())
def test_the_split_matches_its_definition(case: tuple[str, list[str]]) -> None:
    text, chunks = case
    body = text.removeprefix("<think>")
    if body is not text:
        body = body.removeprefix("\n")
    if "</think>" in body:
        reasoning, answer = body.split("</think>", 1)
        expected = (reasoning.removesuffix("\n"), answer.removeprefix("\n"))
    else:
        expected = (body, "")
    assert split(chunks) == expected

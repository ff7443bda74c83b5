"""The whole Step output path: chunking invariance, valid argument JSON, and round trips
through the template (what `render_prompt` writes, the parsers read back unchanged)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stepflash.core.events import Event
from stepflash.core.request import Message, Role, TextPart, Tool, ToolCall
from stepflash.dialects.step3p5 import Step3p5OutputParser
from stepflash.dialects.step3p5.template import render_prompt
from stepflash.dialects.step3p5.values import format_value
from tests.unit.test_step3p5_tool_parser import TOOLS, call, ids, normalise


def parse(
    chunks: list[str],
    tools: tuple[Tool, ...] = TOOLS,
    truncated: bool = False,
    forced: bool = True,
) -> list[tuple[Any, ...]]:
    parser = Step3p5OutputParser(tools, ids(), index=0, forced_reasoning=forced)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish(truncated)
    return normalise(events)


def test_reasoning_then_text_then_calls() -> None:
    output = (
        "The user wants Paris weather.\n</think>\nOne moment.\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    assert parse([output]) == [
        ("reasoning", "The user wants Paris weather."),
        ("text", "One moment."),
        call("get_weather", city="Paris"),
    ]


def test_a_call_while_reasoning_is_reasoning() -> None:
    output = "<tool_call>\n<function=get_weather>\n</function>\n</tool_call>"
    assert parse([output]) == [("reasoning", output)]
    assert parse(["</think>" + output]) == [call("get_weather")]


def test_unforced_output_reaches_the_tool_parser_directly() -> None:
    output = "<tool_call>\n<function=get_weather>\n</function>\n</tool_call>"
    assert parse([output], forced=False) == [call("get_weather")]


# -- (a) any chunking of the same output gives the same events; (c) arguments are valid JSON --

REASONING_PIECES = ["plan", " ", "\n", "<think>", "</thi", "<tool_call>", "é✓", "<", ">"]
ANSWER_PIECES = [
    "Sure.",
    " ",
    "\n",
    "\n\n",
    "<",
    "</",
    ">",
    "=",
    "<b>bold</b>",
    "<tool_call>",
    "</tool_call>",
    "<tool_call>\n<function=get_weather>\n",
    "<function=get_weather>",
    "<function get_weather>",
    "<functionwrite_file>",
    "<function=rm_rf>",
    "<function=get_weather\n",
    "<parameter=city>\n",
    "<parameter=days>",
    "<parameter=city\n",
    "<parameter=nope>",
    "<parameter=content>\n",
    "<parameter=o>\n",
    "Paris",
    "3",
    "{'a': [1, 2]}",
    '{"k": "v"}',
    "\n</parameter>\n",
    "</parameter>",
    "</function>",
    "\n</function>\n</tool_call>",
    '"quoted" \\ back',
    "ünïcode ✓",
    "</think>",
    '{"name": "get_weather", "arguments": {}}',
]


@st.composite
def outputs(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A raw output (reasoning, maybe `</think>`, an answer mixing text and calls), chunked."""
    reasoning = "".join(draw(st.lists(st.sampled_from(REASONING_PIECES), max_size=6)))
    answer = "".join(draw(st.lists(st.sampled_from(ANSWER_PIECES), max_size=14)))
    text = reasoning + draw(st.sampled_from(["</think>", "\n</think>\n", ""])) + answer
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=16)))
    return text, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@settings(max_examples=600, deadline=None)
@given(outputs(), st.booleans(), st.booleans())
def test_any_chunking_gives_the_same_events(
    case: tuple[str, list[str]], truncated: bool, forced: bool
) -> None:
    text, chunks = case
    whole = parse([text], truncated=truncated, forced=forced)
    assert parse(chunks, truncated=truncated, forced=forced) == whole
    assert parse(list(text), truncated=truncated, forced=forced) == whole


@settings(max_examples=200, deadline=None)
@given(outputs())
def test_without_tools_the_answer_is_passed_through(case: tuple[str, list[str]]) -> None:
    text, chunks = case
    _, closed, answer = text.removeprefix("<think>").partition("</think>")
    answer = answer.removeprefix("\n") if closed else ""
    events = parse(chunks, tools=())
    assert [event for event in events if event[0] != "reasoning"] == (
        [("text", answer)] if answer else []
    )


# -- (b) round trip: the template's assistant turn parses back to the same message --

CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cs",))
AWKWARD = ["<tool_call>", "</tool_call>", "<function=typed>", "</function>", "<parameter=s>"]
AWKWARD += ["</parameter>", "\n", " ", "<", ">", '"', "\\", "{", "}"]
# The format's one ambiguity (see tool_parser): a value may not contain a closing tag that the
# template's own next tag would confirm. Such values are left out of the round trip.
AMBIGUOUS = ("</parameter>", "\n<parameter=", "\n</function>", "\n</tool_call>")


def unambiguous(value: Any) -> bool:
    text = "\n" + format_value(value)  # as written: after the tag's own newline
    return not any(marker in text for marker in AMBIGUOUS)


TEXT = st.lists(st.one_of(CHARACTERS, st.sampled_from(AWKWARD)), max_size=10).map("".join)
SCALARS = st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=6))
VALUES = {
    "s": TEXT,
    "i": st.integers(),
    "n": st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
    "b": st.booleans(),
    "o": st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
    "a": st.lists(SCALARS, max_size=3),
    "z": st.none(),
    "sn": st.one_of(st.none(), TEXT.filter(lambda text: text.strip() not in ("null", "None"))),
    "ni": st.one_of(st.none(), st.integers()),
    "undeclared": TEXT,
}


@st.composite
def typed_arguments(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(VALUES)), unique=True, max_size=5))
    return {key: draw(VALUES[key].filter(unambiguous)) for key in keys}


WEATHER_ARGUMENTS = st.fixed_dictionaries(
    {"city": TEXT.filter(unambiguous)},
    optional={"days": st.integers(-5, 400), "units": st.sampled_from(["c", "f"])},
)
CALLS = st.one_of(
    st.tuples(st.just("typed"), typed_arguments()),
    st.tuples(st.just("get_weather"), WEATHER_ARGUMENTS),
)
# Free text that cannot be mistaken for markup, without the whitespace that borders calls.
PROSE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="<"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(CALLS, min_size=1, max_size=3),
    PROSE.map(str.strip),
    PROSE.filter(lambda text: "</think>" not in text),
    st.integers(1, 7),
)
def test_template_round_trip(
    calls: list[tuple[str, dict[str, Any]]], content: str, reasoning: str, chunk: int
) -> None:
    message = Message(
        Role.ASSISTANT,
        (TextPart(content),) if content else (),
        tuple(ToolCall(f"c{i}", name, json.dumps(args)) for i, (name, args) in enumerate(calls)),
        reasoning=reasoning,
    )
    prompt = render_prompt((Message(Role.USER, (TextPart("q"),)), message), TOOLS)
    turn = prompt.rsplit("<|im_start|>assistant\n", 2)[1].removesuffix("<|im_end|>\n")
    # The prompt ends with the generation prompt's `<think>\n`: the model writes the rest.
    output = turn.removeprefix("<think>\n")
    chunks = [output[i : i + chunk] for i in range(0, len(output), chunk)]
    expected = [("reasoning", reasoning)] if reasoning else []
    expected += [("text", content)] if content else []
    expected += [("call", name, arguments) for name, arguments in calls]
    assert parse(chunks) == expected

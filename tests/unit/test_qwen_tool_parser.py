"""The lenient Qwen JSON tool-call parser: accepted shapes, what stays text, chunking invariance."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from stepflash.core.events import Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from stepflash.core.request import Message, Role, TextPart, Tool, ToolCall
from stepflash.dialects.qwen.template import render_prompt
from stepflash.dialects.qwen.tool_parser import QwenToolCallParser

NAMES = frozenset({"get_weather", "search"})


def ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def run(chunks: list[str], names: frozenset[str] = NAMES, truncated: bool = False) -> list[tuple]:
    """Parse the chunks and normalise: adjacent text merged, calls as (name, arguments object)."""
    parser = QwenToolCallParser(names, ids())
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish(truncated)
    result: list[tuple] = []
    pending: dict[int, list[str]] = {}
    for event in events:
        match event:
            case TextDelta(text=text):
                if result and result[-1][0] == "text":
                    result[-1] = ("text", result[-1][1] + text)
                else:
                    result.append(("text", text))
            case ToolCallStart(call_index=ci, name=name):
                pending[ci] = [name]
            case ToolCallDelta(call_index=ci, arguments=arguments):
                pending[ci].append(arguments)
            case ToolCallEnd(call_index=ci):
                name, *parts = pending.pop(ci)
                result.append(("call", name, json.loads("".join(parts))))
    assert not pending, "every started call must end"
    return result


def call(name: str, **arguments: object) -> tuple:
    return ("call", name, arguments)


def test_tagged_call() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert run([text]) == [call("get_weather", city="Paris")]


def test_bare_and_fenced_calls() -> None:
    assert run(['{"name": "search", "arguments": {"q": "x"}}']) == [call("search", q="x")]
    fenced = '```json\n{"name": "search", "parameters": {"q": "y"}}\n```'
    assert run([fenced]) == [call("search", q="y")]


def test_arguments_given_as_a_json_string() -> None:
    text = '<tool_call>{"name": "search", "arguments": "{\\"q\\": \\"z\\"}"}</tool_call>'
    assert run([text]) == [call("search", q="z")]


def test_several_calls_and_text_before() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n'
        "</tool_call>\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "B"}}\n</tool_call>\n'
    )
    assert run([text]) == [
        ("text", "Let me check.\n"),
        call("get_weather", city="A"),
        call("get_weather", city="B"),
    ]


def test_array_of_calls_in_one_block() -> None:
    text = '[{"name": "search", "arguments": {"q": 1}}, {"name": "get_weather", "arguments": {}}]'
    assert run([text]) == [call("search", q=1), call("get_weather")]


def test_unknown_tool_names_stay_text() -> None:
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert run([text]) == [("text", text)]
    assert run(['{"name": "rm_rf", "arguments": {}}']) == [
        ("text", '{"name": "rm_rf", "arguments": {}}')
    ]


def test_json_answers_and_code_fences_stay_text() -> None:
    assert run(['{"answer": 42} is the result']) == [("text", '{"answer": 42} is the result')]
    code = "```python\nprint('hi')\n```"
    assert run([code]) == [("text", code)]
    assert run(["Here is {not json"]) == [("text", "Here is {not json")]


def test_backticks_before_prose_are_not_a_fence_whatever_the_chunking() -> None:
    """Found by the chunking property: an info line too long for a fence ended fenced mode
    only when it arrived without its newline."""
    prose = "```Hello there. "
    text = prose + '<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>'
    expected = [("text", prose), call("search", q="x")]
    assert run([text]) == expected
    assert run([text[:20], text[20:]]) == expected


def test_call_cut_off_by_the_token_limit_is_not_repaired() -> None:
    text = '<tool_call>\n{"name": "search", "arguments": {"q": "x"}}'
    assert run([text], truncated=True) == [("text", text)]
    # ...but a complete call whose closing tag the model skipped at its natural end is kept.
    assert run([text], truncated=False) == [call("search", q="x")]


def test_without_offered_tools_everything_is_text() -> None:
    text = '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
    assert run([text], names=frozenset()) == [("text", text)]


def test_braces_inside_strings_do_not_confuse_the_scanner() -> None:
    text = '{"name": "search", "arguments": {"q": "a } tricky \\" { string"}}'
    assert run([text]) == [call("search", q='a } tricky " { string')]


SEGMENTS = st.sampled_from(
    [
        "Hello there. ",
        "```python\nx = {1: 2}\n```\n",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '{"name": "search", "arguments": {"q": "a}b"}}',
        '```json\n{"name": "search", "arguments": {}}\n```',
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        "{broken",
        "<tool",
        "   \n",
        "`",
        "é ünïcode ✓ ",
    ]
)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = "".join(draw(st.lists(SEGMENTS, min_size=1, max_size=6)))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return text, chunks


@settings(max_examples=400, deadline=None)
@given(chunked(), st.booleans())
def test_any_chunking_gives_the_same_result(case: tuple[str, list[str]], truncated: bool) -> None:
    text, chunks = case
    assert run(chunks, truncated=truncated) == run([text], truncated=truncated)


@settings(max_examples=200, deadline=None)
@given(chunked())
def test_no_text_is_lost_when_nothing_is_a_call(case: tuple[str, list[str]]) -> None:
    text, chunks = case
    assert run(chunks, names=frozenset()) == ([("text", text)] if text else [])


ARGUMENTS = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8),
    st.one_of(
        st.integers(),
        st.text(max_size=12),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=3),
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(NAMES)), ARGUMENTS), min_size=1, max_size=3))
def test_template_round_trip(calls: list[tuple[str, dict]]) -> None:
    """Rendering an assistant turn with the template and parsing it back gives the same calls."""
    message = Message(
        Role.ASSISTANT,
        (),
        tuple(
            ToolCall(f"c{i}", name, json.dumps(arguments))
            for i, (name, arguments) in enumerate(calls)
        ),
    )
    prompt = render_prompt(
        (Message(Role.USER, (TextPart("q"),)), message), tuple(Tool(name) for name in NAMES)
    )
    assistant_text = prompt.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert run([assistant_text]) == [("call", name, arguments) for name, arguments in calls]

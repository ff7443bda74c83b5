"""Step's XML tool calls: value types, repairs (only for declared names), XML inside values,
truncation, and streaming behaviour."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from stepflash.core.events import (
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from stepflash.core.request import Tool
from stepflash.dialects.step3p5.tool_parser import ToolCallParser
from stepflash.dialects.step3p5.values import parse_value


def obj(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


WEATHER = Tool(
    "get_weather",
    parameters=obj(city={"type": "string"}, days={"type": "integer"}, units={"enum": ["c", "f"]}),
)
WRITE = Tool("write_file", parameters=obj(path={"type": "string"}, content={"type": "string"}))
TYPED = Tool(
    "typed",
    parameters=obj(
        s={"type": "string"},
        i={"type": "integer"},
        n={"type": "number"},
        b={"type": "boolean"},
        o={"type": "object"},
        a={"type": "array"},
        z={"type": "null"},
        sn={"type": ["string", "null"]},
        ni={"type": ["integer", "null"]},
        anything={},
    ),
)
TOOLS = (WEATHER, WRITE, TYPED)


def ids() -> Any:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def normalise(events: list[Event]) -> list[tuple[Any, ...]]:
    """Adjacent text (and reasoning) merged; a call that ended as (name, arguments object),
    one that never ended as ("unfinished", name, argument text so far)."""
    result: list[tuple[Any, ...]] = []
    pending: dict[int, tuple[str, list[str]]] = {}
    starts: list[int] = []
    for event in events:
        match event:
            case TextDelta(text=text) | ReasoningDelta(text=text):
                kind = "text" if isinstance(event, TextDelta) else "reasoning"
                assert text, "no empty deltas"
                if result and result[-1][0] == kind:
                    result[-1] = (kind, result[-1][1] + text)
                else:
                    result.append((kind, text))
            case ToolCallStart(call_index=ci, name=name):
                assert ci not in pending
                starts.append(ci)
                pending[ci] = (name, [])
                result.append(("open", ci))
            case ToolCallDelta(call_index=ci, arguments=arguments):
                pending[ci][1].append(arguments)
            case ToolCallEnd(call_index=ci):
                name, parts = pending.pop(ci)
                arguments = json.loads("".join(parts))  # fragments join into valid JSON...
                assert isinstance(arguments, dict)  # ...that is an object
                result[result.index(("open", ci))] = ("call", name, arguments)
    assert starts == list(range(len(starts))), "calls are numbered in order from 0"
    for ci, (name, parts) in pending.items():
        result[result.index(("open", ci))] = ("unfinished", name, "".join(parts))
    return result


def run(
    chunks: list[str], tools: tuple[Tool, ...] = TOOLS, truncated: bool = False
) -> list[tuple[Any, ...]]:
    parser = ToolCallParser(tools, ids(), index=1)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish(truncated)
    assert all(getattr(event, "index", None) == 1 for event in events)
    return normalise(events)


def call(name: str, **arguments: Any) -> tuple[Any, ...]:
    return ("call", name, arguments)


def block(name: str, *parameters: tuple[str, str]) -> str:
    """A well-formed call, exactly as the template writes one."""
    body = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in parameters)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


PARIS = block("get_weather", ("city", "Paris"), ("days", "3"))


def test_a_call() -> None:
    assert run([PARIS]) == [call("get_weather", city="Paris", days=3)]


def test_text_before_a_call_and_after_it() -> None:
    assert run(["Let me check.\n\n" + PARIS + "\nDone."]) == [
        ("text", "Let me check."),
        call("get_weather", city="Paris", days=3),
        ("text", "Done."),
    ]


def test_two_calls_with_or_without_a_separator() -> None:
    rome = block("get_weather", ("city", "Rome"))
    expected = [call("get_weather", city="Paris", days=3), call("get_weather", city="Rome")]
    assert run([PARIS + rome]) == expected
    assert run([PARIS + "\n" + rome + "\n"]) == expected


def test_text_without_calls_is_kept_verbatim() -> None:
    text = "  Plain answer,\n with <b>tags</b> and a <tool mention.\n\n"
    assert run([text]) == [("text", text)]
    assert run([text], tools=()) == [("text", text)]


def test_without_tools_nothing_is_a_call() -> None:
    assert run([PARIS], tools=()) == [("text", PARIS)]


def test_an_undeclared_function_stays_text() -> None:
    text = block("rm_rf", ("path", "/"))
    assert run([text]) == [("text", text)]
    assert run(["Sure: " + text + PARIS]) == [
        ("text", "Sure: " + text),
        call("get_weather", city="Paris", days=3),
    ]


def test_other_call_formats_stay_text() -> None:
    hermes = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert run([hermes]) == [("text", hermes)]
    assert run(["use <tool_call> tags"]) == [("text", "use <tool_call> tags")]
    assert run(["<function> and <functional>"]) == [("text", "<function> and <functional>")]


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("s", "hello world", "hello world"),
        ("s", "  42  ", "  42  "),
        ("s", "two\nlines", "two\nlines"),
        ("units", "f", "f"),
        ("i", "42", 42),
        ("i", "-7", -7),
        ("i", "3.0", 3),
        ("i", "3.5", 3.5),  # does not fit the type: read as JSON
        ("i", "many", "many"),  # nor as JSON: kept as text
        ("n", "2.5", 2.5),
        ("n", "4", 4),
        ("n", "4.0", 4),
        ("n", "1e3", 1000),
        ("n", "NaN", "NaN"),
        ("b", "true", True),
        ("b", "False", False),
        ("b", "yes", "yes"),
        ("o", '{"a": [1, 2]}', {"a": [1, 2]}),
        ("o", "{'a': True, 'b': None}", {"a": True, "b": None}),
        ("o", "{oops", "{oops"),
        ("a", "[1, 2]", [1, 2]),
        ("a", "(1, 'x')", [1, "x"]),
        ("a", "[1, 2", "[1, 2"),
        ("z", "null", None),
        ("sn", "null", None),
        ("sn", "text", "text"),
        ("ni", "None", None),
        ("ni", "5", 5),
        ("anything", '{"x": 1}', {"x": 1}),
        ("anything", "12", 12),
        ("anything", "plain", "plain"),
        ("undeclared", "12", "12"),
    ],
)
def test_values_are_converted_by_the_schema(key: str, raw: str, expected: Any) -> None:
    tool = "get_weather" if key == "units" else "typed"
    [result] = run([block(tool, (key, raw))])
    assert json.dumps(result[2]) == json.dumps({key: expected})  # types exact: 3 is not 3.0


def test_one_framing_newline_is_stripped_from_each_side() -> None:
    assert run([block("write_file", ("content", "\nbody\n"))]) == [
        call("write_file", content="\nbody\n")
    ]
    tight = (
        "<tool_call><function=write_file><parameter=content>x</parameter></function></tool_call>"
    )
    assert run([tight]) == [call("write_file", content="x")]
    empty = "<tool_call>\n<function=write_file>\n<parameter=content>\n\n</parameter>\n</function>"
    assert run([empty]) == [call("write_file", content="")]


def test_parse_value_directly() -> None:
    assert parse_value("7", None) == "7"
    assert parse_value(" 7 ", {"type": "integer"}) == 7
    assert parse_value("True", {"type": ["boolean", "string"]}) == "True"  # string always fits
    assert parse_value("true", {"type": ["integer", "boolean"]}) is True


# -- repairs: applied for declared names, and the same text is left alone otherwise --


def test_function_tag_missing_its_equals_sign() -> None:
    for opening in ("<function get_weather>", "<functionget_weather>"):
        text = PARIS.replace("<function=get_weather>", opening)
        assert run([text]) == [call("get_weather", city="Paris", days=3)]
        unknown = text.replace("get_weather", "rm_rf")
        assert run([unknown]) == [("text", unknown)]


def test_tag_missing_its_closing_bracket() -> None:
    text = PARIS.replace("<function=get_weather>", "<function=get_weather")
    assert run([text]) == [call("get_weather", city="Paris", days=3)]
    unknown = text.replace("get_weather", "rm_rf")
    assert run([unknown]) == [("text", unknown)]
    parameter = PARIS.replace("<parameter=city>", "<parameter=city")
    assert run([parameter]) == [call("get_weather", city="Paris", days=3)]
    undeclared = PARIS.replace("<parameter=city>", "<parameter=town")  # dropped, not guessed
    assert run([undeclared]) == [call("get_weather", days=3)]


def test_function_without_its_tool_call_wrapper() -> None:
    bare = "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>"
    assert run(["Sure.\n" + bare]) == [("text", "Sure."), call("get_weather", city="Paris")]
    unknown = bare.replace("get_weather", "rm_rf")
    assert run(["Sure.\n" + unknown]) == [("text", "Sure.\n" + unknown)]


def test_missing_closing_parameter_tag() -> None:
    text = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    )
    assert run([text]) == [call("get_weather", city="Paris", days=3)]
    undeclared = text.replace("<parameter=days>", "<parameter=weeks>")
    assert run([undeclared]) == [call("get_weather", city="Paris\n<parameter=weeks>\n3")]
    last = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>"
    assert run([last]) == [call("get_weather", city="Paris")]
    only = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</tool_call>"
    assert run([only]) == [call("get_weather", city="Paris")]


def test_missing_closing_function_and_tool_call_tags() -> None:
    no_function = PARIS.replace("</function>\n", "")
    assert run([no_function]) == [call("get_weather", city="Paris", days=3)]
    no_wrapper_end = PARIS.replace("</tool_call>", "")
    assert run([no_wrapper_end + PARIS]) == [call("get_weather", city="Paris", days=3)] * 2
    assert run([no_wrapper_end]) == [call("get_weather", city="Paris", days=3)]


def test_stray_text_between_parameters_is_dropped() -> None:
    text = PARIS.replace("<parameter=city>", "I will call it.\n<parameter=city>")
    assert run([text]) == [call("get_weather", city="Paris", days=3)]


# -- values hold any text, XML included --


def test_tool_xml_inside_a_value_is_value_text() -> None:
    code = (
        'OPEN = "<tool_call>\\n<function=get_weather>"\n'
        'CLOSE = "</parameter>\\n</function>\\n</tool_call>"\n'
        "<tool_call>\n<function=get_weather>\n"  # a call inside the value is value text
        "<parameter=city> is a parameter of another tool\n"
        "</function> ends a function\n"
    )
    text = block("write_file", ("path", "a.py"), ("content", code))
    assert run([text]) == [call("write_file", path="a.py", content=code)]


def test_a_value_ends_at_the_first_closing_tag_the_next_tag_confirms() -> None:
    """The one ambiguity of the format: `</parameter>` then a call's next tag ends the value."""
    code = "x\n</parameter>\n</function>\ny"
    [result, *rest] = run([block("write_file", ("content", code))])
    assert result == call("write_file", content="x")
    assert rest == [("text", "y\n</parameter>\n</function>\n</tool_call>")]


def test_a_closing_tag_only_closes_before_the_next_tag() -> None:
    value = "a </parameter> b\n</parameter>\nc"
    assert run([block("write_file", ("content", value))]) == [call("write_file", content=value)]


# -- end of output --


def test_a_call_cut_off_by_the_token_limit_never_ends() -> None:
    cut = "Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar"
    assert run([cut], truncated=True) == [
        ("text", "Checking."),
        ("unfinished", "get_weather", '{"city": "Par'),
    ]
    # At a natural end (a stop string, say) what the call has is kept.
    assert run([cut], truncated=False) == [("text", "Checking."), call("get_weather", city="Par")]


def test_a_block_cut_off_before_its_function_is_known_is_text() -> None:
    for cut in ("<tool_call>\n<function=get_wea", "<tool_call>\n", "<tool_c", "<function=get"):
        assert run(["Hi " + cut], truncated=True) == [("text", "Hi " + cut)]
        assert run(["Hi " + cut], truncated=False) == [("text", "Hi " + cut)]


def test_a_call_cut_off_after_its_function_closed_is_whole() -> None:
    text = PARIS.removesuffix("</tool_call>")
    assert run([text], truncated=True) == [call("get_weather", city="Paris", days=3)]


# -- streaming --


def test_the_call_starts_as_soon_as_its_function_tag_is_complete() -> None:
    parser = ToolCallParser(TOOLS, ids())
    assert parser.feed("Hi.\n<tool_call>\n<function=get_weath") == [TextDelta("Hi.")]
    assert parser.feed("er>") == [ToolCallStart(0, "call_0", "get_weather"), ToolCallDelta(0, "{")]


def test_string_values_stream_as_they_are_written() -> None:
    parser = ToolCallParser(TOOLS, ids())
    parser.feed("<tool_call>\n<function=write_file>\n<parameter=content>\n")
    assert parser.feed("line one\n") == [ToolCallDelta(0, "line one")]
    assert parser.feed('"two"\n</par') == [ToolCallDelta(0, '\\n\\"two\\"')]
    assert parser.feed("ameter>\n<") == []  # is this `</parameter>` the end? not known yet
    assert parser.feed("/function>") == [
        ToolCallDelta(0, '"'),
        ToolCallDelta(0, "}"),
        ToolCallEnd(0),
    ]


def test_other_values_are_sent_whole_when_they_end() -> None:
    parser = ToolCallParser(TOOLS, ids())
    assert parser.feed("<tool_call>\n<function=get_weather>\n<parameter=days>\n1") == [
        ToolCallStart(0, "call_0", "get_weather"),
        ToolCallDelta(0, "{"),
        ToolCallDelta(0, '"days": '),
    ]
    assert parser.feed("2\n</parameter>\n") == []
    assert parser.feed("</function>") == [
        ToolCallDelta(0, "12"),
        ToolCallDelta(0, "}"),
        ToolCallEnd(0),
    ]


def test_held_back_text_stays_small() -> None:
    """Linear in the output: long values and long text pass through a bounded buffer."""
    parser = ToolCallParser(TOOLS, ids())
    parser.feed("<tool_call>\n<function=write_file>\n<parameter=content>\n")
    longest = 0
    for char in itertools.islice(itertools.cycle("ab <\n</tool_call>\n</parameter> x"), 30_000):
        parser.feed(char)
        longest = max(longest, len(parser._buffer))
    assert longest < 40

"""The Step 3.5 / 3.7 prompt, byte for byte: system turn, tools, reasoning, calls, tool results."""

from __future__ import annotations

from stepflash.core.request import Effort, ImagePart, Message, Role, TextPart, Tool, ToolCall
from stepflash.dialects.step3p5.template import BOS, TOOLS_INSTRUCTION, render_prompt

WEATHER = Tool(
    "get_weather",
    "Current weather for a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
SEARCH = Tool("search", parameters={"type": "object", "properties": {"query": {"type": "string"}}})
TOOLS = (WEATHER, SEARCH)

INSTRUCTION = """
</tools>

If you choose to call a function ONLY reply in the following format with NO suffix:

<tool_call>
<function=example_function_name>
<parameter=example_parameter_1>
value_1
</parameter>
<parameter=example_parameter_2>
This is the value for the second parameter
that can span
multiple lines
</parameter>
</function>
</tool_call>

<IMPORTANT>
Reminder:
- Function calls MUST follow the specified format: an inner <function=...>
...
</function> block must be nested within <tool_call>
...
</tool_call> XML tags
- Required parameters MUST be specified
</IMPORTANT>"""

TOOLS_BLOCK = (
    "# Tools\n\nYou have access to the following functions in JSONSchema format:\n\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather '
    'for a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, '
    '"days": {"type": "integer"}}, "required": ["city"]}}}\n'
    '{"type": "function", "function": {"name": "search", "parameters": {"type": "object", '
    '"properties": {"query": {"type": "string"}}}}}' + INSTRUCTION
)


def system(text: str, name: str | None = None) -> Message:
    return Message(Role.SYSTEM, (TextPart(text),), name=name)


def user(text: str) -> Message:
    return Message(Role.USER, (TextPart(text),))


def assistant(text: str = "", reasoning: str | None = None, *calls: ToolCall) -> Message:
    parts = (TextPart(text),) if text else ()
    return Message(Role.ASSISTANT, parts, tuple(calls), reasoning=reasoning)


def tool(text: str, call_id: str) -> Message:
    return Message(Role.TOOL, (TextPart(text),), tool_call_id=call_id)


def test_the_instruction_text_is_the_shipped_one() -> None:
    assert TOOLS_INSTRUCTION == INSTRUCTION


def test_a_multi_turn_tool_conversation_renders_exactly() -> None:
    messages = (
        system("You are terse."),
        user("Weather in Paris and Rome?"),
        assistant(
            "",
            "Two cities, two calls.",
            ToolCall("c1", "get_weather", '{"city": "Paris", "days": 2}'),
            ToolCall("c2", "get_weather", '{"city": "Rome", "days": 2}'),
        ),
        tool("Sunny", "c1"),
        tool("Rain", "c2"),
        assistant("Paris: sun. Rome: rain.", "Both results are in."),
        user("And Oslo?"),
        assistant("Checking.", None, ToolCall("c3", "search", '{"query": "Oslo weather"}')),
        tool("Snow", "c3"),
    )
    expected = (
        BOS
        + "<|im_start|>system\nReasoning: high\n\nYou are terse.\n\n"
        + TOOLS_BLOCK
        + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        # Before the last real user message: reasoning dropped, calls follow with no separator.
        "<|im_start|>assistant\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>tool_response\n"
        "<tool_response>Sunny</tool_response><tool_response>Rain</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nParis: sun. Rome: rain.<|im_end|>\n"
        "<|im_start|>user\nAnd Oslo?<|im_end|>\n"
        # After it: a think block, empty when the turn carried no reasoning.
        "<|im_start|>assistant\n<think>\n\n</think>\nChecking."
        "<tool_call>\n<function=search>\n<parameter=query>\nOslo weather\n</parameter>\n"
        "</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>tool_response\n<tool_response>Snow</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    assert render_prompt(messages, TOOLS, Effort.HIGH) == expected


def test_reasoning_is_kept_for_every_turn_of_the_current_task() -> None:
    messages = (
        user("Plan it."),
        assistant("", "First, search.", ToolCall("c1", "search", '{"query": "x"}')),
        tool("found", "c1"),
        # A user message that only wraps a tool response does not start a new task.
        user("<tool_response>more</tool_response>"),
        assistant("Done.", "All found."),
    )
    assert render_prompt(messages, add_generation_prompt=False, bos="") == (
        "<|im_start|>user\nPlan it.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nFirst, search.\n</think>\n"
        "<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n</function>\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>tool_response\n<tool_response>found</tool_response><|im_end|>\n"
        "<|im_start|>user\n<tool_response>more</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nAll found.\n</think>\nDone.<|im_end|>\n"
    )


def test_a_plain_chat_has_no_system_turn() -> None:
    assert render_prompt((user("hi"),)) == (
        BOS + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )


def test_the_reasoning_level_opens_a_system_turn_of_its_own() -> None:
    assert render_prompt((user("hi"),), effort=Effort.LOW, bos="") == (
        "<|im_start|>system\nReasoning: low\n\n<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )


def test_the_reasoning_level_comes_before_the_system_text() -> None:
    prompt = render_prompt((system("Be brief."), user("hi")), effort=Effort.MEDIUM, bos="")
    assert prompt.startswith("<|im_start|>system\nReasoning: medium\n\nBe brief.<|im_end|>\n")


def test_tools_without_a_system_message() -> None:
    prompt = render_prompt((user("hi"),), TOOLS, bos="")
    assert prompt == (
        "<|im_start|>system\n" + TOOLS_BLOCK + "<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )


def test_only_the_first_system_message_joins_the_system_turn() -> None:
    messages = (
        system("Rules."),
        user("hi"),
        system("A note.", name="observation"),
        system("Later rules."),
    )
    assert render_prompt(messages, bos="", add_generation_prompt=False) == (
        "<|im_start|>system\nRules.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>observation\nA note.<|im_end|>\n"
        "<|im_start|>system\nLater rules.<|im_end|>\n"
    )


def test_reasoning_left_inside_the_content_is_split_out() -> None:
    messages = (user("q"), assistant("<think>\nhmm\n</think>\n\nAnswer."))
    assert render_prompt(messages, bos="", add_generation_prompt=False).endswith(
        "<|im_start|>assistant\n<think>\nhmm\n</think>\nAnswer.<|im_end|>\n"
    )
    older = (user("q"), assistant("hmm</think>Answer."), user("next"))
    assert "<|im_start|>assistant\nAnswer.<|im_end|>\n" in render_prompt(older)


def test_values_are_raw_strings_or_json() -> None:
    arguments = (
        '{"s": "two\\nlines", "i": 3, "f": 2.5, "b": false, "n": null, '
        '"o": {"k": ["x", 1]}, "a": [1, 20], "u": "ünï"}'
    )
    message = assistant("", None, ToolCall("c", "search", arguments))
    assert render_prompt((message,), bos="", add_generation_prompt=False) == (
        "<|im_start|>assistant\n<tool_call>\n<function=search>\n"
        "<parameter=s>\ntwo\nlines\n</parameter>\n"
        "<parameter=i>\n3\n</parameter>\n"
        "<parameter=f>\n2.5\n</parameter>\n"
        "<parameter=b>\nfalse\n</parameter>\n"
        "<parameter=n>\nnull\n</parameter>\n"
        '<parameter=o>\n{"k": ["x", 1]}\n</parameter>\n'
        "<parameter=a>\n[1, 20]\n</parameter>\n"
        "<parameter=u>\nünï\n</parameter>\n"
        "</function>\n</tool_call><|im_end|>\n"
    )


def test_arguments_that_are_not_an_object_are_kept_as_text() -> None:
    broken = assistant("", None, ToolCall("c", "search", "not json"))
    empty = assistant("", None, ToolCall("c", "search", ""))
    assert "<parameter=arguments>\nnot json\n</parameter>\n" in render_prompt((broken,))
    assert "<function=search>\n</function>" in render_prompt((empty,))


def test_images_are_placeholders_where_they_stand_among_the_text() -> None:
    photo = ImagePart("data:image/png;base64,AAAA")
    message = Message(Role.USER, (TextPart("Compare "), photo, TextPart(" and "), photo))
    prompt = render_prompt((message,), bos="")
    assert prompt == (
        "<|im_start|>user\nCompare <im_patch> and <im_patch><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    assert "<__media__>" in render_prompt((message,), bos="", image_placeholder="<__media__>")


def test_an_image_message_stays_the_last_query_for_reasoning() -> None:
    """An image-only question is a real user turn: later assistant turns keep their reasoning."""
    question = Message(Role.USER, (ImagePart("data:image/png;base64,AAAA"),))
    answer = Message(Role.ASSISTANT, (TextPart("A cat."),), reasoning="Whiskers.")
    prompt = render_prompt((question, answer), bos="", add_generation_prompt=False)
    assert prompt.endswith(
        "<|im_start|>assistant\n<think>\nWhiskers.\n</think>\nA cat.<|im_end|>\n"
    )

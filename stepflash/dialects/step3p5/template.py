"""Render a canonical conversation into the prompt Step 3.5 / 3.7 Flash were trained on.

The layout follows the chat template StepFun ships with the model (see FORMATS.md §1): ChatML
turns, the reasoning level and the tools folded into one system turn, tool calls as XML, tool
results in their own `tool_response` turn, and a generation prompt that opens the think block.
Every byte of it reaches the model and decides whether the prefix cache hits, so it is written
as plain Python string constants rather than a Jinja template: each separator is visible where
it is used, and the tests pin the whole text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from stepflash.core.request import Effort, Message, Role, TextPart, Tool, ToolCall
from stepflash.dialects.step3p5.values import format_value

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"  # fullwidth bars, U+2581 for spaces
"""The text of the beginning-of-sequence token the template starts with.

Uncertain, so configurable (`render_prompt(..., bos=...)`): Step's tokenizer config spells its
pad token `end▁of▁sentence` between fullwidth bars (DeepSeek's spelling), and BOS, token id 0,
is taken to be its `begin` twin; no primary source at hand quotes the BOS text itself. Pass
`bos=""` when the engine's tokenizer adds BOS itself (llama.cpp does by default), or the
prompt would start with two.
"""

TOOLS_HEADER = (
    "# Tools\n\nYou have access to the following functions in JSONSchema format:\n\n<tools>"
)
"""Opens the tools block; each tool follows on its own line as one JSON object."""

TOOLS_INSTRUCTION = (
    "\n</tools>\n\n"
    "If you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n"
    "<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n"
    "</function>\n</tool_call>\n\n"
    "<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...>\n...\n"
    "</function> block must be nested within <tool_call>\n...\n</tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "</IMPORTANT>"
)
"""Closes the tools block: the call format and the `<IMPORTANT>` reminder.

FORMATS.md describes this text without quoting it; the wording here is Step 3.7's shipped
template as reproduced, identically, by several independent implementations. Replace it here
if StepFun's template changes.
"""

IMAGE_PLACEHOLDER = "<im_patch>"
"""One per image, where the image sits among the text; the engine's processor expands it into
the image's tokens. Configurable per backend: llama.cpp's server expects its own marker."""

GENERATION_PROMPT = "<|im_start|>assistant\n<think>\n"
"""The model's output starts inside its reasoning: thinking cannot be switched off."""

OBSERVATION = "observation"  # a later system message with this name is written in this role


def render_prompt(
    messages: tuple[Message, ...],
    tools: tuple[Tool, ...] = (),
    effort: Effort | None = None,
    add_generation_prompt: bool = True,
    *,
    bos: str = BOS,
    image_placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """The whole prompt text; with `add_generation_prompt`, up to the open think block."""
    leading_system = messages[0] if messages and messages[0].role is Role.SYSTEM else None
    parts = [bos]
    system = _system_content(leading_system, tools, effort)
    if system is not None:
        parts.append(_turn("system", system))
    parts += _body(messages, 1 if leading_system else 0, image_placeholder)
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def _turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def _system_content(
    system: Message | None, tools: tuple[Tool, ...], effort: Effort | None
) -> str | None:
    """The first turn: reasoning level, then the caller's system text, then the tools."""
    if system is None and not tools and effort is None:
        return None
    parts = [f"Reasoning: {effort.value}\n\n"] if effort is not None else []
    if system is not None:
        parts.append(system.text + ("\n\n" if tools else ""))
    if tools:
        parts.append(TOOLS_HEADER)
        parts += ("\n" + json.dumps(_tool_schema(tool), ensure_ascii=False) for tool in tools)
        parts.append(TOOLS_INSTRUCTION)
    return "".join(parts)


def _tool_schema(tool: Tool) -> dict[str, Any]:
    """The tool as a client sends it in OpenAI's shape (an empty description is left out)."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def _body(messages: tuple[Message, ...], start: int, image_placeholder: str) -> Iterator[str]:
    """Every turn after the system turn; consecutive tool results share one turn."""
    last_query = _last_query_index(messages)
    results: list[str] = []
    for position in range(start, len(messages)):
        message = messages[position]
        if message.role is Role.TOOL:
            results.append(message.text)
            continue
        if results:
            yield _tool_results_turn(results)
            results = []
        if message.role is Role.ASSISTANT:
            yield _assistant_turn(message, keep_reasoning=position > last_query)
        else:
            yield _turn(_role_name(message), _content(message, image_placeholder))
    if results:
        yield _tool_results_turn(results)


def _content(message: Message, image_placeholder: str) -> str:
    """Text and images in their order, each image as its placeholder.

    Only images reach this template: a completions backend refuses video in its configuration.
    """
    return "".join(
        part.text if isinstance(part, TextPart) else image_placeholder for part in message.parts
    )


def _last_query_index(messages: tuple[Message, ...]) -> int:
    """Position of the last real user message: reasoning after it is the current task's.

    A user message that only wraps a tool response does not count. Without any real user
    message the template's default is the last position, so no earlier turn keeps reasoning.
    """
    for position in range(len(messages) - 1, -1, -1):
        message = messages[position]
        if message.role is Role.USER and not _is_wrapped_tool_response(message.text):
            return position
    return len(messages) - 1


def _is_wrapped_tool_response(text: str) -> bool:
    return text.startswith("<tool_response>") and text.endswith("</tool_response>")


def _role_name(message: Message) -> str:
    if message.role is Role.SYSTEM and message.name == OBSERVATION:
        return OBSERVATION
    return message.role.value


def _tool_results_turn(results: list[str]) -> str:
    return _turn("tool_response", "".join(f"<tool_response>{r}</tool_response>" for r in results))


def _assistant_turn(message: Message, keep_reasoning: bool) -> str:
    """Content then calls, with no separator; reasoning only for turns of the current task."""
    reasoning, content = message.reasoning, message.text
    if reasoning is None:
        reasoning, content = _split_inline_reasoning(content)
    think = f"<think>\n{reasoning or ''}\n</think>\n" if keep_reasoning else ""
    calls = "".join(_tool_call_text(call) for call in message.tool_calls)
    return _turn("assistant", think + content + calls)


def _split_inline_reasoning(content: str) -> tuple[str | None, str]:
    """Reasoning a client left in the content (`…</think>answer`), split as the template does."""
    end = content.find("</think>")
    if end < 0:
        return None, content
    before = content[:end].rstrip("\n")
    reasoning = (
        before[before.rfind("<think>") + len("<think>") :] if "<think>" in before else before
    )
    answer = content[content.rfind("</think>") + len("</think>") :]
    return reasoning.lstrip("\n"), answer.lstrip("\n")


def _tool_call_text(call: ToolCall) -> str:
    parameters = "".join(
        f"<parameter={key}>\n{format_value(value)}\n</parameter>\n"
        for key, value in _arguments(call.arguments).items()
    )
    return f"<tool_call>\n<function={call.name}>\n{parameters}</function>\n</tool_call>"


def _arguments(text: str) -> dict[str, Any]:
    """The call's arguments object. Text that is not one is kept whole as an `arguments` string,
    so the model still sees what it (or the client) wrote rather than a silently empty call."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"arguments": text}

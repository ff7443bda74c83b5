"""Render a canonical conversation into the ChatML prompt Qwen-family models expect.

The embedded models (Qwen2.5-Coder, SmolLM2) all read ChatML; Qwen's tool convention lists
tools in the system turn and returns results in `<tool_response>` blocks of a user turn.
Grouping (system text, consecutive tool results) is done here in Python so the Jinja template
stays a plain description of the text layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jinja2

from stepflash.core.request import Message, Role, Tool

DEFAULT_SYSTEM = "You are a helpful assistant."
THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"


@dataclass(slots=True)
class _Turn:
    role: str
    content: str = ""
    calls: list[dict[str, str]] = field(default_factory=list)
    results: list[str] = field(default_factory=list)


@cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("stepflash.dialects.qwen", "."),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    environment.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    return environment.get_template("chat_template.jinja")


def _tool_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def _turns(messages: tuple[Message, ...]) -> tuple[str, list[_Turn]]:
    system_texts = [m.text for m in messages if m.role is Role.SYSTEM]
    turns: list[_Turn] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        if message.role is Role.TOOL:
            if not turns or turns[-1].role != "tool":
                turns.append(_Turn("tool"))
            turns[-1].results.append(message.text)
            continue
        calls = [{"name": c.name, "arguments": c.arguments or "{}"} for c in message.tool_calls]
        turns.append(_Turn(message.role.value, message.text, calls))
    return "\n\n".join(system_texts) or DEFAULT_SYSTEM, turns


def render_prompt(
    messages: tuple[Message, ...],
    tools: tuple[Tool, ...] = (),
    reasoning_instruction: str | None = None,
) -> str:
    """The prompt up to the assistant's turn; with an instruction, the turn opens a think block."""
    system, turns = _turns(messages)
    return _template().render(
        system=system,
        tools=[_tool_schema(tool) for tool in tools],
        turns=turns,
        reasoning_instruction=reasoning_instruction,
        think=reasoning_instruction is not None,
    )

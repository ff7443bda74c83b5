"""The `step3p5` dialect: how Step 3.5 / 3.7 Flash read their prompt and write their output.

`template.render_prompt` writes the prompt; `Step3p5OutputParser` reads the raw output back
as canonical events: the reasoning first (`reasoning_parser`), then the answer, whose tool
calls `tool_parser` streams out of Step's XML.
"""

from __future__ import annotations

from collections.abc import Callable

from stepflash.core.events import Event, TextDelta
from stepflash.core.request import Tool
from stepflash.dialects.step3p5.reasoning_parser import ReasoningParser
from stepflash.dialects.step3p5.template import render_prompt
from stepflash.dialects.step3p5.tool_parser import ToolCallParser

__all__ = ["ReasoningParser", "Step3p5OutputParser", "ToolCallParser", "render_prompt"]


class Step3p5OutputParser:
    """Raw model output, chunk by chunk, to reasoning, text and tool-call events.

    Only the answer goes through the tool parser: a `<tool_call>` the model writes while
    still reasoning is part of its reasoning.
    """

    def __init__(
        self,
        tools: tuple[Tool, ...],
        new_call_id: Callable[[], str],
        index: int = 0,
        forced_reasoning: bool = True,
    ) -> None:
        self._reasoning = ReasoningParser(index, forced=forced_reasoning)
        self._answer = ToolCallParser(tools, new_call_id, index)

    @property
    def call_count(self) -> int:
        return self._answer.call_count

    def feed(self, text: str) -> list[Event]:
        return self._route(self._reasoning.feed(text))

    def finish(self, truncated: bool = False) -> list[Event]:
        """End of output; `truncated` when it was cut off (token limit), not ended by the model."""
        return self._route(self._reasoning.finish()) + self._answer.finish(truncated)

    def _route(self, events: list[Event]) -> list[Event]:
        routed: list[Event] = []
        for event in events:
            if isinstance(event, TextDelta):
                routed += self._answer.feed(event.text)
            else:
                routed.append(event)
        return routed

"""The canonical event stream every engine produces and every protocol encoder consumes.

Streaming is the only path: a non-streaming response is these same events accumulated
(see `stepflash.core.completion`). `index` is the choice index when `n > 1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A tool call begins; `call_index` orders calls within one choice."""

    call_index: int
    id: str
    name: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of the call's arguments; fragments concatenate to one JSON object."""

    call_index: int
    arguments: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    call_index: int
    index: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    index: int = 0
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts for the whole request (all choices).

    `prompt_tokens` includes `cached_tokens`; `completion_tokens` includes `reasoning_tokens`.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


Event = ReasoningDelta | TextDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | Finish | Usage

"""Accumulate an event stream into a whole completion: how every non-streaming response is made."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from stepflash.core.events import (
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from stepflash.core.request import ToolCall


@dataclass(slots=True)
class _PendingCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Choice:
    index: int
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.STOP
    stop_sequence: str | None = None
    _pending: dict[int, _PendingCall] = field(default_factory=dict)


@dataclass(slots=True)
class Completion:
    choices: dict[int, Choice] = field(default_factory=dict)
    usage: Usage | None = None

    def choice(self, index: int) -> Choice:
        return self.choices.setdefault(index, Choice(index))

    def add(self, event: Event) -> None:
        """Fold one event in; the order of choices is kept by index."""
        match event:
            case Usage():
                self.usage = event
            case ReasoningDelta(text=text, index=index):
                self.choice(index).reasoning += text
            case TextDelta(text=text, index=index):
                self.choice(index).content += text
            case ToolCallStart(call_index=ci, id=call_id, name=name, index=index):
                self.choice(index)._pending[ci] = _PendingCall(call_id, name)
            case ToolCallDelta(call_index=ci, arguments=args, index=index):
                self.choice(index)._pending[ci].arguments.append(args)
            case ToolCallEnd(call_index=ci, index=index):
                pending = self.choice(index)._pending.pop(ci)
                call = ToolCall(pending.id, pending.name, "".join(pending.arguments))
                self.choice(index).tool_calls.append(call)
            case Finish(reason=reason, index=index, stop_sequence=stop_sequence):
                choice = self.choice(index)
                choice.finish_reason = reason
                choice.stop_sequence = stop_sequence

    @property
    def ordered_choices(self) -> list[Choice]:
        return [self.choices[index] for index in sorted(self.choices)]


async def accumulate(events: AsyncIterator[Event]) -> Completion:
    completion = Completion()
    async for event in events:
        completion.add(event)
    return completion

"""Incremental, lenient parser for Qwen-style JSON tool calls.

Qwen models are trained to write `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
but small ones also write the JSON bare or inside a Markdown fence. We accept all three, and
only for the names of tools actually offered: anything else stays ordinary content, so a code
answer that happens to be JSON is never turned into a call.

Each character is examined a bounded number of times (the parser is linear in the output), and
text that might still turn into a call is held back, so every chunking of the same output
yields the same text and the same calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from enum import Enum, auto
from typing import Any

from stepflash.core.events import Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from stepflash.core.stop import partial_suffix

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
FENCE = "```"
MAX_FENCE_INFO = 16  # "```json" info strings longer than this are not tool-call fences

ParsedCall = tuple[str, str]  # (name, JSON text of the arguments object)


class _Mode(Enum):
    TEXT = auto()
    TAGGED = auto()
    BARE = auto()
    FENCED = auto()


def _call_from(value: Any, names: frozenset[str]) -> ParsedCall | None:
    """Read one call object in any of the shapes small models write; None if it is not one."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return name, json.dumps(arguments, ensure_ascii=False)


def parse_calls(body: str, names: frozenset[str]) -> list[ParsedCall] | None:
    """Parse one or more JSON call objects (or arrays of them); None unless all are valid calls."""
    text = body.strip()
    if text.startswith(FENCE):
        text = text.removeprefix(FENCE).split("\n", 1)[-1].removesuffix(FENCE).strip()
    decoder = json.JSONDecoder()
    calls: list[ParsedCall] = []
    position = 0
    while position < len(text):
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _call_from(item, names)
            if call is None:
                return None
            calls.append(call)
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
    return calls or None


class QwenToolCallParser:
    """Turns answer text into `TextDelta` and tool-call events, one chunk at a time."""

    def __init__(self, tool_names: Iterable[str], new_call_id: Callable[[], str], index: int = 0):
        self._names = frozenset(tool_names)
        self._new_call_id = new_call_id
        self._index = index
        self._mode = _Mode.TEXT
        self._buffer = ""
        self._scanned = 0
        self._at_call_position = True
        self._space = ""
        self._calls = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    @property
    def call_count(self) -> int:
        return self._calls

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self, truncated: bool = False) -> list[Event]:
        """End of output. A call cut off by the token limit stays text; a complete one is kept."""
        events: list[Event] = []
        if self._mode is _Mode.TAGGED and not truncated:
            calls = parse_calls(self._buffer, self._names)
            if calls:
                self._emit_calls(calls, events)
                self._buffer = ""
                self._mode = _Mode.TEXT
        leftover = self._buffer
        if self._mode is _Mode.TAGGED:
            leftover = OPEN_TAG + leftover
        if (leftover or self._space) and not (self._calls and not leftover.strip()):
            events.append(TextDelta(self._space + leftover, self._index))
        self._buffer = self._space = ""
        self._mode = _Mode.TEXT
        return events

    # -- the state machine: each step consumes buffered text or returns False to wait --

    def _step(self, events: list[Event]) -> bool:
        match self._mode:
            case _Mode.TEXT:
                return self._step_text(events)
            case _Mode.TAGGED:
                return self._step_tagged(events)
            case _Mode.BARE:
                return self._step_bare(events)
            case _Mode.FENCED:
                return self._step_fenced(events)

    def _enter(self, mode: _Mode, skip: int) -> bool:
        self._mode = mode
        self._buffer = self._buffer[skip:]
        self._scanned = 0
        self._depth, self._in_string, self._escaped = 0, False, False
        return True

    def _step_text(self, events: list[Event]) -> bool:
        if not self._names:
            self._text(self._buffer, events)
            self._buffer = ""
            return False
        if self._at_call_position:
            stripped = self._buffer.lstrip()
            self._space += self._buffer[: len(self._buffer) - len(stripped)]
            self._buffer = stripped
            if not stripped:
                return False
            if stripped[0] in "{[":
                return self._enter(_Mode.BARE, 0)
            if stripped.startswith(FENCE):
                return self._enter(_Mode.FENCED, 0)
            if FENCE.startswith(stripped) or OPEN_TAG.startswith(stripped):
                return False
            if not stripped.startswith(OPEN_TAG):
                self._at_call_position = False
        position = self._buffer.find(OPEN_TAG)
        if position >= 0:
            self._text(self._buffer[:position], events)
            return self._enter(_Mode.TAGGED, position + len(OPEN_TAG))
        hold = partial_suffix(self._buffer, OPEN_TAG)
        self._text(self._buffer[: len(self._buffer) - hold], events)
        self._buffer = self._buffer[len(self._buffer) - hold :]
        return False

    def _step_tagged(self, events: list[Event]) -> bool:
        position = self._buffer.find(CLOSE_TAG, max(0, self._scanned - len(CLOSE_TAG) + 1))
        if position < 0:
            self._scanned = len(self._buffer)
            return False
        body = self._buffer[:position]
        calls = parse_calls(body, self._names)
        if calls:
            self._emit_calls(calls, events)
        else:
            self._text(OPEN_TAG + body + CLOSE_TAG, events)
        return self._resume_text(position + len(CLOSE_TAG), bool(calls))

    def _step_bare(self, events: list[Event]) -> bool:
        end = self._scan_json_end()
        if end is None:
            return False
        candidate = self._buffer[:end]
        calls = parse_calls(candidate, self._names)
        if calls:
            self._emit_calls(calls, events)
        else:
            self._text(candidate, events)
        return self._resume_text(end, bool(calls))

    def _step_fenced(self, events: list[Event]) -> bool:
        newline = self._buffer.find("\n", len(FENCE))
        info_end = len(self._buffer) if newline < 0 else newline
        if info_end > len(FENCE) + MAX_FENCE_INFO:  # however the output was chunked
            return self._not_a_call()
        if newline < 0:
            return False
        body_start = newline + 1
        opening = self._buffer[body_start:].lstrip()
        if not opening:
            return False
        if opening[0] not in "{[":
            return self._not_a_call()
        search_from = max(body_start, self._scanned - len(FENCE) + 1)
        close = self._buffer.find(FENCE, search_from)
        if close < 0:
            self._scanned = len(self._buffer)
            return False
        end = close + len(FENCE)
        calls = parse_calls(self._buffer[body_start:close], self._names)
        if calls:
            self._emit_calls(calls, events)
        else:
            self._text(self._buffer[:end], events)
        return self._resume_text(end, bool(calls))

    def _not_a_call(self) -> bool:
        """A fence that is not JSON: its opening becomes text and scanning goes on as text."""
        self._mode = _Mode.TEXT
        self._at_call_position = False
        return True

    def _resume_text(self, consumed: int, after_call: bool) -> bool:
        self._buffer = self._buffer[consumed:]
        self._mode = _Mode.TEXT
        self._at_call_position = after_call
        return True

    def _scan_json_end(self) -> int | None:
        """Index just past the balanced JSON value at the start of the buffer, or None yet."""
        buffer = self._buffer
        for position in range(self._scanned, len(buffer)):
            char = buffer[position]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return position + 1
        self._scanned = len(buffer)
        return None

    def _text(self, text: str, events: list[Event]) -> None:
        """Emit text, with any whitespace held while a call could still follow."""
        if text:
            events.append(TextDelta(self._space + text, self._index))
            self._space = ""

    def _emit_calls(self, calls: list[ParsedCall], events: list[Event]) -> None:
        self._space = ""  # whitespace around calls is layout, not content
        for name, arguments in calls:
            call_index = self._calls
            self._calls += 1
            events.append(ToolCallStart(call_index, self._new_call_id(), name, self._index))
            events.append(ToolCallDelta(call_index, arguments, self._index))
            events.append(ToolCallEnd(call_index, self._index))

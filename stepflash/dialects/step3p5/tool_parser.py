"""Incremental parser for Step's XML tool calls, streaming each call as it is written.

Step answers with text and calls of the form

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    VALUE
    </parameter>
    </function>
    </tool_call>

This parser turns the answer (the output after the reasoning) into `TextDelta` events and
`ToolCallStart` / `ToolCallDelta` / `ToolCallEnd` events. A call starts as soon as its function
tag is complete; its arguments are streamed as JSON text (`{`, then each parameter, then `}`)
whose fragments join into one JSON object. String values are streamed as they are written;
other values when they end, converted by the tool's JSON schema (see `values`).

Rules this parser decides (FORMATS.md §2 gives the facts, not these details):

* Only declared tools are calls. A block naming any other function stays answer text, as does
  anything malformed before the function tag is complete.
* Repairs, each applied only when the name it hinges on is a declared tool or parameter:
  `<function NAME>` / `<functionNAME>` (no `=`); a function or parameter tag whose `>` is
  missing, ended by the newline or `<` that follows the name; `<function=NAME>` without
  `<tool_call>`; a missing `</parameter>`, `</function>` or `</tool_call>`, closed by the tag
  that comes next.
* When a value ends. Inside a value, tool XML is value text (code payloads contain it). The
  value ends at a `</parameter>` that is followed, after optional whitespace, by a tag that
  may come next in a call (`<parameter=`, `</function>`, `</tool_call>`, `<tool_call>`) or by
  the end of the output. Without its `</parameter>`, it ends at a newline (its own leading one
  included) followed by `<parameter=KEY` for a declared KEY of this tool, by `</function>`
  followed by `</tool_call>` / `<tool_call>` / the end, or by `</tool_call>` followed by
  `<tool_call>` / the end. The format has no escaping, so a payload that itself holds such a
  sequence ends there; anything else is value text. One leading and one trailing newline of
  each value are the template's layout and are dropped.
* Whitespace between text and a call, or after a call, is layout and is dropped; stray text
  between the parameters of a call is dropped.
* End of output. At a natural end (stop token or stop string) an open call is closed with
  what it has. When the output was cut off (`finish(truncated=True)`), a call that had
  started is left unfinished: no `ToolCallEnd`, so it never becomes a call (a non-streaming
  response drops it; a streaming client saw a partial call and `finish_reason: length`), and
  a block whose function tag was not complete yet is released as text.

Each character is examined a bounded number of times: text held back to be looked at again is
never longer than a tag, a tag name and a short run of whitespace, so the parser is linear in
the output length, and any split of the same output into chunks gives the same events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from stepflash.core.events import Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from stepflash.core.request import Tool
from stepflash.dialects.step3p5.values import Schema, is_plain_string, parse_value

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
FUNCTION_OPEN = "<function"
FUNCTION_CLOSE = "</function>"
PARAMETER_OPEN = "<parameter="
PARAMETER_CLOSE = "</parameter>"

MAX_NAME = 128  # a tag whose name runs longer than this is not a tag (tool names are <= 64)
MAX_GAP = 64  # whitespace allowed between two tags of one call when deciding what a tag is

_TAG_END = re.compile(r"[>\n<]")  # a name ends at its `>`, or (repaired) at a newline or `<`
_SPACE = re.compile(r"\s*")
_BLANKS = re.compile(r"[ \t]*")

# What may follow a value's `</parameter>` (after whitespace) for it to end the value.
_AFTER_PARAMETER = (PARAMETER_OPEN, FUNCTION_CLOSE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN)
# What may follow `</function>` / `</tool_call>` when they end a value that lacks `</parameter>`.
_AFTER_FUNCTION = (TOOL_CALL_CLOSE, TOOL_CALL_OPEN)
_AFTER_TOOL_CALL = (TOOL_CALL_OPEN,)
# The tags the body of a call may hold between its parameters.
_BODY_TAGS = (PARAMETER_OPEN, FUNCTION_CLOSE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, FUNCTION_OPEN)


class _State(Enum):
    TEXT = auto()  # answer text
    OPENED = auto()  # after `<tool_call>`, before the function tag
    FUNCTION = auto()  # reading a `<function...` tag
    BODY = auto()  # inside a call, between parameters
    PARAMETER = auto()  # reading a `<parameter=...` tag
    VALUE = auto()  # inside a parameter value
    CLOSED = auto()  # after `</function>`: an optional `</tool_call>` may follow


class _Verdict(Enum):
    YES = auto()
    NO = auto()
    WAIT = auto()  # the text so far cannot tell


@dataclass(slots=True)
class _Call:
    index: int
    properties: dict[str, Schema]
    parameters: int = 0


@dataclass(slots=True)
class _Value:
    schema: Schema | None
    streamed: bool
    started: bool = False  # the leading newline has been dealt with
    before: str = ""  # the character before the buffer: a repaired tag must follow a newline
    scan: int = 0  # buffer position before which no `<` is left undecided
    parts: list[str] = field(default_factory=list)  # the text so far, when not streamed


def _skip(pattern: re.Pattern[str], text: str, position: int = 0, end: int | None = None) -> int:
    """The position just past the run of `pattern` (a `*` pattern) that starts at `position`."""
    found = pattern.match(text, position, len(text) if end is None else end)
    return found.end() if found else position


def _match(text: str, position: int, marker: str, final: bool) -> _Verdict:
    """Whether `marker` starts at `position`; WAIT while the text ends inside a prefix of it."""
    if text.startswith(marker, position):
        return _Verdict.YES
    if not final and _is_partial(text, position, marker):
        return _Verdict.WAIT
    return _Verdict.NO


def _is_partial(text: str, position: int, marker: str) -> bool:
    """Whether the text ends, at `position`, with a proper prefix of `marker`."""
    return len(text) - position < len(marker) and marker.startswith(text[position:])


def _followed_by(text: str, position: int, markers: tuple[str, ...], final: bool) -> _Verdict:
    """Whether, after whitespace, one of `markers` or the end of the output comes next."""
    after = _skip(_SPACE, text, position, position + MAX_GAP + 1)
    if after - position > MAX_GAP:
        return _Verdict.NO
    if after == len(text):
        return _Verdict.YES if final else _Verdict.WAIT
    verdicts = {_match(text, after, marker, final) for marker in markers}
    for verdict in (_Verdict.YES, _Verdict.WAIT):
        if verdict in verdicts:
            return verdict
    return _Verdict.NO


def _properties(tool: Tool) -> dict[str, Schema]:
    properties = tool.parameters.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {key: value if isinstance(value, dict) else {} for key, value in properties.items()}


class ToolCallParser:
    """Answer text in, text and tool-call events out, one chunk at a time."""

    def __init__(
        self, tools: tuple[Tool, ...], new_call_id: Callable[[], str], index: int = 0
    ) -> None:
        self._properties = {tool.name: _properties(tool) for tool in tools}
        self._new_call_id = new_call_id
        self._index = index
        self._state = _State.TEXT
        self._buffer = ""
        self._pending = ""  # an opened block's text, released as text if it is not a call
        self._space = ""  # trailing whitespace of the text, dropped if a call follows it
        self._after_call = False  # whitespace after a call is layout too
        self._calls = 0
        self._call: _Call | None = None
        self._value: _Value | None = None

    @property
    def call_count(self) -> int:
        return self._calls

    def feed(self, text: str) -> list[Event]:
        if not self._properties:
            return [TextDelta(text, self._index)] if text else []
        self._buffer += text
        events: list[Event] = []
        while self._step(events, final=False):
            pass
        return events

    def finish(self, truncated: bool = False) -> list[Event]:
        """End of output; see the module docstring for what happens to an unfinished call."""
        events: list[Event] = []
        if truncated and self._state in (_State.BODY, _State.PARAMETER, _State.VALUE):
            self._call = self._value = None  # left unfinished: it never becomes a call
        else:
            while self._step(events, final=True):
                pass
            if self._state is _State.VALUE:
                self._close_value(len(self._buffer), len(self._buffer), events)
            if self._state in (_State.BODY, _State.PARAMETER):
                self._end_call(events)
        if self._space:
            events.append(TextDelta(self._space, self._index))
        self._state, self._buffer, self._pending, self._space = _State.TEXT, "", "", ""
        return events

    # -- the state machine: each step consumes buffered text, or returns False to wait --

    def _step(self, events: list[Event], final: bool) -> bool:
        match self._state:
            case _State.TEXT:
                return self._step_text(events, final)
            case _State.OPENED:
                return self._step_opened(events, final)
            case _State.FUNCTION:
                return self._step_function(events, final)
            case _State.BODY:
                return self._step_body(events, final)
            case _State.PARAMETER:
                return self._step_parameter(events, final)
            case _State.VALUE:
                return self._step_value(events, final)
            case _State.CLOSED:
                return self._step_closed(final)

    def _step_text(self, events: list[Event], final: bool) -> bool:
        buffer = self._buffer
        position = buffer.find("<")
        while position >= 0:
            if buffer.startswith(TOOL_CALL_OPEN, position):
                self._text(buffer[:position], events)
                self._pending = TOOL_CALL_OPEN
                self._buffer = buffer[position + len(TOOL_CALL_OPEN) :]
                self._state = _State.OPENED
                return True
            if buffer.startswith(FUNCTION_OPEN, position):
                self._text(buffer[:position], events)
                self._buffer = buffer[position:]
                self._state = _State.FUNCTION
                return True
            if not final and (
                _is_partial(buffer, position, TOOL_CALL_OPEN)
                or _is_partial(buffer, position, FUNCTION_OPEN)
            ):
                break
            position = buffer.find("<", position + 1)
        cut = len(buffer) if position < 0 else position
        self._text(buffer[:cut], events)
        self._buffer = buffer[cut:]
        return False

    def _step_opened(self, events: list[Event], final: bool) -> bool:
        buffer = self._buffer
        start = _skip(_SPACE, buffer, 0, MAX_GAP + 1)
        if start > MAX_GAP:
            return self._not_a_call(events, 0)
        if start == len(buffer):
            return self._not_a_call(events, 0) if final else False
        verdict = _match(buffer, start, FUNCTION_OPEN, final)
        if verdict is _Verdict.WAIT:
            return False
        if verdict is _Verdict.NO:
            return self._not_a_call(events, 0)
        self._pending += buffer[:start]
        self._buffer = buffer[start:]
        self._state = _State.FUNCTION
        return True

    def _step_function(self, events: list[Event], final: bool) -> bool:
        """Read `<function=NAME>` (or a repairable variant); only a declared NAME makes a call."""
        buffer = self._buffer
        start = len(FUNCTION_OPEN)
        if len(buffer) == start:
            return self._not_a_call(events, 1) if final else False
        mark = buffer[start]
        if mark == "=":
            start += 1
        elif mark in " \t":
            start = _skip(_BLANKS, buffer, start)
        elif not (mark.isalpha() or mark == "_"):
            return self._not_a_call(events, 1)
        end = _TAG_END.search(buffer, start, start + MAX_NAME + 1)
        if end is None:
            if final or len(buffer) - start > MAX_NAME:
                return self._not_a_call(events, 1)
            return False
        name = buffer[start : end.start()].strip()
        if name not in self._properties:
            return self._not_a_call(events, 1)
        self._buffer = buffer[end.end() if end.group() == ">" else end.start() :]
        self._start_call(name, events)
        return True

    def _step_body(self, events: list[Event], final: bool) -> bool:
        buffer = self._buffer[_skip(_SPACE, self._buffer) :]
        self._buffer = buffer
        if not buffer:
            return False
        if buffer.startswith(PARAMETER_OPEN):
            self._state = _State.PARAMETER
            return True
        if buffer.startswith(FUNCTION_CLOSE):
            self._buffer = buffer[len(FUNCTION_CLOSE) :]
            self._end_call(events)
            self._state = _State.CLOSED
            return True
        if buffer.startswith(TOOL_CALL_CLOSE):  # `</function>` missing
            self._buffer = buffer[len(TOOL_CALL_CLOSE) :]
            self._end_call(events)
            return True
        if buffer.startswith((TOOL_CALL_OPEN, FUNCTION_OPEN)):  # the next call begins
            self._end_call(events)
            return True
        if not final and any(tag.startswith(buffer) for tag in _BODY_TAGS):
            return False
        next_tag = buffer.find("<", 1)  # stray text between parameters is dropped
        self._buffer = buffer[next_tag:] if next_tag > 0 else ""
        return next_tag > 0

    def _step_parameter(self, events: list[Event], final: bool) -> bool:
        buffer = self._buffer
        start = len(PARAMETER_OPEN)
        end = _TAG_END.search(buffer, start, start + MAX_NAME + 1)
        if end is None and not final and len(buffer) - start <= MAX_NAME:
            return False
        assert self._call is not None
        key = buffer[start : end.start()].strip() if end else ""
        complete = end is not None and end.group() == ">"
        if not key or not (complete or key in self._call.properties):
            self._buffer = buffer[1:]  # not a parameter tag: stray text
            self._state = _State.BODY
            return True
        assert end is not None
        self._buffer = buffer[end.end() if complete else end.start() :]
        self._start_value(key, events)
        return True

    def _step_value(self, events: list[Event], final: bool) -> bool:
        value = self._value
        assert value is not None
        buffer = self._buffer
        if not value.started:
            if not buffer:
                return False
            if buffer.startswith("\n"):
                buffer = self._buffer = buffer[1:]
                value.before = "\n"
            value.started = True
        position = buffer.find("<", value.scan)
        while position >= 0:
            before = buffer[position - 1] if position else value.before
            verdict, consumed = self._ends_value(buffer, position, before, final)
            if verdict is _Verdict.YES:
                self._close_value(position, consumed, events)
                return True
            if verdict is _Verdict.WAIT:
                break
            position = buffer.find("<", position + 1)
        cut = len(buffer) if position < 0 else position
        release = cut - 1 if cut and buffer[cut - 1] == "\n" else cut  # maybe the final newline
        self._release(buffer[:release], events)
        if release:
            value.before = buffer[release - 1]
        self._buffer = buffer[release:]
        value.scan = cut - release
        return False

    def _ends_value(
        self, text: str, position: int, before: str, final: bool
    ) -> tuple[_Verdict, int]:
        """Whether the `<` at `position` ends the open value, and where the value's tags end."""
        verdict = _match(text, position, PARAMETER_CLOSE, final)
        if verdict is _Verdict.YES:
            after = position + len(PARAMETER_CLOSE)
            return _followed_by(text, after, _AFTER_PARAMETER, final), after
        if verdict is _Verdict.WAIT or before != "\n":
            return verdict, position
        # Repairs of a missing `</parameter>`: the next tag of the call, on its own line.
        verdict = _match(text, position, PARAMETER_OPEN, final)
        if verdict is _Verdict.YES:
            return self._declared_parameter_at(
                text, position + len(PARAMETER_OPEN), final
            ), position
        for tag, following in (
            (FUNCTION_CLOSE, _AFTER_FUNCTION),
            (TOOL_CALL_CLOSE, _AFTER_TOOL_CALL),
        ):
            tag_verdict = _match(text, position, tag, final)
            if tag_verdict is _Verdict.YES:
                return _followed_by(text, position + len(tag), following, final), position
            if tag_verdict is _Verdict.WAIT:
                verdict = _Verdict.WAIT
        return verdict, position

    def _declared_parameter_at(self, text: str, start: int, final: bool) -> _Verdict:
        end = _TAG_END.search(text, start, start + MAX_NAME + 1)
        if end is None:
            return _Verdict.WAIT if not final and len(text) - start <= MAX_NAME else _Verdict.NO
        assert self._call is not None
        return (
            _Verdict.YES
            if text[start : end.start()].strip() in self._call.properties
            else _Verdict.NO
        )

    def _step_closed(self, final: bool) -> bool:
        buffer = self._buffer[_skip(_SPACE, self._buffer) :]
        self._buffer = buffer
        if not buffer:
            return False
        verdict = _match(buffer, 0, TOOL_CALL_CLOSE, final)
        if verdict is _Verdict.WAIT:
            return False
        if verdict is _Verdict.YES:
            self._buffer = buffer[len(TOOL_CALL_CLOSE) :]
        self._state = _State.TEXT
        return True

    # -- effects --

    def _text(self, text: str, events: list[Event]) -> None:
        """Emit answer text, holding back trailing whitespace while a call could still follow."""
        if self._after_call:
            stripped = text.lstrip()
            if not stripped:
                return
            text, self._after_call = stripped, False
        body = text.rstrip()
        if body:
            events.append(TextDelta(self._space + body, self._index))
            self._space = text[len(body) :]
        else:
            self._space += text

    def _not_a_call(self, events: list[Event], consumed: int) -> bool:
        """The opened block is no call: it and `consumed` characters of the buffer are text."""
        self._text(self._pending + self._buffer[:consumed], events)
        self._pending = ""
        self._buffer = self._buffer[consumed:]
        self._state = _State.TEXT
        return True

    def _start_call(self, name: str, events: list[Event]) -> None:
        self._space = self._pending = ""  # layout around the call
        self._call = _Call(self._calls, self._properties[name])
        self._calls += 1
        events.append(ToolCallStart(self._call.index, self._new_call_id(), name, self._index))
        self._arguments("{", events)
        self._state = _State.BODY

    def _end_call(self, events: list[Event]) -> None:
        assert self._call is not None
        self._arguments("}", events)
        events.append(ToolCallEnd(self._call.index, self._index))
        self._call = None
        self._after_call = True
        self._state = _State.TEXT

    def _start_value(self, key: str, events: list[Event]) -> None:
        assert self._call is not None
        schema = self._call.properties.get(key)
        streamed = is_plain_string(schema)
        separator = ", " if self._call.parameters else ""
        self._call.parameters += 1
        opening = '"' if streamed else ""
        self._arguments(f"{separator}{json.dumps(key, ensure_ascii=False)}: {opening}", events)
        self._value = _Value(schema, streamed)
        self._state = _State.VALUE

    def _release(self, text: str, events: list[Event]) -> None:
        """Value text that is certain: streamed as escaped JSON string text, or kept for later."""
        assert self._value is not None
        if not text:
            return
        if self._value.streamed:
            self._arguments(json.dumps(text, ensure_ascii=False)[1:-1], events)
        else:
            self._value.parts.append(text)

    def _close_value(self, end: int, consumed: int, events: list[Event]) -> None:
        """The value is `buffer[:end]` (its last newline dropped); its tags run to `consumed`."""
        value = self._value
        assert value is not None
        text = self._buffer[:end]
        self._release(text[:-1] if text.endswith("\n") else text, events)
        if value.streamed:
            closing = '"'
        else:
            closing = json.dumps(
                parse_value("".join(value.parts), value.schema), ensure_ascii=False
            )
        self._arguments(closing, events)
        self._buffer = self._buffer[consumed:]
        self._value = None
        self._state = _State.BODY

    def _arguments(self, fragment: str, events: list[Event]) -> None:
        assert self._call is not None
        events.append(ToolCallDelta(self._call.index, fragment, self._index))

"""Split Step's raw output into reasoning and answer, one chunk at a time.

The generation prompt ends inside `<think>\\n`, so the model's output starts as reasoning and
the first `</think>` ends it; whatever follows is the answer (text and tool calls). A `<think>`
the model writes itself at the very start is dropped, with one newline after it, as the
prompt's own is. The model tends to put a newline on each side of `</think>`: one is dropped
from each side. Text that might still be a `</think>`, or the newline in front of one, is held
back until the next chunk decides it, so every split of the same output gives the same
reasoning and the same answer.
"""

from __future__ import annotations

from enum import Enum, auto

from stepflash.core.events import Event, ReasoningDelta, TextDelta
from stepflash.core.stop import partial_suffix

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class _Phase(Enum):
    START = auto()  # deciding whether the output opens with its own `<think>`
    OPENED = auto()  # just after such a `<think>`: one newline belongs to the tag
    REASONING = auto()
    ANSWER_START = auto()  # just after `</think>`: one newline belongs to the tag
    ANSWER = auto()


class ReasoningParser:
    """Raw output text in, `ReasoningDelta` and `TextDelta` events out.

    `forced` (the default, and the only mode of Step 3.7) means the output starts inside the
    reasoning. Without it the output is answer text unless it opens with `<think>`: the mode
    for a prompt that did not open the think block itself.
    """

    def __init__(self, index: int = 0, forced: bool = True) -> None:
        self._index = index
        self._forced = forced
        self._phase = _Phase.START
        self._buffer = ""

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        return self._run(final=False)

    def finish(self) -> list[Event]:
        """End of output: held text is released. Without `</think>` everything was reasoning,
        and a trailing newline is kept, as no `</think>` followed it."""
        return self._run(final=True)

    def _run(self, final: bool) -> list[Event]:
        events: list[Event] = []
        while self._step(events, final):
            pass
        return events

    def _step(self, events: list[Event], final: bool) -> bool:
        """Consume what can be decided now; False when the rest must wait for more text."""
        buffer = self._buffer
        match self._phase:
            case _Phase.START:
                if buffer.startswith(THINK_OPEN):
                    self._buffer = buffer[len(THINK_OPEN) :]
                    self._phase = _Phase.OPENED
                elif THINK_OPEN.startswith(buffer) and not final:
                    return False
                else:
                    self._phase = _Phase.REASONING if self._forced else _Phase.ANSWER
                return True
            case _Phase.OPENED | _Phase.ANSWER_START:
                if not buffer:
                    return False
                self._buffer = buffer.removeprefix("\n")
                opened = self._phase is _Phase.OPENED
                self._phase = _Phase.REASONING if opened else _Phase.ANSWER
                return True
            case _Phase.REASONING:
                return self._step_reasoning(events, final)
            case _Phase.ANSWER:
                self._emit(TextDelta(buffer, self._index), events)
                self._buffer = ""
                return False

    def _step_reasoning(self, events: list[Event], final: bool) -> bool:
        buffer = self._buffer
        end = buffer.find(THINK_CLOSE)
        if end >= 0:
            self._emit(ReasoningDelta(buffer[:end].removesuffix("\n"), self._index), events)
            self._buffer = buffer[end + len(THINK_CLOSE) :]
            self._phase = _Phase.ANSWER_START
            return True
        cut = len(buffer) if final else len(buffer) - partial_suffix(buffer, THINK_CLOSE)
        if not final and cut and buffer[cut - 1] == "\n":
            cut -= 1  # it is dropped if `</think>` comes next
        self._emit(ReasoningDelta(buffer[:cut], self._index), events)
        self._buffer = buffer[cut:]
        return False

    @staticmethod
    def _emit(event: ReasoningDelta | TextDelta, events: list[Event]) -> None:
        if event.text:
            events.append(event)

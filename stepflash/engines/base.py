"""What every engine offers the rest of stepflash: a request in, canonical events out."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from stepflash.core.events import Event
from stepflash.core.request import ChatRequest


class Engine(Protocol):
    kind: str
    model_name: str

    @property
    def context_length(self) -> int: ...

    @property
    def busy(self) -> int:
        """Requests running or queued on this engine."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        """Events of all choices, then one `Usage`; request errors raise before the first event."""
        ...

    def close(self) -> None: ...

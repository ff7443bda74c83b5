"""What every engine offers the rest of stepflash: a request in, canonical events out."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from stepflash.core.events import Event
from stepflash.core.request import ChatRequest, MediaKind


class Engine(Protocol):
    kind: str
    model_name: str
    media: frozenset[MediaKind]  # the media parts it can take besides text

    @property
    def context_length(self) -> int: ...

    @property
    def busy(self) -> int:
        """Requests running or queued on this engine."""
        ...

    @property
    def available(self) -> bool:
        """Whether the engine can take a request now (a router with no healthy replica cannot)."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        """Events of all choices, then one `Usage`; request errors raise before the first event."""
        ...

    async def count_prompt_tokens(self, request: ChatRequest) -> int:
        """The prompt's token count as this engine renders and tokenizes it."""
        ...

    async def start(self) -> None:
        """Begin background work (health checks); called once the event loop runs."""
        ...

    async def aclose(self) -> None: ...

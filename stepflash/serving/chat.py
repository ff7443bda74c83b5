"""The chat pipeline between protocol decoders and encoders: model lookup, checks, media,
engine, and metering (settling what the stream used when it ends).

`open_stream` pulls the first event before returning, so anything that fails before output
(unknown model, context overflow, a full queue) is raised while the caller can still get a
real HTTP status instead of an error buried in a 200 stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from stepflash.config import LimitSettings
from stepflash.core.events import Event, Usage
from stepflash.core.request import ChatRequest
from stepflash.media.prepare import FileReader, MediaPreparer
from stepflash.serving.catalog import ModelCatalog, ServedModel
from stepflash.serving.validation import validate


class Meter(Protocol):
    """What a billed request does when its stream ends (see `stepflash.gate.gate.Admission`)."""

    async def settle(self, model: str, usage: Usage | None, media_tokens: int) -> None: ...

    def release(self) -> None: ...


@dataclass(slots=True)
class OpenedStream:
    """An engine stream whose first event has already arrived.

    With a meter, the stream settles its usage after the last event and before it ends, so
    whatever the encoder sends last (`[DONE]`, `message_stop`, the whole body) follows a
    durable charge; a stream that fails or is abandoned releases the reservation instead.
    """

    model: ServedModel
    request: ChatRequest  # as the engine got it: media prepared and counted
    _first: Event | None
    _rest: AsyncGenerator[Event, None]
    meter: Meter | None = None

    async def __aiter__(self) -> AsyncIterator[Event]:
        usage: Usage | None = None
        try:
            if self._first is not None:
                yield self._first
                usage = self._first if isinstance(self._first, Usage) else None
            async for event in self._rest:
                if isinstance(event, Usage):  # one per request, as engines promise
                    usage = event
                yield event
            if self.meter is not None:
                await self.meter.settle(self.model.id, usage, self.request.media_tokens())
        finally:
            if self.meter is not None:
                self.meter.release()  # does nothing after a settlement
            await self.aclose()

    async def aclose(self) -> None:
        await self._rest.aclose()


class ChatService:
    def __init__(self, catalog: ModelCatalog, limits: LimitSettings, media: MediaPreparer) -> None:
        self.catalog = catalog
        self._limits = limits
        self._media = media

    async def _admit(
        self, request: ChatRequest, files: FileReader | None
    ) -> tuple[ServedModel, ChatRequest]:
        """The model that serves the request, and the request checked and its media prepared
        (`files`: the caller's uploads, for `stepfile://` URLs)."""
        model = self.catalog.get(request.model)
        validate(request, self._limits, model.engine.media)
        return model, await self._media.prepare(request, model.image_detail, files)

    async def count_prompt_tokens(
        self, request: ChatRequest, files: FileReader | None = None
    ) -> int:
        model, request = await self._admit(request, files)
        return await model.engine.count_prompt_tokens(request)

    async def open_stream(
        self, request: ChatRequest, meter: Meter | None = None, files: FileReader | None = None
    ) -> OpenedStream:
        """Start the engine; on any failure before the first event, release `meter`."""
        try:
            model, request = await self._admit(request, files)
            events = model.engine.stream(request)
        except BaseException:
            if meter is not None:
                meter.release()
            raise
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        except BaseException:
            if meter is not None:
                meter.release()
            await events.aclose()
            raise
        return OpenedStream(model, request, first, events, meter)

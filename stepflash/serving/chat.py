"""The chat pipeline between protocol decoders and encoders: model lookup, checks, media,
engine.

`open_stream` pulls the first event before returning, so anything that fails before output
(unknown model, context overflow, a full queue) is raised while the caller can still get a
real HTTP status instead of an error buried in a 200 stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from stepflash.config import LimitSettings
from stepflash.core.events import Event
from stepflash.core.request import ChatRequest
from stepflash.media.prepare import MediaPreparer
from stepflash.serving.catalog import ModelCatalog, ServedModel
from stepflash.serving.validation import validate


@dataclass(slots=True)
class OpenedStream:
    """An engine stream whose first event has already arrived."""

    model: ServedModel
    request: ChatRequest  # as the engine got it: media prepared and counted
    _first: Event | None
    _rest: AsyncGenerator[Event, None]

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            if self._first is not None:
                yield self._first
            async for event in self._rest:
                yield event
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._rest.aclose()


class ChatService:
    def __init__(self, catalog: ModelCatalog, limits: LimitSettings, media: MediaPreparer) -> None:
        self.catalog = catalog
        self._limits = limits
        self._media = media

    async def _admit(self, request: ChatRequest) -> tuple[ServedModel, ChatRequest]:
        """The model that serves the request, and the request checked and its media prepared."""
        model = self.catalog.get(request.model)
        validate(request, self._limits, model.engine.media)
        return model, await self._media.prepare(request, model.image_detail)

    async def count_prompt_tokens(self, request: ChatRequest) -> int:
        model, request = await self._admit(request)
        return await model.engine.count_prompt_tokens(request)

    async def open_stream(self, request: ChatRequest) -> OpenedStream:
        model, request = await self._admit(request)
        events = model.engine.stream(request)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await events.aclose()
            raise
        return OpenedStream(model, request, first, events)

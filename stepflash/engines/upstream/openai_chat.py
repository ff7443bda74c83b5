"""One replica of an OpenAI-compatible chat upstream (SGLang, vLLM, StepFun, OpenRouter).

The upstream runs the Step parsers itself; we turn its chunks (or, for a caller that does
not stream, its whole answer) into canonical events and take usage from what it reports.
Only when it reports none (a stream cut short) do we count the chunks we delivered, so the
tokens the caller received are still accounted.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import aiohttp

from stepflash.core.events import Event, Usage
from stepflash.core.request import ChatRequest, MediaKind
from stepflash.engines.upstream.transport import (
    StreamCut,
    UpstreamTimeouts,
    UpstreamUnavailable,
    fetch_json,
    fetch_token_count,
    open_event_stream,
)
from stepflash.protocol.openai_client import (
    ChunkDecoder,
    EffortPassing,
    encode_request,
    whole_as_chunk,
)


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where and how to reach one replica."""

    url: str
    upstream_model: str
    api_key: str | None
    timeouts: UpstreamTimeouts

    @property
    def tokenize_url(self) -> str:
        """vLLM, SGLang and llama.cpp serve `/tokenize` at the server root, beside `/v1`."""
        return self.url.removesuffix("/v1") + "/tokenize"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class OpenAIChatReplica:
    kind = "openai"

    def __init__(
        self,
        target: UpstreamTarget,
        session: aiohttp.ClientSession,
        effort: EffortPassing,
        context_length: int,
        media: frozenset[MediaKind] = frozenset(MediaKind),
    ) -> None:
        self.target = target
        self.model_name = target.upstream_model
        self.context_length = context_length
        self.media = media
        self._session = session
        self._effort = effort

    async def count_prompt_tokens(self, request: ChatRequest) -> int:
        """The upstream renders the chat template, so it counts the text (vLLM's chat tokenize
        body); the prepared media parts carry their own Step-geometry token counts."""
        chat = encode_request(request.text_only(), self.target.upstream_model, self._effort)
        keys = ("model", "messages", "tools", "chat_template_kwargs")
        body = {key: chat[key] for key in keys if key in chat}
        body["add_generation_prompt"] = True
        target = self.target
        text_tokens = await fetch_token_count(
            self._session, target.tokenize_url, body, target.headers, target.timeouts
        )
        return text_tokens + request.media_tokens()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        body = encode_request(request, self.target.upstream_model, self._effort)
        decoder = ChunkDecoder()
        url = f"{self.target.url}/chat/completions"
        target = self.target
        if not request.stream:
            answer = await fetch_json(self._session, url, body, target.headers, target.timeouts)
            for event in decoder.decode(whole_as_chunk(answer)):
                yield event
            yield decoder.usage or Usage(0, decoder.delivered_chunks)
            return
        try:
            async with open_event_stream(
                self._session, url, body, target.headers, target.timeouts
            ) as payloads:
                async for payload in payloads:
                    for event in decoder.decode(payload):
                        yield event
        except UpstreamUnavailable as error:
            if decoder.delivered_chunks:
                delivered = decoder.usage or Usage(0, decoder.delivered_chunks)
                raise StreamCut(str(error), delivered) from error
            raise
        yield decoder.usage or Usage(0, decoder.delivered_chunks)

"""One replica of a raw text-completion upstream (llama.cpp's server, an engine without parsers).

Such a server knows nothing of chat, reasoning or tools: stepflash renders the Step 3.7
prompt itself and reads the raw output with its own `step3p5` dialect, so the caller sees
the same reasoning, content and tool calls as from an engine with the Step parsers built in.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from stepflash.core.events import Event, Finish, FinishReason, ToolCallEnd, Usage
from stepflash.core.request import ChatRequest, ImagePart, MediaKind
from stepflash.dialects.step3p5 import Step3p5OutputParser
from stepflash.dialects.step3p5.template import BOS, IMAGE_PLACEHOLDER, render_prompt
from stepflash.engines.upstream.openai_chat import UpstreamTarget
from stepflash.engines.upstream.transport import (
    Payload,
    StreamCut,
    UpstreamUnavailable,
    fetch_json,
    fetch_token_count,
    open_event_stream,
)
from stepflash.protocol.openai_client import decode_usage, matched_stop, sampling_fields


def _new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _inline_images(request: ChatRequest) -> list[str]:
    """The base64 payload of every image, in prompt order (prepared parts are data URLs)."""
    return [
        part.url.partition(",")[2]
        for message in request.messages
        for part in message.parts
        if isinstance(part, ImagePart)
    ]


class _Choice:
    """The dialect parser of one choice, and whether it produced a call."""

    def __init__(self, request: ChatRequest, index: int) -> None:
        self.index = index
        self.parser = Step3p5OutputParser(request.offered_tools, _new_call_id, index)
        self.called = False
        self.finished = False

    def feed(self, text: str) -> list[Event]:
        return self._note(self.parser.feed(text))

    def finish(self, reason: str | None, stop_sequence: str | None = None) -> list[Event]:
        self.finished = True
        events = self._note(self.parser.finish(truncated=reason == "length"))
        if self.called:
            finish = FinishReason.TOOL_CALLS
        elif reason == "length":
            finish = FinishReason.LENGTH
        else:
            finish = FinishReason.STOP
        return [*events, Finish(finish, self.index, None if self.called else stop_sequence)]

    def _note(self, events: list[Event]) -> list[Event]:
        self.called = self.called or any(isinstance(e, ToolCallEnd) for e in events)
        return events


class CompletionsReplica:
    kind = "completions"

    def __init__(
        self,
        target: UpstreamTarget,
        session: aiohttp.ClientSession,
        context_length: int,
        write_bos: bool = False,
        media: frozenset[MediaKind] = frozenset(),
        image_placeholder: str = IMAGE_PLACEHOLDER,
    ) -> None:
        self.target = target
        self.model_name = target.upstream_model
        self.context_length = context_length
        self.media = media
        self._session = session
        # Servers tokenize the prompt with special tokens, adding BOS themselves.
        self._bos = BOS if write_bos else ""
        self._image_placeholder = image_placeholder

    def _prompt(self, request: ChatRequest, image_placeholder: str | None = None) -> str:
        return render_prompt(
            request.messages,
            request.offered_tools,
            request.effort,
            bos=self._bos,
            image_placeholder=self._image_placeholder
            if image_placeholder is None
            else image_placeholder,
        )

    async def count_prompt_tokens(self, request: ChatRequest) -> int:
        """Text tokens of the prompt rendered without image markers, plus each prepared
        image's Step-geometry tokens (the server's processor expands a marker into those)."""
        prompt = self._prompt(request, image_placeholder="")
        # llama.cpp's server reads `content`, vLLM's `prompt`; each ignores the other.
        body = {"model": self.target.upstream_model, "content": prompt, "prompt": prompt}
        target = self.target
        text_tokens = await fetch_token_count(
            self._session, target.tokenize_url, body, target.headers, target.timeouts
        )
        return text_tokens + request.media_tokens()

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The raw prompt; with images, llama.cpp's multimodal prompt object around it."""
        prompt: Any = self._prompt(request)
        images = _inline_images(request)
        if images:
            prompt = {"prompt_string": prompt, "multimodal_data": images}
        return {"model": self.target.upstream_model, "prompt": prompt, **sampling_fields(request)}

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        choices: dict[int, _Choice] = {}
        usage: Usage | None = None
        delivered = 0
        url = f"{self.target.url}/completions"
        target, body = self.target, self._body(request)

        def read(payload: Payload) -> list[Event]:
            nonlocal usage, delivered
            events: list[Event] = []
            for item in payload.get("choices") or ():
                index = int(item.get("index") or 0)
                choice = choices.setdefault(index, _Choice(request, index))
                events += choice.feed(item.get("text") or "")
                if item.get("finish_reason"):
                    events += choice.finish(item["finish_reason"], matched_stop(item))
                delivered += bool(item.get("text"))
            if payload.get("usage"):
                usage = decode_usage(payload["usage"])
            return events

        try:
            if not request.stream:
                answer = await fetch_json(self._session, url, body, target.headers, target.timeouts)
                for event in read(answer):
                    yield event
            else:
                async with open_event_stream(
                    self._session, url, body, target.headers, target.timeouts
                ) as payloads:
                    async for payload in payloads:
                        for event in read(payload):
                            yield event
        except UpstreamUnavailable as error:
            if delivered:
                raise StreamCut(str(error), usage or Usage(0, delivered)) from error
            raise
        for choice in choices.values():
            if not choice.finished:
                for event in choice.finish(None):
                    yield event
        yield usage or Usage(0, delivered)

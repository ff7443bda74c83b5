"""One streamed chat completion, timed: first token, every chunk after it, the end.

Parsing is deliberately minimal (split SSE lines, decode JSON only for chunks that carry
content or usage) so that a single core can drive thousands of streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class RequestResult:
    started: float
    ended: float = 0.0
    first_token: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    usage_reported: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.first_token is not None

    @property
    def ttft(self) -> float:
        assert self.first_token is not None
        return self.first_token - self.started

    @property
    def latency(self) -> float:
        return self.ended - self.started

    @property
    def time_per_output_token(self) -> float | None:
        """(end - first token) / (tokens - 1): the decode pace after the first token."""
        if self.first_token is None or self.output_tokens < 2:
            return None
        return (self.ended - self.first_token) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Endpoint:
    url: str  # .../v1/chat/completions
    model: str
    headers: dict[str, str]
    extra_body: dict[str, Any]


def request_body(endpoint: Endpoint, messages: list[dict[str, Any]], max_tokens: int) -> bytes:
    body = {
        "model": endpoint.model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **endpoint.extra_body,
    }
    return orjson.dumps(body)


def _has_text(delta: dict[str, Any]) -> bool:
    return any(delta.get(key) for key in ("content", "reasoning_content", "reasoning"))


async def stream_one(
    session: aiohttp.ClientSession, endpoint: Endpoint, body: bytes
) -> RequestResult:
    result = RequestResult(started=time.perf_counter())
    chunks_with_text = 0
    try:
        async with session.post(endpoint.url, data=body, headers=endpoint.headers) as response:
            if response.status != 200:
                text = (await response.content.read(500)).decode(errors="replace")
                result.error = f"HTTP {response.status}: {text}"
                return result
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                chunk = orjson.loads(payload)
                now = time.perf_counter()
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    result.usage_reported = True
                    result.output_tokens = int(usage.get("completion_tokens") or 0)
                    result.prompt_tokens = usage.get("prompt_tokens")
                for choice in chunk.get("choices") or ():
                    if _has_text(choice.get("delta") or {}):
                        chunks_with_text += 1
                        if result.first_token is None:
                            result.first_token = now
                        result.chunk_times.append(now)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        result.ended = time.perf_counter()
    if not result.usage_reported:
        result.output_tokens = chunks_with_text  # one token per chunk: an estimate
    if result.error is None and result.first_token is None:
        result.error = "the stream ended without any token"
    return result

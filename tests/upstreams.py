"""Scripted stand-ins for GPU engines: small servers that replay Step-format output.

They behave like SGLang and vLLM started with the Step 3.7 parsers (`--reasoning-parser
step3p5 --tool-call-parser step3p5`): reasoning in `reasoning_content` (SGLang) or
`reasoning` (vLLM), tool calls as OpenAI deltas, usage with cached tokens where each engine
reports them. Faults are injected per server: 500s, stalls, streams cut mid-way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port
from tests.threaded_server import ThreadedServer


@dataclass
class Script:
    """One recorded answer, already split the way the engine streams it."""

    reasoning: list[str] = field(
        default_factory=lambda: ["The user greets me", ". I should greet back", " briefly."]
    )
    content: list[str] = field(default_factory=lambda: ["Hello", "! How can I", " help?"])
    tool_calls: list[tuple[str, list[str]]] = field(default_factory=list)  # name, arg fragments
    finish: str = "stop"
    matched_stop: str | None = None  # vLLM reports it as `stop_reason`
    prompt_tokens: int = 812
    cached_tokens: int = 768
    completion_tokens: int = 23


WEATHER_CALL = Script(
    reasoning=["I need the weather", " for Paris."],
    content=[],
    tool_calls=[("get_weather", ['{"city": ', '"Paris"', ', "unit": "c"}'])],
    finish="tool_calls",
    completion_tokens=31,
)


RAW_TOOL_CALL = (
    "The user wants the weather in Paris for three days. I'll call the tool.\n</think>\n\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)
RAW_MALFORMED_CALL = (  # `<function NAME>` without `=`, and no `</parameter>`: both repairable
    "Call it.\n</think>\n\n<tool_call>\n<function get_weather>\n<parameter=city>\nOslo\n"
    "</function>\n</tool_call>"
)
RAW_TRUNCATED = "Let me check.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=ci"
RAW_TEXT = "A greeting; answer kindly.\n</think>\nHello! How can I help?"


@dataclass
class RawScript:
    """Raw Step-format text as an engine without parsers returns it, split into chunks."""

    text: str = RAW_TEXT
    finish: str = "stop"
    chunk_chars: int = 3


@dataclass
class ScriptedUpstream:
    flavour: str = "sglang"  # sglang | vllm
    script: Script = field(default_factory=Script)
    raw: RawScript = field(default_factory=RawScript)
    mode: str = "ok"  # ok | error500 | error400 | stall | cut | slow
    delay: float = 0.0
    # Chooses the answer from the request (a scripted agent turn); else `script` is replayed.
    responder: Callable[[dict[str, Any]], Script] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    hold_seconds: float = 0.0  # each chat request waits this long before it is answered
    in_flight: int = 0  # chat requests waiting or being answered, and the most there ever were
    max_in_flight: int = 0
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- the server ------------------------------------------------------------------------

    def start(self) -> ScriptedUpstream:
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models),
                Route("/tokenize", self._tokenize, methods=["POST"]),
            ]
        )
        self._server = ThreadedServer(app, self.port, "scripted upstream")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    async def _tokenize(self, request: Request) -> Response:
        """vLLM's chat form answers `count`; a raw prompt gets llama.cpp's `tokens` list."""
        body = await request.json()
        self.requests.append(body)
        if "messages" in body:
            return JSONResponse({"count": len(json.dumps(body["messages"])) // 4})
        return JSONResponse({"tokens": list(range(len(body["content"]) // 3))})

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "stepfun-ai/Step-3.7-Flash"}]})

    async def _chat(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.hold_seconds)
            return await self._answer_chat(request)
        finally:
            self.in_flight -= 1

    async def _answer_chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "error500":
            return JSONResponse({"error": {"message": "CUDA out of memory"}}, status_code=500)
        if self.mode == "error400":
            return JSONResponse(
                {"error": {"message": "max_tokens is too large for this engine"}}, status_code=400
            )
        if self.mode == "stall":
            await asyncio.sleep(30)
        if not body.get("stream"):
            return JSONResponse(self._whole(self._script_for(body)))
        return StreamingResponse(
            self._events(body, self._script_for(body)), media_type="text/event-stream"
        )

    def _script_for(self, body: dict[str, Any]) -> Script:
        return self.responder(body) if self.responder else self.script

    def _whole(self, script: Script) -> dict[str, Any]:
        """The same recorded answer, as a non-streamed response body."""
        reasoning_field = "reasoning_content" if self.flavour == "sglang" else "reasoning"
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(script.content) or None,
            reasoning_field: "".join(script.reasoning),
        }
        if script.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_up_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": "".join(fragments)},
                }
                for i, (name, fragments) in enumerate(script.tool_calls)
            ]
        return {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": 1,
            "model": "stepfun-ai/Step-3.7-Flash",
            "usage": self._usage(script),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": script.finish,
                    "stop_reason": script.matched_stop,
                }
            ],
        }

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "error500":
            return JSONResponse({"error": {"message": "slot unavailable"}}, status_code=500)
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "cmpl-raw",
                    "object": "text_completion",
                    "created": 1,
                    "model": "x",
                    "choices": [
                        {"index": 0, "text": self.raw.text, "finish_reason": self.raw.finish}
                    ],
                    "usage": self._raw_usage(1),
                }
            )
        return StreamingResponse(self._raw_events(), media_type="text/event-stream")

    @staticmethod
    def _raw_usage(completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": 1500,
            "completion_tokens": completion_tokens,
            "total_tokens": 1500 + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 1024},
        }

    async def _raw_events(self) -> AsyncIterator[bytes]:
        raw = self.raw
        pieces = [
            raw.text[i : i + raw.chunk_chars] for i in range(0, len(raw.text), raw.chunk_chars)
        ]
        for number, piece in enumerate(pieces):
            last = number == len(pieces) - 1
            chunk = {
                "id": "cmpl-raw",
                "object": "text_completion",
                "created": 1,
                "model": "x",
                "choices": [
                    {"index": 0, "text": piece, "finish_reason": raw.finish if last else None}
                ],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        usage = {
            "prompt_tokens": 1500,
            "completion_tokens": len(pieces),
            "total_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 1024},
        }
        chunk = {
            "id": "cmpl-raw",
            "object": "text_completion",
            "created": 1,
            "model": "x",
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    # -- the stream --------------------------------------------------------------------------

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, stop: str | None = None
    ) -> bytes:
        chunk = {
            "id": "chatcmpl-upstream",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "stepfun-ai/Step-3.7-Flash",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "stop_reason": stop}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def _usage(self, script: Script) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": script.prompt_tokens,
            "completion_tokens": script.completion_tokens,
            "total_tokens": script.prompt_tokens + script.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
        }
        if self.flavour == "sglang":
            usage["completion_tokens_details"] = {"reasoning_tokens": 9}
        return usage

    async def _events(self, body: dict[str, Any], script: Script) -> AsyncIterator[bytes]:
        reasoning_field = "reasoning_content" if self.flavour == "sglang" else "reasoning"
        sent = 0
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            for piece in script.reasoning:
                yield self._chunk({reasoning_field: piece})
                sent += 1
                await asyncio.sleep(self.delay)
                if self.mode == "cut" and sent == 2:
                    raise ConnectionAbortedError("scripted cut")
            for piece in script.content:
                yield self._chunk({"content": piece})
                await asyncio.sleep(self.delay)
            for index, (name, fragments) in enumerate(script.tool_calls):
                yield self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": f"call_up_{index}",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
                for fragment in fragments:
                    yield self._chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "function": {"arguments": fragment},
                                }
                            ]
                        }
                    )
            yield self._chunk({}, finish=script.finish, stop=script.matched_stop)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage_chunk = {
                    "id": "chatcmpl-upstream",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "x",
                    "choices": [],
                    "usage": self._usage(script),
                }
                yield f"data: {json.dumps(usage_chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

"""An OpenAI-compatible streaming upstream with a fixed pace: TTFT, then one token every ITL.

Used to check load generators against a known truth: with --ttft-ms 50 --itl-ms 5 and 64
output tokens, every request takes 50 + 63 x 5 ms, so TTFT, inter-token latency and the
throughput at concurrency C (C / 0.365 s requests per second) are known in advance. With
zero delays it is a fast upstream for measuring how many requests a client can drive.

Honours max_tokens or max_completion_tokens, string or list-of-parts content, and
stream_options.include_usage (prompt tokens: whitespace-separated words). Serves GET
/health and /v1/models.

    python benchmarks/paced_upstream.py --port 9200 --ttft-ms 50 --itl-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import uvicorn

MODEL = "paced"


def _prompt_words(request: dict[str, Any]) -> int:
    words = 0
    for message in request.get("messages") or ():
        content = message.get("content")
        parts = (
            [content]
            if isinstance(content, str)
            else [part.get("text", "") for part in content or () if isinstance(part, dict)]
        )
        words += sum(len(str(part).split()) for part in parts)
    return words


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None) -> bytes:
    return _event(
        {
            "id": "chatcmpl-paced",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


async def _read_json(receive: Any) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return json.loads(b"".join(chunks) or b"{}")


async def _send(send: Any, status: int, body: bytes, kind: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_app(ttft: float, itl: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.endswith("/health"):
            await _send(send, 200, b'{"status":"ok"}', b"application/json")
            return
        if path.endswith("/models"):
            models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            await _send(send, 200, json.dumps(models).encode(), b"application/json")
            return
        request = await _read_json(receive)
        count = int(request.get("max_completion_tokens") or request.get("max_tokens") or 16)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        if ttft:
            await asyncio.sleep(ttft)
        started = time.perf_counter()
        for index in range(count):
            if itl and index:
                # an absolute schedule, so per-token overhead never accumulates
                delay = started + index * itl - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            delta = {"content": f" w{index}"}
            if index == 0:
                delta["role"] = "assistant"
            finish = "length" if index == count - 1 else None
            await send(
                {"type": "http.response.body", "body": _chunk(delta, finish), "more_body": True}
            )
        tail = b""
        if (request.get("stream_options") or {}).get("include_usage"):
            prompt = _prompt_words(request)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": count,
                "total_tokens": prompt + count,
            }
            tail = _event(
                {
                    "id": "chatcmpl-paced",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": MODEL,
                    "choices": [],
                    "usage": usage,
                }
            )
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.ttft_ms / 1000, args.itl_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )

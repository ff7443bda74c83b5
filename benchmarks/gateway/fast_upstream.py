"""A deliberately fast OpenAI-compatible upstream: 64 tokens per answer, no model.

A bare ASGI app (no framework) so that the upstream is never the bottleneck when measuring
what a gateway in front of it costs. Streams one chunk per token, then usage and [DONE].

    python benchmarks/gateway/fast_upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn

TOKENS = 64
WORDS = [f" tok{i}" for i in range(TOKENS)]
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": TOKENS,
    "total_tokens": 20 + TOKENS,
    "prompt_tokens_details": {"cached_tokens": 0},
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fast",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fast",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


STREAM_BODY = [
    _chunk({"role": "assistant", "content": ""}),
    *(_chunk({"content": word}) for word in WORDS),
    _chunk({}, "stop"),
    b"data: "
    + json.dumps(
        {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1,
         "model": "fast", "choices": [], "usage": USAGE}
    ).encode()
    + b"\n\n",
    b"data: [DONE]\n\n",
]
WHOLE_BODY = json.dumps(
    {
        "id": "chatcmpl-fast",
        "object": "chat.completion",
        "created": 1,
        "model": "fast",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                     "finish_reason": "stop"}],
        "usage": USAGE,
    }
).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]}).encode()


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/models"):
        await _send_whole(send, MODELS)
        return
    request = json.loads(await _read_body(receive) or b"{}")
    if not request.get("stream"):
        await _send_whole(send, WHOLE_BODY)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for piece in STREAM_BODY:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_whole(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error", access_log=False)

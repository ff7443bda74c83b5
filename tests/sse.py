"""A strict reader for OpenAI-style SSE streams: every frame must be well formed and ordered."""

from __future__ import annotations

import json
from typing import Any

import httpx


def parse_sse(text: str) -> list[dict[str, Any] | str]:
    """Frames in order; raises on anything that is not `data: ...` followed by a blank line."""
    frames: list[dict[str, Any] | str] = []
    assert text.endswith("\n\n"), "the stream must end on a frame boundary"
    for block in text.split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 1 and lines[0].startswith("data: "), f"bad frame {block!r}"
        payload = lines[0].removeprefix("data: ")
        frames.append(payload if payload == "[DONE]" else json.loads(payload))
    return frames


def check_chat_chunks(frames: list[dict[str, Any] | str]) -> list[dict[str, Any]]:
    """Chunks must share one id, end with [DONE], and finish each choice exactly once, last."""
    assert frames and frames[-1] == "[DONE]", "a successful stream ends with [DONE]"
    chunks = [frame for frame in frames[:-1] if isinstance(frame, dict)]
    assert len(chunks) == len(frames) - 1
    assert len({chunk["id"] for chunk in chunks}) == 1
    finished: set[int] = set()
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        for choice in chunk["choices"]:
            assert choice["index"] not in finished, "no deltas after a choice finished"
            if choice["finish_reason"] is not None:
                finished.add(choice["index"])
        if "usage" in chunk and chunk["usage"] is not None:
            assert chunk["choices"] == [] and chunk is chunks[-1], "usage comes last, alone"
    assert finished, "every stream finishes its choices"
    return chunks


def collect_stream(api: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{api}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return check_chat_chunks(parse_sse(response.text))

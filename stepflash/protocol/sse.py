"""Server-sent events framing, shared by every streaming protocol."""

from __future__ import annotations

from typing import Any

import orjson


def sse_event(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    prefix = f"event: {event}\n".encode() if event else b""
    return prefix + b"data: " + payload + b"\n\n"

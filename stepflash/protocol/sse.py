"""Server-sent events framing, shared by every streaming protocol."""

from __future__ import annotations

import json
from typing import Any


def sse_event(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()

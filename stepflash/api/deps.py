"""Shared pieces the routers take from the application state."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from stepflash.core.request import MediaKind
from stepflash.serving.chat import ChatService, OpenedStream


def chat_service(request: Request) -> ChatService:
    """Called directly, not through Depends: dependency injection costs on the hot path."""
    return request.app.state.chat


def backend_headers(opened: OpenedStream) -> dict[str, str]:
    """Say plainly which backend answered, whether it stands in for another model, and what
    the request's images and videos cost in prompt tokens."""
    model = opened.model
    headers = {"x-stepflash-backend": model.backend}
    for kind in MediaKind:
        tokens = opened.request.media_tokens(kind)
        if tokens:
            headers[f"x-stepflash-{kind.value}-tokens"] = str(tokens)
    if model.stand_in_for:
        headers["x-stepflash-stand-in-for"] = model.stand_in_for
    if model.routed_from:
        headers["x-stepflash-routed-to"] = model.id
    return headers


class FastJSONResponse(JSONResponse):
    """A JSON response rendered by orjson: several times faster on completion bodies."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

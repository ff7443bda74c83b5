"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's API over the one event stream."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from stepflash.api.body import body_schema, parse_body
from stepflash.api.deps import FastJSONResponse, backend_headers, chat_service
from stepflash.api.disconnect import ClientDisconnected, cancel_on_disconnect
from stepflash.api.heartbeat import with_heartbeat
from stepflash.core.completion import accumulate
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.protocol import anthropic
from stepflash.protocol.signature import ThinkingSigner
from stepflash.protocol.sse import sse_event
from stepflash.serving.chat import OpenedStream

log = logging.getLogger(__name__)
router = APIRouter(tags=["messages"])

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in {
        400: "Invalid request parameters",
        404: "Unknown model",
        413: "Request body too large",
        503: "Engine queue full; retry after the Retry-After header",
    }.items()
}


def _signer(request: Request) -> ThinkingSigner:
    return request.app.state.thinking_signer


async def _sse(
    encoder: anthropic.MessagesEncoder, stream: OpenedStream, ping_seconds: float
) -> AsyncIterator[bytes]:
    try:
        async for name, data in encoder.stream(with_heartbeat(aiter(stream), ping_seconds)):
            yield sse_event(data, name)
    except StepflashError as error:
        yield sse_event(anthropic.error_body(error), "error")
    except Exception:
        log.exception("stream failed after it started")
        failure = StepflashError(ErrorKind.INTERNAL, "the stream failed")
        yield sse_event(anthropic.error_body(failure), "error")


@router.post(
    "/messages",
    responses=ERROR_RESPONSES,
    response_model=None,
    openapi_extra=body_schema(anthropic.MessagesRequest),
)
async def create_message(request: Request) -> Response:
    body = await parse_body(request, anthropic.MessagesRequest)
    message_id = f"msg_{secrets.token_hex(12)}"
    encoder = anthropic.MessagesEncoder(body, message_id, _signer(request))
    try:
        async with cancel_on_disconnect(request):
            canonical = anthropic.decode(body, _signer(request))
            stream = await chat_service(request).open_stream(canonical)
            headers = {**backend_headers(stream.model), "request-id": message_id}
            if body.stream:
                ping_seconds = request.app.state.settings.anthropic_ping_seconds
                return StreamingResponse(
                    _sse(encoder, stream, ping_seconds),
                    media_type="text/event-stream",
                    headers=headers,
                )
            completion = await accumulate(aiter(stream))
    except ClientDisconnected:
        return Response(status_code=499)
    return FastJSONResponse(encoder.body(completion), headers=headers)


@router.post(
    "/messages/count_tokens",
    responses=ERROR_RESPONSES,
    response_model=None,
    openapi_extra=body_schema(anthropic.CountTokensRequest),
)
async def count_tokens(request: Request) -> Response:
    """The prompt's real token count, as the serving engine tokenizes its rendered prompt."""
    body = await parse_body(request, anthropic.CountTokensRequest)
    canonical = anthropic.decode(body, _signer(request))
    tokens = await chat_service(request).count_prompt_tokens(canonical)
    return FastJSONResponse({"input_tokens": tokens})

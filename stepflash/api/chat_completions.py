"""POST /v1/chat/completions: decode, run the one event stream, encode as chunks or a body."""

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
from stepflash.core.completion import accumulate
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.protocol import openai
from stepflash.protocol.sse import sse_event
from stepflash.serving.chat import OpenedStream

log = logging.getLogger(__name__)
router = APIRouter(tags=["chat"])

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in {
        400: "Invalid request parameters",
        404: "Unknown model",
        413: "Request body too large",
        503: "Engine queue full; retry after the Retry-After header",
    }.items()
}


async def _sse(encoder: openai.ChatCompletionEncoder, stream: OpenedStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in encoder.chunks(aiter(stream)):
            yield sse_event(chunk)
    except StepflashError as error:
        yield sse_event(openai.error_body(error))
        return
    except Exception:
        log.exception("stream failed after it started")
        yield sse_event(openai.error_body(StepflashError(ErrorKind.INTERNAL, "the stream failed")))
        return
    yield sse_event("[DONE]")


@router.post(
    "/chat/completions",
    responses=ERROR_RESPONSES,
    response_model=None,
    openapi_extra=body_schema(openai.ChatCompletionRequest),
)
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, openai.ChatCompletionRequest)
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    encoder = openai.ChatCompletionEncoder(body, completion_id)
    try:
        async with cancel_on_disconnect(request):
            stream = await chat_service(request).open_stream(openai.decode(body))
            headers = {**backend_headers(stream.model), "x-request-id": completion_id}
            if body.stream:
                # From here on Starlette cancels the stream if the client goes away.
                return StreamingResponse(
                    _sse(encoder, stream), media_type="text/event-stream", headers=headers
                )
            completion = await accumulate(aiter(stream))
    except ClientDisconnected:
        return Response(status_code=499)
    return FastJSONResponse(encoder.body(completion), headers=headers)

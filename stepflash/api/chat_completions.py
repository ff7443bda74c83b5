"""POST /v1/chat/completions: decode, run the one event stream, encode as chunks or a body."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import Response

from stepflash.api.body import body_schema, parse_body
from stepflash.api.respond import ERROR_RESPONSES, respond
from stepflash.core.errors import StepflashError
from stepflash.core.ids import time_ordered_id
from stepflash.protocol import openai
from stepflash.protocol.sse import sse_event
from stepflash.serving.chat import OpenedStream

router = APIRouter(tags=["chat"])


def _error_frame(error: StepflashError) -> bytes:
    return sse_event(openai.error_body(error))


@router.post(
    "/chat/completions",
    responses=ERROR_RESPONSES,
    response_model=None,
    openapi_extra=body_schema(openai.ChatCompletionRequest),
)
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, openai.ChatCompletionRequest)
    completion_id = time_ordered_id("chatcmpl-")
    encoder = openai.ChatCompletionEncoder(body, completion_id)

    async def frames(stream: OpenedStream) -> AsyncIterator[bytes]:
        async for chunk in encoder.chunks(aiter(stream)):
            yield sse_event(chunk)
        yield sse_event("[DONE]")

    return await respond(
        request,
        lambda: openai.decode(body),
        request_id=completion_id,
        stream=bool(body.stream),
        headers={"x-request-id": completion_id},
        frames=frames,
        error_frame=_error_frame,
        body=encoder.body,
    )

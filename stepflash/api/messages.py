"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's API over the one event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import Response

from stepflash.api.body import body_schema, parse_body
from stepflash.api.deps import FastJSONResponse, chat_service
from stepflash.api.files import account_files
from stepflash.api.heartbeat import with_heartbeat
from stepflash.api.respond import ERROR_RESPONSES, respond
from stepflash.core.errors import StepflashError
from stepflash.core.ids import time_ordered_id
from stepflash.protocol import anthropic
from stepflash.protocol.signature import ThinkingSigner
from stepflash.protocol.sse import sse_event
from stepflash.serving.chat import OpenedStream

router = APIRouter(tags=["messages"])


def _signer(request: Request) -> ThinkingSigner:
    return request.app.state.thinking_signer


def _error_frame(error: StepflashError) -> bytes:
    return sse_event(anthropic.error_body(error), "error")


@router.post(
    "/messages",
    responses=ERROR_RESPONSES,
    response_model=None,
    openapi_extra=body_schema(anthropic.MessagesRequest),
)
async def create_message(request: Request) -> Response:
    body = await parse_body(request, anthropic.MessagesRequest)
    message_id = time_ordered_id("msg_")
    signer = _signer(request)
    encoder = anthropic.MessagesEncoder(body, message_id, signer)
    ping_seconds = request.app.state.settings.anthropic_ping_seconds

    async def frames(stream: OpenedStream) -> AsyncIterator[bytes]:
        async for name, data in encoder.stream(with_heartbeat(aiter(stream), ping_seconds)):
            yield sse_event(data, name)

    return await respond(
        request,
        lambda: anthropic.decode(body, signer),
        request_id=message_id,
        stream=bool(body.stream),
        headers={"request-id": message_id},
        frames=frames,
        error_frame=_error_frame,
        body=encoder.body,
    )


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
    tokens = await chat_service(request).count_prompt_tokens(canonical, account_files(request))
    return FastJSONResponse({"input_tokens": tokens})

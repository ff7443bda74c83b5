"""The one way a chat route answers, whatever protocol it speaks.

Admit it through the gate (a billed caller's limits and balance), open the canonical stream
(errors before output become real HTTP statuses), then send it as SSE frames or accumulate it
into one body; a client that goes away cancels the work and releases its reservation. Each
protocol's router supplies only its decoding and its encoders.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from stepflash.api.auth import principal
from stepflash.api.deps import FastJSONResponse, backend_headers, chat_service
from stepflash.api.disconnect import ClientDisconnected, cancel_on_disconnect
from stepflash.api.files import account_files
from stepflash.core.completion import Completion, accumulate
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.core.request import ChatRequest
from stepflash.serving.chat import OpenedStream

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in {
        400: "Invalid request parameters",
        401: "Missing, invalid or revoked API key",
        402: "The balance does not cover the request",
        404: "Unknown model",
        413: "Request body too large",
        429: "Rate limited; retry after the Retry-After header",
        503: "Engine queue full; retry after the Retry-After header",
    }.items()
}


async def _guarded(
    frames: AsyncIterator[bytes], error_frame: Callable[[StepflashError], bytes]
) -> AsyncIterator[bytes]:
    """After the stream began, a failure can only be told in-band: one error frame, then end."""
    try:
        async for frame in frames:
            yield frame
    except StepflashError as error:
        yield error_frame(error)
    except Exception:
        log.exception("stream failed after it started")
        yield error_frame(StepflashError(ErrorKind.INTERNAL, "the stream failed"))


async def respond(
    request: Request,
    decode: Callable[[], ChatRequest],
    *,
    request_id: str,
    stream: bool,
    headers: dict[str, str],
    frames: Callable[[OpenedStream], AsyncIterator[bytes]],
    error_frame: Callable[[StepflashError], bytes],
    body: Callable[[Completion], dict[str, Any]],
) -> Response:
    try:
        async with cancel_on_disconnect(request):
            canonical = decode()
            gate = request.app.state.accounts.gate
            admission = await gate.admit(principal(request), canonical, request_id)
            opened = await chat_service(request).open_stream(
                canonical, admission, account_files(request)
            )
            headers = {**backend_headers(opened), **headers}
            if stream:
                # From here on Starlette cancels the stream if the client goes away.
                response: Response = StreamingResponse(
                    _guarded(frames(opened), error_frame),
                    media_type="text/event-stream",
                    headers=headers,
                )
            else:
                completion = await accumulate(aiter(opened))
                response = FastJSONResponse(body(completion), headers=headers)
    except ClientDisconnected:
        return Response(status_code=499)
    if admission is not None:  # a whole answer is settled by now, and says what it cost
        response.raw_headers.extend(admission.headers())
    return response

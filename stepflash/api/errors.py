"""Every failure becomes an error in the caller's protocol, with the right status.

Validation errors from request parsing are 400s that name the field; a body over the size
limit is a 413 before it is read into memory; anything unexpected is logged and returned as a
500 in the same envelope, never as a bare stack trace.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepflash.api.body import describe_validation_error
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.protocol import anthropic, openai

log = logging.getLogger(__name__)


def speaks_anthropic(path: str) -> bool:
    """Whether the route answers in Anthropic's envelope (the Messages API) or OpenAI's."""
    return path.endswith(("/messages", "/messages/count_tokens"))


def error_response(error: StepflashError, path: str) -> JSONResponse:
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    protocol = anthropic if speaks_anthropic(path) else openai
    return JSONResponse(protocol.error_body(error), status_code=error.status, headers=headers)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(describe_validation_error(list(exc.errors())), request.url.path)


async def _on_stepflash_error(request: Request, exc: StepflashError) -> JSONResponse:
    return error_response(exc, request.url.path)


async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = {404: ErrorKind.NOT_FOUND, 413: ErrorKind.PAYLOAD_TOO_LARGE}.get(exc.status_code)
    if kind is None:
        kind = ErrorKind.INVALID_REQUEST if exc.status_code < 500 else ErrorKind.INTERNAL
    response = error_response(StepflashError(kind, str(exc.detail)), request.url.path)
    response.status_code = exc.status_code
    return response


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    error = StepflashError(ErrorKind.INTERNAL, "internal error; see the server log")
    return error_response(error, request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StepflashError, _on_stepflash_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_unexpected)


UPLOAD_MARGIN_BYTES = 1024 * 1024  # multipart framing and form fields around an uploaded file


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with a 413, checking Content-Length and the bytes received.

    A file upload (`POST …/files`) may instead be as large as the largest file the settings
    allow, plus a margin; the files route then holds each purpose to its own limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].endswith("/files"):
            files = scope["app"].state.settings.files
            largest = max(files.max_bytes_storage, files.max_bytes_other)
            return max(self.max_bytes, largest + UPLOAD_MARGIN_BYTES)
        return self.max_bytes

    @staticmethod
    def _too_large(limit: int) -> StepflashError:
        return StepflashError(
            ErrorKind.PAYLOAD_TOO_LARGE, f"the request body exceeds the limit of {limit} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(self._too_large(limit), scope["path"])(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes through the body parser to our handler above.
                    raise HTTPException(413, self._too_large(limit).message)
            return message

        await self.app(scope, counting_receive, send)

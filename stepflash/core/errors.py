"""Errors that reach the caller. Each protocol renders them in its own envelope.

Raising one of these anywhere in the request path gives the caller a precise 4xx/5xx with a
message that says what to fix; anything else is a bug and becomes a logged 500.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_CONTENT = "unsupported_content"
    AUTHENTICATION = "authentication"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    UPSTREAM = "upstream"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    INTERNAL = "internal"


STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.UNSUPPORTED_CONTENT: 400,
    ErrorKind.AUTHENTICATION: 401,
    ErrorKind.INSUFFICIENT_BALANCE: 402,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.UPSTREAM: 502,
    ErrorKind.UPSTREAM_TIMEOUT: 504,
    ErrorKind.INTERNAL: 500,
}


class StepflashError(Exception):
    """An error with a caller-facing message, the parameter at fault, an optional retry hint
    and the response headers that explain it (rate-limit counters)."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return STATUS_BY_KIND[self.kind]


def invalid(message: str, param: str | None = None) -> StepflashError:
    return StepflashError(ErrorKind.INVALID_REQUEST, message, param=param)

"""HTTP to an upstream server: streaming SSE, and telling retryable failures from final ones.

A failure before the first token can be retried on another replica (connection refused, 5xx,
429, a stall); a 4xx is the caller's or the configuration's fault and is final. What happens
after tokens were sent is the router's business: it never retries then.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.core.events import Usage


class UpstreamUnavailable(Exception):
    """The replica could not serve this request; another replica might."""


class StreamCut(UpstreamUnavailable):
    """The upstream failed after output was delivered; carries the usage delivered so far."""

    def __init__(self, message: str, usage: Usage) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float = 5.0
    read: float = 120.0  # the longest silence tolerated between two chunks


def _detail(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text[:300] or response.reason_phrase)


def _raise_for_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 400:
        return
    detail = _detail(response)
    if status >= 500 or status == 429:
        raise UpstreamUnavailable(f"{url} answered {status}: {detail}")
    if status in (401, 403):
        raise StepflashError(
            ErrorKind.UPSTREAM,
            f"the upstream {url} refused our credentials ({status}); check the backend's "
            "api_key_env setting",
        )
    if status == 404:
        raise StepflashError(
            ErrorKind.UPSTREAM,
            f"the upstream {url} does not know this route or model ({detail}); check the "
            "backend's replicas and upstream_model settings",
        )
    kind = ErrorKind.INVALID_REQUEST if status in (400, 413, 422) else ErrorKind.UPSTREAM
    raise StepflashError(kind, f"the upstream rejected the request: {detail}")


@asynccontextmanager
async def open_event_stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    timeouts: UpstreamTimeouts,
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """POST `body` and yield an iterator of the JSON payloads of the SSE `data:` lines."""
    timeout = httpx.Timeout(timeouts.read, connect=timeouts.connect)
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
            if resp.status_code >= 400:
                await resp.aread()
            _raise_for_status(resp, url)
            yield _payloads(resp, url)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as error:
        raise UpstreamUnavailable(f"cannot reach {url}: {error!r}") from error
    except httpx.ReadTimeout as error:
        raise UpstreamUnavailable(f"{url} sent nothing for {timeouts.read:g}s") from error
    except httpx.ReadError as error:
        raise UpstreamUnavailable(f"the connection to {url} broke: {error!r}") from error


async def _payloads(response: httpx.Response, url: str) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as error:
            raise UpstreamUnavailable(f"{url} sent a malformed event: {data[:200]!r}") from error
        if isinstance(payload, dict) and payload.get("error"):
            raise UpstreamUnavailable(f"{url} failed mid-stream: {payload['error']}")
        yield payload
    raise UpstreamUnavailable(f"{url} ended the stream without [DONE]")

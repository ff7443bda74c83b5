"""HTTP to an upstream server: SSE streams or whole bodies, and which failures are retryable.

A failure before the first token can be retried on another replica (connection refused, 5xx,
429, a stall); a 4xx is the caller's or the configuration's fault and is final. What happens
after tokens were sent is the router's business: it never retries then.

aiohttp and orjson keep the per-chunk cost of a gateway low: at 64 chunks per answer, the
client library's per-line overhead is most of what a gateway adds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.core.events import Usage

Payload = dict[str, Any]


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


def new_session() -> aiohttp.ClientSession:
    """One pooled session per process, shared by every upstream replica."""
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=256, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector, json_serialize=lambda v: orjson.dumps(v).decode()
    )


def _detail(body: bytes, reason: str | None) -> str:
    try:
        error = orjson.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message or body[:300].decode(errors="replace") or reason)


def _raise_for_status(status: int, detail: str, url: str) -> None:
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
async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: Payload,
    headers: dict[str, str],
    timeouts: UpstreamTimeouts,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST and yield the response once its status is known good; map failures to ours."""
    timeout = aiohttp.ClientTimeout(sock_connect=timeouts.connect, sock_read=timeouts.read)
    try:
        async with session.post(
            url,
            data=orjson.dumps(body),
            headers={"content-type": "application/json", **headers},
            timeout=timeout,
        ) as response:
            if response.status >= 400:
                _raise_for_status(
                    response.status, _detail(await response.read(), response.reason), url
                )
            yield response
    except aiohttp.ClientConnectorError as error:
        raise UpstreamUnavailable(f"cannot reach {url}: {error}") from error
    except TimeoutError as error:
        raise UpstreamUnavailable(f"{url} sent nothing for {timeouts.read:g}s") from error
    except aiohttp.ClientError as error:  # disconnects, broken or truncated bodies
        raise UpstreamUnavailable(f"the connection to {url} broke: {error!r}") from error


@asynccontextmanager
async def open_event_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: Payload,
    headers: dict[str, str],
    timeouts: UpstreamTimeouts,
) -> AsyncIterator[AsyncIterator[Payload]]:
    """POST `body` and yield an iterator of the JSON payloads of the SSE `data:` lines."""
    async with _post(session, url, body, headers, timeouts) as response:
        yield _payloads(response, url)


async def fetch_json(
    session: aiohttp.ClientSession,
    url: str,
    body: Payload,
    headers: dict[str, str],
    timeouts: UpstreamTimeouts,
) -> Payload:
    """POST `body` and return the whole JSON answer."""
    async with _post(session, url, body, headers, timeouts) as response:
        raw = await response.read()
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise UpstreamUnavailable(f"{url} sent a malformed body: {raw[:200]!r}") from error
    if not isinstance(payload, dict):
        raise UpstreamUnavailable(f"{url} sent a body that is not an object")
    return payload


async def fetch_token_count(
    session: aiohttp.ClientSession,
    url: str,
    body: Payload,
    headers: dict[str, str],
    timeouts: UpstreamTimeouts,
) -> int:
    """POST to a server's tokenize route: vLLM answers `count`, llama.cpp `tokens`."""
    answer = await fetch_json(session, url, body, headers, timeouts)
    count = answer.get("count")
    if isinstance(count, int):
        return count
    tokens = answer.get("tokens")
    if isinstance(tokens, list):
        return len(tokens)
    raise UpstreamUnavailable(f"{url} answered without a token count")


async def _payloads(response: aiohttp.ClientResponse, url: str) -> AsyncIterator[Payload]:
    done = False
    async for line in response.content:
        if done or not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines; after [DONE], the body's end
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True  # read on to the end of the body so the connection can be reused
            continue
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise UpstreamUnavailable(f"{url} sent a malformed event: {data[:200]!r}") from error
        if isinstance(payload, dict) and payload.get("error"):
            raise UpstreamUnavailable(f"{url} failed mid-stream: {payload['error']}")
        yield payload
    if not done:
        raise UpstreamUnavailable(f"{url} ended the stream without [DONE]")

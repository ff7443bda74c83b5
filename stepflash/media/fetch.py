"""Fetch a user's media URL without letting it reach where it should not.

Each hop of a fetch is resolved once, here; every address is judged by the AddressPolicy,
and the connection goes to exactly those addresses (a resolver pinned to them), so a DNS
answer that changes between the check and the connect cannot redirect us. Redirects are
followed by hand, each hop judged again, up to a fixed count. Bytes, time and content type
are capped; proxies from the environment are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from stepflash.media.address_policy import AddressPolicy, AddressRefused

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "stepflash-media-fetcher"}


class FetchFailed(Exception):
    """The URL could not be fetched; the message says why, in the caller's terms."""


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    content_type: str | None  # the media type the server declared, without parameters


async def resolve_host(host: str, port: int) -> list[ResolveResult]:
    """The system resolver's answer (which also reads decimal, octal and hex IPv4 forms)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise FetchFailed(f"the host {host} could not be resolved") from error
    results: list[ResolveResult] = []
    for family, _, proto, _, sockaddr in infos:
        results.append(
            ResolveResult(
                hostname=host,
                host=str(sockaddr[0]),
                port=port,
                family=family,
                proto=proto,
                flags=socket.AI_NUMERICHOST,
            )
        )
    return results


class _PinnedResolver(AbstractResolver):
    """Answers with the addresses already judged for this hop, and nothing else."""

    def __init__(self, host: str, results: list[ResolveResult]) -> None:
        self._host = host
        self._results = results

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError(f"{host} was not resolved by the media fetcher")
        return self._results

    async def close(self) -> None:
        return None


def _media_type(header: str | None) -> str | None:
    return header.split(";", 1)[0].strip().lower() if header else None


class MediaFetcher:
    def __init__(
        self,
        policy: AddressPolicy,
        timeout_seconds: float,
        max_redirects: int,
    ) -> None:
        self._policy = policy
        self._timeout = timeout_seconds
        self._max_redirects = max_redirects

    async def fetch(self, url: str, max_bytes: int, accepted_types: tuple[str, ...]) -> Fetched:
        """The body of `url`, at most `max_bytes`, of a content type starting with one of
        `accepted_types` (or a generic binary type, left to the format check)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(URL(url), max_bytes, accepted_types)
        except TimeoutError:
            raise FetchFailed(f"fetching it took longer than {self._timeout:g} s") from None
        except AddressRefused as error:
            raise FetchFailed(f"{error}; stepflash fetches only public addresses") from None
        except aiohttp.ClientError as error:
            raise FetchFailed(f"fetching it failed: {error}") from None
        except ValueError as error:  # a malformed URL or Location, an unencodable host name
            raise FetchFailed(f"the URL is not valid ({error})") from None

    async def _follow(self, url: URL, max_bytes: int, accepted: tuple[str, ...]) -> Fetched:
        for _ in range(self._max_redirects + 1):
            results = await self._judge(url)
            connector = aiohttp.TCPConnector(
                resolver=_PinnedResolver(url.raw_host or "", results),
                use_dns_cache=False,
                force_close=True,
            )
            # No transparent decompression: a gzip bomb would inflate past the byte cap
            # inside one chunk. Media formats are compressed already; ask for them as they are.
            async with (
                aiohttp.ClientSession(
                    connector=connector, trust_env=False, auto_decompress=False
                ) as session,
                session.get(url, allow_redirects=False, headers=_HEADERS) as response,
            ):
                if response.status in _REDIRECTS and "Location" in response.headers:
                    url = url.join(URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    raise FetchFailed(f"the server answered {response.status} {response.reason}")
                return await _read(response, max_bytes, accepted)
        raise FetchFailed(f"it redirected more than {self._max_redirects} times")

    async def _judge(self, url: URL) -> list[ResolveResult]:
        """Check the URL's form and every address its host resolves to, once."""
        if url.scheme not in ("http", "https"):
            raise FetchFailed(f"only http and https URLs are fetched, not {url.scheme or 'this'}")
        if url.user is not None or url.password is not None:
            raise FetchFailed("URLs with credentials are not fetched")
        host, port = url.raw_host, url.port
        if not host or port is None:
            raise FetchFailed("the URL has no host")
        self._policy.check_host(host)
        results = await resolve_host(host, port)
        if not results:
            raise FetchFailed(f"the host {host} has no address")
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            self._policy.check_address(address, port)
        return results


async def _read(
    response: aiohttp.ClientResponse, max_bytes: int, accepted: tuple[str, ...]
) -> Fetched:
    content_type = _media_type(response.headers.get("Content-Type"))
    generic = content_type in (None, "application/octet-stream", "binary/octet-stream")
    if not generic and not (content_type or "").startswith(accepted):
        raise FetchFailed(f"the server sent {content_type}, not {' or '.join(accepted)}")
    encoding = response.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity":
        raise FetchFailed(f"the server sent it {encoding}-encoded; it must send the file as is")
    if (response.content_length or 0) > max_bytes:
        raise FetchFailed(f"it is {response.content_length} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise FetchFailed(f"it is larger than the limit of {max_bytes} bytes")
    return Fetched(bytes(body), None if generic else content_type)

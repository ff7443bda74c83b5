"""A small web server on 127.0.0.1 that serves media files and redirects, for fetch tests.

It records every request it gets, so a test can prove that a refused URL was never fetched.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port
from tests.threaded_server import ThreadedServer


@dataclass
class MediaHost:
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (body, type)
    hits: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, name: str, body: bytes, content_type: str) -> str:
        self.files[name] = (body, content_type)
        return f"{self.url}/files/{name}"

    def redirect_to(self, target: str) -> str:
        return f"{self.url}/redirect?{target and 'to=' + target}"

    def start(self) -> MediaHost:
        app = Starlette(
            routes=[
                Route("/files/{name}", self._file),
                Route("/redirect", self._redirect),
                Route("/loop/{n:int}", self._loop),
                Route("/slow", self._slow),
                Route("/gzip-bomb", self._gzip_bomb),
            ]
        )
        self._server = ThreadedServer(app, self.port, "media host")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    async def _file(self, request: Request) -> Response:
        self.hits.append(request.url.path)
        name = request.path_params["name"]
        if name not in self.files:
            return Response("no such file", status_code=404)
        body, content_type = self.files[name]
        return Response(body, media_type=content_type)

    async def _redirect(self, request: Request) -> Response:
        self.hits.append(str(request.url))
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def _loop(self, request: Request) -> Response:
        """/loop/N redirects to /loop/N+1 forever."""
        self.hits.append(request.url.path)
        return RedirectResponse(f"/loop/{request.path_params['n'] + 1}", status_code=302)

    async def _slow(self, request: Request) -> Response:
        """An image that trickles in one byte a second: only a time cap ends it."""

        async def trickle() -> AsyncIterator[bytes]:
            for _ in range(60):
                yield b"\0"
                await asyncio.sleep(1)

        self.hits.append(request.url.path)
        return StreamingResponse(trickle(), media_type="image/png")

    async def _gzip_bomb(self, request: Request) -> Response:
        """20 MB of zeros, gzip-encoded to about 20 KB."""
        self.hits.append(request.url.path)
        body = gzip.compress(b"\0" * 20_000_000, compresslevel=9)
        return Response(body, media_type="image/png", headers={"Content-Encoding": "gzip"})

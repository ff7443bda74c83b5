"""Lua scripts run by EVALSHA on a Redis connection of our own, batched per turn of the event loop.

Why not redis-py on the hot path: at thousands of requests a second, checking a pooled
connection out and in for every batch and reading each reply through a coroutine cost more
than the limits themselves. Here the calls made in one turn are packed by hiredis (in C) and
written at once, and hiredis's reader parses the replies as their bytes arrive, handing each to
the future of the call it answers (Redis answers in the order the calls went): no task, no
coroutine, no pool per batch. redis-py still reads the URL (`redis://`, `rediss://`,
`unix://`, with user, password and db) and loads the scripts.

A connection that fails hands its unanswered calls to a fresh one, once: every script is
idempotent per request id, so a call that did run and runs again changes nothing. A batch not
answered within the client's `socket_timeout` (when it has one) counts as a failed connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from hiredis import Reader, pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

TRIES = 2  # a call is sent at most this often: once, and once more on a fresh connection


@dataclass(slots=True)
class _Call:
    future: asyncio.Future[Any]
    script: str | None = None  # None for the connection's own commands (AUTH, SELECT)
    keys: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    tries: int = 0


def _reply_error(message: str) -> ResponseError:
    """hiredis's reader makes error replies with this; redis-py names the one we handle."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Wire(asyncio.Protocol):
    """One connection: writes packed calls and answers them in order as replies arrive."""

    def __init__(
        self,
        answer: Callable[[_Call, Any], None],
        lost: Callable[[_Wire, list[_Call], Exception], None],
    ) -> None:
        self._answer = answer
        self._lost = lost
        self._reader = Reader(replyError=_reply_error)
        self._transport: asyncio.Transport | None = None
        self.waiting: deque[_Call] = deque()
        self.answered = 0  # replies received so far
        self.failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's do not subclass asyncio's classes)
        self._transport = cast(asyncio.Transport, transport)

    def send(self, calls: list[_Call], packed: bytes) -> None:
        assert self._transport is not None
        self.waiting.extend(calls)
        self._transport.write(packed)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                call = self.waiting.popleft()
                self.answered += 1
                self._answer(call, reply)
        except Exception:  # a protocol error or a reply nobody asked for: drop the connection
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.failed = True
        calls = list(self.waiting)
        self.waiting.clear()
        self._lost(self, calls, RedisConnectionError(f"connection to Redis lost: {exc}"))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, and fails the calls over

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _resolve(call: _Call, reply: Any) -> None:
    if call.future.done():
        return
    if isinstance(reply, Exception):
        call.future.set_exception(reply)
    else:
        call.future.set_result(reply)


class ScriptPipeline:
    """Runs scripts by EVALSHA for many concurrent callers, one write per turn of the loop."""

    def __init__(self, client: Redis, *scripts: str) -> None:
        self._client = client
        self._settings: dict[str, Any] = dict(client.connection_pool.connection_kwargs)
        self._tls = issubclass(client.connection_pool.connection_class, SSLConnection)
        self._scripts = scripts
        self._shas: dict[str, str] = {}
        self._queue: list[_Call] = []
        self._wire: _Wire | None = None
        self._connecting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # batches waiting for a connection

    def submit(self, script: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue a call for this turn's batch; the future holds its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(future, script, keys, args))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        return future

    async def drain(self) -> None:
        """Wait until every call submitted so far has its reply (before closing)."""
        await asyncio.sleep(0)  # the current turn's batch leaves
        while True:
            waiting = [call.future for call in self._wire.waiting] if self._wire else []
            pending = [*self._tasks, *(future for future in waiting if not future.done())]
            if not pending:
                return
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        await self.drain()
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    def _answer(self, call: _Call, reply: Any) -> None:
        if isinstance(reply, NoScriptError) and call.script is not None and call.tries < TRIES:
            self._shas.clear()  # Redis restarted or was flushed: load the scripts again
            self._send([call])
            return
        _resolve(call, reply)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._send(batch)

    def _send(self, calls: list[_Call]) -> None:
        wire = self._wire
        if wire is None or wire.failed or any(call.script not in self._shas for call in calls):
            self._spawn(self._send_connected(calls))
            return
        for call in calls:
            call.tries += 1
        wire.send(calls, b"".join(self._pack(call) for call in calls))
        timeout = self._settings.get("socket_timeout")
        if timeout:
            expected = wire.answered + len(wire.waiting)
            asyncio.get_running_loop().call_later(timeout, self._expire, wire, expected)

    def _pack(self, call: _Call) -> bytes:
        assert call.script is not None
        keys, args = call.keys, call.args
        return pack_command(("EVALSHA", self._shas[call.script], len(keys), *keys, *args))

    @staticmethod
    def _expire(wire: _Wire, expected: int) -> None:
        if wire.answered < expected and not wire.failed:
            wire.abort()

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _send_connected(self, calls: list[_Call]) -> None:
        try:
            await self._connect()
        except Exception as error:  # Redis is unreachable: every caller learns it
            for call in calls:
                _resolve(call, error)
            return
        self._send(calls)

    async def _connect(self) -> None:
        """Open a connection (and load the scripts) unless a usable one is there; one at a
        time, so the batches that find none share the next."""
        async with self._connecting:
            if self._wire is None or self._wire.failed:
                self._wire = await self._open()
            if len(self._shas) < len(self._scripts):
                for script in self._scripts:
                    self._shas[script] = await self._client.script_load(script)

    async def _open(self) -> _Wire:
        settings, loop = self._settings, asyncio.get_running_loop()
        wire = _Wire(self._answer, self._lost)
        timeout = settings.get("socket_connect_timeout") or settings.get("socket_timeout")
        try:
            async with asyncio.timeout(timeout):
                if settings.get("path"):
                    await loop.create_unix_connection(lambda: wire, settings["path"])
                else:
                    host = settings.get("host", "localhost")
                    await loop.create_connection(
                        lambda: wire, host, settings.get("port", 6379), ssl=self._ssl_context()
                    )
                for command in self._hello():
                    future: asyncio.Future[Any] = loop.create_future()
                    wire.send([_Call(future, tries=TRIES)], pack_command(command))
                    await future
        except BaseException:
            wire.abort()
            raise
        return wire

    def _hello(self) -> list[tuple[Any, ...]]:
        settings, hello = self._settings, []
        if settings.get("password"):
            user = settings.get("username")
            credentials = (user, settings["password"]) if user else (settings["password"],)
            hello.append(("AUTH", *credentials))
        if settings.get("db"):
            hello.append(("SELECT", settings["db"]))
        return hello

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self._tls:
            return None
        context = ssl.create_default_context(cafile=self._settings.get("ssl_ca_certs"))
        if self._settings.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _lost(self, wire: _Wire, calls: list[_Call], error: Exception) -> None:
        """`wire` failed: its unanswered calls go once more on a fresh connection."""
        if self._wire is wire:
            self._wire = None
        again = []
        for call in calls:
            if call.future.done():
                continue
            if call.tries < TRIES:
                again.append(call)
            else:
                _resolve(call, error)
        if again:
            self._send(again)

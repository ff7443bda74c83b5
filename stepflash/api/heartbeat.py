"""Keep a quiet stream alive: a None whenever the source is silent for `interval` seconds.

Anthropic clients expect `ping` events while a model thinks before its first visible token;
proxies drop idle connections. The pending read is never cancelled by a timeout (that would
break the generator it reads), only awaited again after the ping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

Item = TypeVar("Item")


async def with_heartbeat(
    source: AsyncIterator[Item], interval: float
) -> AsyncIterator[Item | None]:
    pending: asyncio.Task[Item] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()

"""Stop work when the client goes away, for work Starlette would not cancel by itself.

Starlette cancels a streaming response when its client disconnects, but not a handler that
is still waiting (in the engine queue, for the first token, or for a whole answer): without
this, a dropped request would keep the engine busy to the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request


class ClientDisconnected(Exception):
    pass


@asynccontextmanager
async def cancel_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Run the body; if the client disconnects meanwhile, cancel it and raise ClientDisconnected.

    One watcher task per request (not a task for the work as well): it cancels the handler's
    own task, which is cheaper than running the work elsewhere and waiting on both.
    """
    handler = asyncio.current_task()
    assert handler is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await request.receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        handler.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if disconnected:
            handler.uncancel()
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()

"""One thread that owns the llama.cpp context and runs one job at a time.

llama.cpp contexts are not thread-safe and a CPU has no spare capacity for a second sequence,
so requests queue here. The queue is bounded: beyond it callers get a 503 with Retry-After
instead of an ever-growing wait. A caller that goes away sets its job's cancel flag; the job
checks it between tokens, so the engine is free again within one token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from stepflash.core.errors import ErrorKind, StepflashError

log = logging.getLogger(__name__)

Resource = TypeVar("Resource")
Item = TypeVar("Item")


class _Done:
    """Sentinel that ends a job's output."""


@dataclass(slots=True)
class _Submission(Generic[Resource, Item]):
    job: Callable[[Resource, threading.Event], Iterator[Item]]
    cancel: threading.Event
    emit: Callable[[object], None]


class Worker(Generic[Resource]):
    """Runs jobs against a single resource on one thread, with a bounded waiting line."""

    def __init__(self, resource: Resource, queue_size: int, retry_after: float, name: str) -> None:
        self._resource = resource
        self._capacity = queue_size + 1  # waiting jobs plus the running one
        self._retry_after = retry_after
        self._jobs: queue.SimpleQueue[_Submission[Resource, object] | None] = queue.SimpleQueue()
        self._outstanding = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def outstanding(self) -> int:
        return self._outstanding

    async def run(
        self, job: Callable[[Resource, threading.Event], Iterator[Item]]
    ) -> AsyncGenerator[Item, None]:
        """Queue `job` and yield what it produces; closing the iterator cancels the job."""
        if self._outstanding >= self._capacity:
            raise StepflashError(
                ErrorKind.OVERLOADED,
                "the engine is busy and its queue is full; retry shortly",
                retry_after=self._retry_after,
            )
        loop = asyncio.get_running_loop()
        output: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(output.put_nowait, item)

        self._outstanding += 1
        self._jobs.put(_Submission(job, cancel, emit))
        try:
            while True:
                item = await output.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]  # the job produced it: an Item
        finally:
            cancel.set()
            self._outstanding -= 1

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        while (submission := self._jobs.get()) is not None:
            if submission.cancel.is_set():
                submission.emit(_Done())
                continue
            try:
                for item in submission.job(self._resource, submission.cancel):
                    submission.emit(item)
                    if submission.cancel.is_set():
                        break
            except Exception as error:  # handed to the caller, who turns it into a response
                if not isinstance(error, StepflashError):
                    log.exception("embedded engine job failed")
                submission.emit(error)
            submission.emit(_Done())

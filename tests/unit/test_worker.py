"""The worker runs one job at a time, bounds its queue, and stops a job its caller abandoned."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.engines.embedded.worker import Worker


def counting_job(limit: int, produced: list[int]):
    def job(resource: str, cancel: threading.Event) -> Iterator[int]:
        for value in range(limit):
            produced.append(value)
            yield value

    return job


def test_jobs_run_and_errors_reach_the_caller() -> None:
    async def main() -> None:
        worker: Worker[str] = Worker("resource", queue_size=2, retry_after=1, name="test")
        produced: list[int] = []
        assert [v async for v in worker.run(counting_job(3, produced))] == [0, 1, 2]

        def failing(resource: str, cancel: threading.Event) -> Iterator[int]:
            yield 1
            raise StepflashError(ErrorKind.INVALID_REQUEST, "bad")

        with pytest.raises(StepflashError, match="bad"):
            [v async for v in worker.run(failing)]
        assert worker.outstanding == 0
        worker.close()

    asyncio.run(main())


def test_queue_bound_and_cancellation() -> None:
    async def main() -> None:
        worker: Worker[str] = Worker("resource", queue_size=0, retry_after=3, name="test")
        produced: list[int] = []
        first = worker.run(counting_job(10_000_000, produced))
        assert await anext(first) == 0
        with pytest.raises(StepflashError) as raised:
            await anext(worker.run(counting_job(1, [])))
        assert raised.value.kind is ErrorKind.OVERLOADED and raised.value.retry_after == 3
        await first.aclose()
        assert worker.outstanding == 0
        await asyncio.sleep(0.2)
        stopped_at = len(produced)
        await asyncio.sleep(0.2)
        assert len(produced) == stopped_at < 10_000_000, "the abandoned job must stop"
        worker.close()

    asyncio.run(main())

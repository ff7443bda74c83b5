"""Drive one concurrency level after another: C workers, each one request at a time.

Closed-loop load (each worker sends its next request when the previous one ends) is what
"concurrency N" means in guidellm, aiperf and vLLM's benchmark, so the numbers compare.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from stepflash.bench.client import Endpoint, RequestResult, request_body, stream_one
from stepflash.bench.stats import summarize
from stepflash.bench.workload import Workload

OnResult = Callable[[RequestResult], None]


@dataclass(frozen=True)
class Budget:
    """When a level ends: after `requests` requests, or after `seconds` (no new ones)."""

    requests: int | None
    seconds: float | None
    request_timeout: float


async def run_level(
    endpoint: Endpoint,
    workload: Workload,
    concurrency: int,
    budget: Budget,
    on_result: OnResult,
) -> list[RequestResult]:
    bodies = [
        request_body(endpoint, workload.messages(i), workload.output_tokens)
        for i in range(len(workload.prompts))
    ]
    results: list[RequestResult] = []
    next_index = 0
    deadline = time.perf_counter() + budget.seconds if budget.seconds else None

    def take() -> int | None:
        nonlocal next_index
        if budget.requests is not None and next_index >= budget.requests:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        next_index += 1
        return next_index - 1

    async def worker(session: aiohttp.ClientSession) -> None:
        while (index := take()) is not None:
            result = await stream_one(session, endpoint, bodies[index % len(bodies)])
            results.append(result)
            on_result(result)

    timeout = aiohttp.ClientTimeout(total=budget.request_timeout)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


async def run_sweep(
    endpoint: Endpoint,
    workload: Workload,
    levels: list[int],
    budget: Budget,
    on_level_start: Callable[[int], OnResult],
) -> list[dict[str, Any]]:
    """Every level in order; each level's summary as the stats module writes it."""
    summaries = []
    for concurrency in levels:
        on_result = on_level_start(concurrency)
        results = await run_level(endpoint, workload, concurrency, budget, on_result)
        summaries.append(summarize(concurrency, results))
    return summaries

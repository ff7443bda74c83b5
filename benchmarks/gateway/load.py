"""Closed-loop load generator: N concurrent clients for D seconds, one JSON line of results.

Measures requests/s, latency percentiles and time to first token (for streams: the first
chunk carrying content; for whole responses: the complete response). aiohttp keeps the
client cheap so that it does not limit what it measures.

    python benchmarks/gateway/load.py --url http://127.0.0.1:9000/v1 --concurrency 16 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _client(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, until: float,
    latencies: list[float], ttfts: list[float], errors: list[str], api_key: str = "sk-bench",
) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    while time.perf_counter() < until:
        start = time.perf_counter()
        first: float | None = None
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    errors.append(f"{response.status}: {(await response.text())[:200]}")
                    continue
                if stream:
                    async for line in response.content:
                        if first is None and b'"content":"' in line and b'"content":""' not in line:
                            first = time.perf_counter()
                else:
                    await response.read()
                    first = time.perf_counter()
        except aiohttp.ClientError as error:
            errors.append(repr(error))
            continue
        end = time.perf_counter()
        latencies.append(end - start)
        ttfts.append((first or end) - start)


async def run(url: str, model: str, concurrency: int, stream: bool, seconds: float,
              warmup: float, api_key: str = "sk-bench") -> dict[str, object]:
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 64,
        "stream": stream,
    }).encode()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        target = f"{url}/chat/completions"
        scratch: tuple[list[float], list[float], list[str]] = ([], [], [])
        until = time.perf_counter() + warmup
        await asyncio.gather(*(
            _client(session, target, body, stream, until, *scratch, api_key)
            for _ in range(concurrency)
        ))
        latencies: list[float] = []
        ttfts: list[float] = []
        errors: list[str] = []
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(
            _client(session, target, body, stream, until, latencies, ttfts, errors, api_key)
            for _ in range(concurrency)
        ))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "stream": stream,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "requests_per_second": len(latencies) / elapsed,
        "latency_p50_ms": 1000 * _percentile(latencies, 0.50),
        "latency_p99_ms": 1000 * _percentile(latencies, 0.99),
        "ttft_p50_ms": 1000 * _percentile(ttfts, 0.50),
        "ttft_mean_ms": 1000 * statistics.fmean(ttfts) if ttfts else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--api-key", default="sk-bench")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.model, args.concurrency, args.stream, args.seconds,
                             args.warmup, args.api_key))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

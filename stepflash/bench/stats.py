"""Summaries of one concurrency level: throughput and latency percentiles."""

from __future__ import annotations

from typing import Any

import numpy as np

from stepflash.bench.client import RequestResult

PERCENTILES = (50, 90, 99)


def _distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    array = np.asarray(values) * 1000.0  # milliseconds
    summary: dict[str, float | None] = {"mean": round(float(array.mean()), 3)}
    for p in PERCENTILES:
        summary[f"p{p}"] = round(float(np.percentile(array, p)), 3)
    return summary


def summarize(concurrency: int, results: list[RequestResult]) -> dict[str, Any]:
    """One level's numbers; durations are from the first start to the last end."""
    good = [r for r in results if r.ok]
    duration = max(r.ended for r in results) - min(r.started for r in results) if results else 0.0
    output_tokens = sum(r.output_tokens for r in good)
    gaps = [b - a for r in good for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False)]
    tpot = [t for r in good if (t := r.time_per_output_token) is not None]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "unknown")[:200]
            errors[key] = errors.get(key, 0) + 1
    prompt_counts = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "successful": len(good),
        "failed": len(results) - len(good),
        "errors": errors,
        "duration_s": round(duration, 3),
        "requests_per_s": round(len(good) / duration, 3) if duration else 0.0,
        "output_tokens": output_tokens,
        "output_tokens_per_s": round(output_tokens / duration, 2) if duration else 0.0,
        "mean_prompt_tokens": round(float(np.mean(prompt_counts)), 1) if prompt_counts else None,
        "usage_reported": all(r.usage_reported for r in good) if good else False,
        "ttft_ms": _distribution([r.ttft for r in good]),
        "tpot_ms": _distribution(tpot),
        "itl_ms": _distribution(gaps),
        "e2e_latency_ms": _distribution([r.latency for r in good]),
    }

"""The results as a picture: throughput against concurrency, and latency percentiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt


def _series(levels: list[dict[str, Any]], metric: str, key: str) -> list[float]:
    return [
        level[metric][key] if level[metric][key] is not None else float("nan") for level in levels
    ]


def write_plot(results: dict[str, Any], path: Path) -> None:
    levels = results["levels"]
    concurrency = [level["concurrency"] for level in levels]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    figure.suptitle(f"{results['model']} at {results['url']}", fontsize=10)

    throughput.plot(
        concurrency, [lv["output_tokens_per_s"] for lv in levels], "o-", label="output tokens/s"
    )
    throughput.set_xlabel("concurrency")
    throughput.set_ylabel("output tokens/s")
    throughput.set_xscale("log", base=2)
    requests = throughput.twinx()
    requests.plot(
        concurrency,
        [lv["requests_per_s"] for lv in levels],
        "s--",
        color="tab:orange",
        label="requests/s",
    )
    requests.set_ylabel("requests/s")
    throughput.set_title("throughput")
    throughput.legend(loc="upper left")
    requests.legend(loc="lower right")

    for metric, style in (("ttft_ms", "o-"), ("e2e_latency_ms", "s-")):
        for percentile in ("p50", "p90", "p99"):
            latency.plot(
                concurrency,
                _series(levels, metric, percentile),
                style,
                label=f"{metric.removesuffix('_ms')} {percentile}",
                alpha={"p50": 1.0, "p90": 0.7, "p99": 0.45}[percentile],
            )
    latency.set_xscale("log", base=2)
    latency.set_yscale("log")
    for axis in (throughput, latency):
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
    latency.set_xlabel("concurrency")
    latency.set_ylabel("milliseconds")
    latency.set_title("latency percentiles")
    latency.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

"""`stepflash bench`: sweep concurrency against an endpoint; JSON, a table and a PNG out."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stepflash.bench.client import Endpoint, RequestResult
from stepflash.bench.runner import Budget, OnResult, run_sweep
from stepflash.bench.workload import WorkloadError, from_file, synthetic

console = Console(stderr=True)
MAX_CONCURRENCY = 10_000
MAX_REQUESTS = 1_000_000
COLUMNS = (
    "conc.",
    "ok",
    "req/s",
    "tok/s",
    "TTFT p50",
    "TTFT p99",
    "TPOT p50",
    "E2E p50",
    "E2E p99",
)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter("write concurrency levels as 1,4,16") from None
    if not levels or any(not 1 <= level <= MAX_CONCURRENCY for level in levels):
        raise typer.BadParameter(f"each level must be between 1 and {MAX_CONCURRENCY}")
    return levels


def _extra_body(text: str | None, ignore_eos: bool) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if text:
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as error:
            raise typer.BadParameter(f"--extra-body is not JSON: {error.msg}") from None
        if not isinstance(extra, dict):
            raise typer.BadParameter("--extra-body must be a JSON object")
    if ignore_eos:
        extra["ignore_eos"] = True
    return extra


def bench(
    url: Annotated[
        str, typer.Option(help="Base URL of the OpenAI-compatible API (ending in /v1).")
    ] = "http://127.0.0.1:8000/v1",
    model: Annotated[str, typer.Option(help="Model name to request.")] = "step-3.7-flash",
    concurrency: Annotated[
        str, typer.Option(help="Concurrency levels to sweep, comma-separated.")
    ] = "1,4,16",
    requests: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_REQUESTS, help="Requests per level [default: 64]."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(min=1, max=86_400, help="Seconds per level instead of a request count."),
    ] = None,
    input_tokens: Annotated[
        int,
        typer.Option(min=1, max=262_144, help="Synthetic prompt words (about a token each)."),
    ] = 256,
    output_tokens: Annotated[int, typer.Option(min=1, max=262_144, help="max_tokens.")] = 128,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help='JSON lines of {"prompt": …} or {"messages": …}.'
        ),
    ] = None,
    ignore_eos: Annotated[
        bool, typer.Option(help="Send ignore_eos (vLLM, SGLang) so every answer is full length.")
    ] = False,
    extra_body: Annotated[
        str | None,
        typer.Option(help="More request fields, as a JSON object."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="STEPFLASH_API_KEY", help="Bearer key, if needed."),
    ] = None,
    request_timeout: Annotated[float, typer.Option(min=1, help="Seconds per request.")] = 600,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic prompts.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for JSON and PNG.")] = Path(
        "bench-results"
    ),
) -> None:
    """Measure a serving endpoint: TTFT, inter-token latency, latency percentiles, throughput.

    Each concurrency level runs closed-loop (N workers, one request each at a time), streamed,
    and is summarized in a table, in <output>/bench-<time>.json and in a PNG plot.
    """
    levels = _levels(concurrency)
    if requests is not None and duration is not None:
        raise typer.BadParameter("give --requests or --duration, not both")
    budget = Budget(requests if duration is None else None, duration, request_timeout)
    if budget.requests is None and budget.seconds is None:
        budget = Budget(64, None, request_timeout)
    try:
        workload = (
            from_file(prompts_file, output_tokens)
            if prompts_file
            else synthetic(input_tokens, output_tokens, max(256, max(levels)), seed)
        )
    except WorkloadError as error:
        raise typer.BadParameter(str(error)) from None
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    endpoint = Endpoint(
        url.rstrip("/") + "/chat/completions", model, headers, _extra_body(extra_body, ignore_eos)
    )
    started = time.time()
    summaries = _run_with_progress(endpoint, workload, levels, budget)
    results = {
        "tool": "stepflash bench",
        "url": url,
        "model": model,
        "started_at": started,
        "settings": {
            "concurrency": levels,
            "requests": budget.requests,
            "duration_s": budget.seconds,
            "input_tokens": None if prompts_file else input_tokens,
            "prompts_file": str(prompts_file) if prompts_file else None,
            "output_tokens": output_tokens,
            "extra_body": endpoint.extra_body,
        },
        "levels": summaries,
    }
    from stepflash.bench.plot import write_plot  # matplotlib: only when a plot is drawn

    output.mkdir(parents=True, exist_ok=True)
    stem = output / time.strftime("bench-%Y%m%d-%H%M%S", time.localtime(started))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    write_plot(results, stem.with_suffix(".png"))
    Console().print(_table(summaries))
    console.print(f"wrote {stem}.json and {stem}.png")
    if all(level["successful"] == 0 for level in summaries):
        raise typer.Exit(1)


def _run_with_progress(
    endpoint: Endpoint, workload: Any, levels: list[int], budget: Budget
) -> list[dict[str, Any]]:
    columns = (
        TextColumn("[bold]c={task.fields[level]}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} req/s  {task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:

        def on_level_start(level: int) -> OnResult:
            total = budget.requests
            task = progress.add_task("", total=total, level=level, rate="0.0", failed=0)
            begun = time.perf_counter()
            counts = {"done": 0, "failed": 0}

            def on_result(result: RequestResult) -> None:
                counts["done"] += 1
                counts["failed"] += 0 if result.ok else 1
                rate = counts["done"] / max(time.perf_counter() - begun, 1e-9)
                progress.update(task, advance=1, rate=f"{rate:.1f}", failed=counts["failed"])

            return on_result

        return asyncio.run(run_sweep(endpoint, workload, levels, budget, on_level_start))


def _cell(distribution: dict[str, float | None], key: str) -> str:
    value = distribution[key]
    return "-" if value is None else f"{value:.1f}"


def _table(summaries: list[dict[str, Any]]) -> Table:
    table = Table(title="stepflash bench (milliseconds unless noted)")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(
            str(s["concurrency"]),
            f"{s['successful']}/{s['requests']}" if s["failed"] else str(s["successful"]),
            f"{s['requests_per_s']:.1f}",
            f"{s['output_tokens_per_s']:.0f}",
            _cell(s["ttft_ms"], "p50"),
            _cell(s["ttft_ms"], "p99"),
            _cell(s["tpot_ms"], "p50"),
            _cell(s["e2e_latency_ms"], "p50"),
            _cell(s["e2e_latency_ms"], "p99"),
        )
    return table

"""What the gate and the ledger cost: the same load with accounts disabled, on SQLite, and on
PostgreSQL + Redis (two replicas' worth of shared state, one replica measured).

One run, one machine: the fast upstream (64 tokens per answer), the load generator, and
PostgreSQL/Redis share CPU core 1; the three stepflash gateways run side by side on core 0,
started afresh every round, and are loaded one at a time, in short cells whose order rotates
each round. "disabled" is
stepflash with no API key in its database (open on 127.0.0.1: no authentication, limits or
billing). With accounts, every request is authenticated, admitted (concurrency, RPM, TPM,
balance hold), charged in the ledger (durably, before the response's last byte) and settled.
The target: accounts cost at most 15% of throughput at concurrency 64.

A shared VM's speed drifts by tens of percent over minutes, more than the effect measured, so
each setup is compared with the disabled gateway *of the same round* and the median round
decides; the gateway's CPU time per request (from /proc) is reported beside req/s as a second,
independent estimate.

    .venv/bin/python benchmarks/accounts_overhead.py

Results go to benchmarks/results/accounts_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway_overhead import PYTHON, STEPFLASH, free_port, load, pinned, process
from stepflash.accounts.database import open_database
from stepflash.accounts.store import AccountStore
from tests.services import start_postgres, start_redis, stop_postgres, stop_redis

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_COST = 0.15
TICK = 1 / os.sysconf("SC_CLK_TCK")


def _config(path: Path, upstream: str) -> Path:
    path.write_text(
        f'[[models]]\nname = "fast"\nbackend = "openai"\nreplicas = ["{upstream}"]\n'
        'effort = "none"\nhealth_path = ""\n'
    )
    return path


def _make_key(database_url: str) -> str:
    """An account topped up to tier V5, whose limits this load stays well inside."""

    async def work() -> str:
        database = await open_database(database_url)
        try:
            store = AccountStore(database, "USD")
            key = await store.create_key("bench")
            await store.topup("bench", 10_000 * 1_000_000)
            return key.secret
        finally:
            await database.aclose()

    return asyncio.run(work())


@dataclass(frozen=True)
class Gateway:
    name: str
    url: str
    pid: int
    key: str


@contextmanager
def _gateway(name: str, config: Path, env: dict[str, str], key: str) -> Iterator[Gateway]:
    port = free_port()
    command = pinned(
        0,
        [
            STEPFLASH,
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
    )
    with process(f"accounts-{name}", command, f"http://127.0.0.1:{port}/ready", env) as child:
        yield Gateway(name, f"http://127.0.0.1:{port}/v1", child.pid, key)


def _pin(pid: int, core: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {core})


def _setups(tmp: Path, stack: ExitStack) -> dict[str, tuple[dict[str, str], str]]:
    """name -> (environment for stepflash, API key)."""
    redis = start_redis(tmp)
    stack.callback(stop_redis, redis)
    postgres = start_postgres()
    stack.callback(stop_postgres, postgres)
    _pin(redis.process.pid, 1)
    _pin(postgres.process.pid, 1)  # its backends, forked later, inherit the core
    sqlite_url = f"sqlite+aiosqlite:///{tmp}/accounts.db"
    postgres_url = postgres.create_database("bench")
    return {
        "disabled": ({"STEPFLASH_DATA_DIR": str(tmp / "open")}, "none"),
        "sqlite": ({"STEPFLASH_ACCOUNTS__DATABASE_URL": sqlite_url}, _make_key(sqlite_url)),
        "postgres+redis": (
            {
                "STEPFLASH_ACCOUNTS__DATABASE_URL": postgres_url,
                "STEPFLASH_ACCOUNTS__REDIS_URL": redis.url,
            },
            _make_key(postgres_url),
        ),
    }


def _process_seconds(pid: int) -> float:
    """CPU seconds (user + system) that process `pid` has used, all of its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK


def _core_times() -> dict[str, tuple[int, int]]:
    """core -> (busy, total) jiffies since boot, from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            numbers = [int(value) for value in values]
            idle = numbers[3] + numbers[4]
            times[name] = (sum(numbers) - idle, sum(numbers))
    return times


def _cell(gateway: Gateway, stream: bool, seconds: float, warmup: float, concurrency: int) -> dict:
    """One slice of load on one gateway: the load's own figures, plus the gateway's CPU per
    request and how busy each core was, sampled over the load's measured window (its warm-up
    left out)."""
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(
            load, gateway.url, "fast", concurrency, stream, seconds, gateway.key, warmup
        )
        time.sleep(warmup)
        cpu, cores, start = _process_seconds(gateway.pid), _core_times(), time.monotonic()
        time.sleep(seconds)
        cpu_used = _process_seconds(gateway.pid) - cpu
        elapsed = time.monotonic() - start
        after = _core_times()
        row = result.result()
    requests = row["requests_per_second"] * elapsed
    row["gateway_cpu_us_per_request"] = 1e6 * cpu_used / requests if requests else float("nan")
    row["core_busy"] = {
        core: (after[core][0] - busy) / max(after[core][1] - total, 1)
        for core, (busy, total) in cores.items()
    }
    return row


def _round(
    number: int, gateways: list[Gateway], seconds: float, warmup: float, concurrency: int
) -> list[dict]:
    """Every setup once per mode, in an order rotated each round, so that a slow spell of the
    machine falls on each setup in turn rather than always on the same one."""
    rows = []
    shift = number % len(gateways)
    order = gateways[shift:] + gateways[:shift]
    for stream in (False, True):
        for gateway in order:
            row = {
                "setup": gateway.name,
                "round": number,
                **_cell(gateway, stream, seconds, warmup, concurrency),
            }
            busy = " ".join(
                f"{core} {100 * share:3.0f}%" for core, share in row["core_busy"].items()
            )
            print(
                f"round {number} {gateway.name:15} stream={stream!s:5} "
                f"{row['requests_per_second']:8.1f} req/s  "
                f"{row['gateway_cpu_us_per_request']:6.0f} µs CPU/req  {busy}  "
                f"p50 {row['latency_p50_ms']:7.2f} ms  errors {row['errors']}",
                flush=True,
            )
            rows.append(row)
    return rows


def _paired_costs(rows: list[dict], setup: str, stream: bool, figure: str) -> list[float]:
    """Per round: what `setup` cost against the disabled gateway measured in the same round."""
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        if row["stream"] == stream:
            by_round.setdefault(row["round"], {})[row["setup"]] = row[figure]
    costs = []
    for values in by_round.values():
        base, value = values["disabled"], values[setup]
        if figure == "requests_per_second":
            costs.append(1 - value / base)
        else:  # CPU per request: a setup that needs x times the CPU serves 1/x the requests
            costs.append(1 - base / value)
    return costs


def _summary(rows: list[dict], meta: dict) -> str:
    def mean(setup: str, stream: bool, figure: str) -> float:
        values = [r[figure] for r in rows if r["setup"] == setup and r["stream"] == stream]
        return statistics.fmean(values)

    lines = [
        "# Accounts overhead: gate + ledger vs accounts disabled",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        "- all three gateways on core 0 (new processes every round), loaded one at a time; "
        f"upstream, load, PostgreSQL and Redis on core 1; {meta['rounds']} rounds of "
        f"{meta['seconds']}s per cell after a {meta['warmup']}s warm-up, setups in a rotated "
        f"order each round; concurrency {meta['concurrency']}, 64 tokens per answer",
        "- cost = 1 - setup ÷ disabled, paired within each round (the machine's speed drifts "
        "between rounds; within one it is shared); the verdict is on the median round",
        "",
        "| setup | stream | req/s (mean) | CPU µs/req | cost, median round | cost, rounds "
        "| cost by CPU/req, median | target ≤ 15% |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for stream in (False, True):
        for setup in ("disabled", "sqlite", "postgres+redis"):
            rate = mean(setup, stream, "requests_per_second")
            cpu = mean(setup, stream, "gateway_cpu_us_per_request")
            if setup == "disabled":
                lines.append(f"| {setup} | {stream} | {rate:.1f} | {cpu:.0f} | | | | |")
                continue
            costs = _paired_costs(rows, setup, stream, "requests_per_second")
            cpu_costs = _paired_costs(rows, setup, stream, "gateway_cpu_us_per_request")
            cost = statistics.median(costs)
            verdict = "met" if cost <= TARGET_COST else "MISSED"
            spread = ", ".join(f"{100 * c:.0f}%" for c in costs)
            lines.append(
                f"| {setup} | {stream} | {rate:.1f} | {cpu:.0f} | {100 * cost:.1f}% | {spread} "
                f"| {100 * statistics.median(cpu_costs):.1f}% | {verdict} |"
            )
    errors = sum(r["errors"] for r in rows)
    lines += ["", f"Errors across all cells: {errors}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        tmp = Path(scratch)
        upstream_port = free_port()
        upstream = f"http://127.0.0.1:{upstream_port}/v1"
        stack.enter_context(
            process(
                "accounts-upstream",
                pinned(
                    1,
                    [
                        PYTHON,
                        str(HERE / "gateway" / "fast_upstream.py"),
                        "--port",
                        str(upstream_port),
                    ],
                ),
                f"{upstream}/models",
            )
        )
        config = _config(tmp / "stepflash.toml", upstream)
        setups = _setups(tmp, stack)
        for number in range(args.rounds):
            # Fresh gateway processes every round: two identical processes can differ by a
            # few percent for the whole of their lives (memory layout), which pairing within
            # a round cannot cancel; new processes each round average it out instead.
            with ExitStack() as round_stack:
                gateways = [
                    round_stack.enter_context(
                        _gateway(name, config, {"STEPFLASH_DATA_DIR": str(tmp / name), **env}, key)
                    )
                    for name, (env, key) in setups.items()
                ]
                rows += _round(number, gateways, args.seconds, args.warmup, args.concurrency)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
    }
    (RESULTS / "accounts_overhead.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    summary = _summary(rows, meta)
    (RESULTS / "accounts_overhead.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()

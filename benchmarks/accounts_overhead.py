"""What the gate and the ledger cost: the same load with accounts disabled, on SQLite, and on
PostgreSQL + Redis (two replicas' worth of shared state, one replica measured).

One run, one machine: the fast upstream (64 tokens per answer), the load generator, and
PostgreSQL/Redis share CPU core 1; stepflash gets core 0 to itself. "disabled" is stepflash
with no API key in its database (open on 127.0.0.1: no authentication, limits or billing).
With accounts, every request is authenticated, admitted (concurrency, RPM, TPM, balance hold),
charged in the ledger (durably, before the response's last byte) and settled. The target:
accounts cost at most 15% of throughput at concurrency 64.

    .venv/bin/python benchmarks/accounts_overhead.py

Results go to benchmarks/results/accounts_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


@contextmanager
def _gateway(name: str, config: Path, env: dict[str, str]) -> Iterator[str]:
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
    with process(f"accounts-{name}", command, f"http://127.0.0.1:{port}/ready", env):
        yield f"http://127.0.0.1:{port}/v1"


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


def _measure(name: str, url: str, key: str, seconds: float, concurrency: int) -> list[dict]:
    rows = []
    for stream in (False, True):
        row = {"setup": name, **load(url, "fast", concurrency, stream, seconds, key)}
        print(
            f"{name:15} stream={stream!s:5} {row['requests_per_second']:8.1f} req/s  "
            f"p50 {row['latency_p50_ms']:7.2f} ms  errors {row['errors']}",
            flush=True,
        )
        rows.append(row)
    return rows


def _summary(rows: list[dict], meta: dict) -> str:
    def rates(setup: str, stream: bool) -> list[float]:
        return [
            r["requests_per_second"] for r in rows if r["setup"] == setup and r["stream"] == stream
        ]

    def rate(setup: str, stream: bool) -> float:
        values = rates(setup, stream)
        return sum(values) / len(values)

    lines = [
        "# Accounts overhead: gate + ledger vs accounts disabled",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- stepflash on core 0; upstream, load, PostgreSQL and Redis on core 1; "
        f"{meta['seconds']}s per cell after a 2s warm-up, {meta['rounds']} rounds (mean), "
        f"concurrency {meta['concurrency']}, 64 tokens per answer",
        "",
        "| setup | stream | req/s | per round | vs disabled | cost | target ≤ 15% |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for stream in (False, True):
        base = rate("disabled", stream)
        for setup in ("disabled", "sqlite", "postgres+redis"):
            value = rate(setup, stream)
            cost = 1 - value / base
            verdict = "" if setup == "disabled" else ("met" if cost <= TARGET_COST else "MISSED")
            rounds = ", ".join(f"{r:.0f}" for r in rates(setup, stream))
            lines.append(
                f"| {setup} | {stream} | {value:.1f} | {rounds} | {value / base:.3f} | "
                f"{100 * cost:.1f}% | {verdict} |"
            )
    errors = sum(r["errors"] for r in rows)
    lines += ["", f"Errors across all cells: {errors}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
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
        for _round in range(args.rounds):
            for name, (env, key) in setups.items():
                with _gateway(name, config, {"STEPFLASH_DATA_DIR": str(tmp / name), **env}) as url:
                    rows += _measure(name, url, key, args.seconds, args.concurrency)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "seconds": args.seconds,
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

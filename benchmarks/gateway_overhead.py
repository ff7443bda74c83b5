"""What a gateway costs: stepflash vs LiteLLM's proxy vs talking to the upstream directly.

One run, one machine: a fast local upstream (64 tokens per answer) and the load generator
share CPU core 1; the gateway under test gets core 0 to itself (taskset). For each target and
each concurrency (1, 16, 64), streaming and not, a closed-loop load runs for --seconds.

    .venv/bin/python benchmarks/gateway_overhead.py --litellm /tmp/litellm-venv/bin/litellm

LiteLLM is installed apart from stepflash (`python -m venv /tmp/litellm-venv &&
/tmp/litellm-venv/bin/pip install 'litellm[proxy]'`); without --litellm it is skipped.
Results go to benchmarks/results/gateway_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PYTHON = sys.executable
STEPFLASH = str(Path(PYTHON).with_name("stepflash"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(core: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") else command


@contextmanager
def process(name: str, command: list[str], ready_url: str, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen]:
    log = (RESULTS / f"gateway_overhead-{name}.log").open("wb")
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 120
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited early; see {log.name}")
            try:
                if httpx.get(ready_url, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log.name}")
            time.sleep(0.3)
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def load(url: str, model: str, concurrency: int, stream: bool, seconds: float,
         api_key: str = "sk-bench", warmup: float = 2.0) -> dict:
    command = pinned(1, [PYTHON, str(HERE / "gateway" / "load.py"), "--url", url, "--model",
                         model, "--concurrency", str(concurrency), "--seconds", str(seconds),
                         "--api-key", api_key, "--warmup", str(warmup)])
    if stream:
        command.append("--stream")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(name: str, url: str, model: str, seconds: float, levels: list[int]) -> list[dict]:
    rows = []
    for stream in (False, True):
        for concurrency in levels:
            row = {"target": name, **load(url, model, concurrency, stream, seconds)}
            print(f"{name:10} c={concurrency:<3} stream={stream!s:5} "
                  f"{row['requests_per_second']:8.1f} req/s  p50 {row['latency_p50_ms']:7.2f} ms"
                  f"  ttft {row['ttft_p50_ms']:7.2f} ms  errors {row['errors']}", flush=True)
            rows.append(row)
    return rows


def stepflash_config(path: Path, upstream: str) -> None:
    path.write_text(f"""
[[models]]
name = "fast"
backend = "openai"
replicas = ["{upstream}"]
effort = "none"
health_path = ""
""")


def litellm_config(path: Path, upstream: str) -> None:
    path.write_text(f"""
model_list:
  - model_name: fast
    litellm_params:
      model: openai/fast
      api_base: {upstream}
      api_key: bench
""")


def summarise(rows: list[dict]) -> str:
    def get(target: str, concurrency: int, stream: bool) -> dict | None:
        return next((r for r in rows if r["target"] == target and r["concurrency"] == concurrency
                     and r["stream"] == stream), None)

    lines = ["| target | stream | concurrency | req/s | p50 ms | p99 ms | TTFT p50 ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['target']} | {row['stream']} | {row['concurrency']} | "
                     f"{row['requests_per_second']:.1f} | {row['latency_p50_ms']:.2f} | "
                     f"{row['latency_p99_ms']:.2f} | {row['ttft_p50_ms']:.2f} | {row['errors']} |")
    lines += ["", "| ratio | streaming | value |", "|---|---|---:|"]
    top = max(r["concurrency"] for r in rows)
    for stream in (False, True):
        ours, direct, theirs = (get(t, top, stream) for t in ("stepflash", "direct", "litellm"))
        if ours and theirs:
            ratio = ours["requests_per_second"] / theirs["requests_per_second"]
            lines.append(f"| stepflash ÷ LiteLLM req/s at c={top} (target ≥ 20) | {stream} "
                         f"| {ratio:.1f} |")
        if ours and direct:
            ratio = ours["requests_per_second"] / direct["requests_per_second"]
            lines.append(f"| stepflash ÷ direct req/s at c={top} | {stream} | {ratio:.2f} |")
        ours1, direct1 = get("stepflash", 1, stream), get("direct", 1, stream)
        if ours1 and direct1:
            added = ours1["ttft_p50_ms"] - direct1["ttft_p50_ms"]
            lines.append(f"| stepflash added TTFT p50 at c=1, ms (target ≤ 1) | {stream} "
                         f"| {added:.2f} |")
        theirs1 = get("litellm", 1, stream)
        if theirs1 and direct1:
            added = theirs1["ttft_p50_ms"] - direct1["ttft_p50_ms"]
            lines.append(f"| LiteLLM added TTFT p50 at c=1, ms | {stream} | {added:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm", help="path to the litellm executable (skipped if absent)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--only", default="direct,stepflash,litellm")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    targets = args.only.split(",")
    RESULTS.mkdir(exist_ok=True)
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    rows: list[dict] = []
    with process("upstream", pinned(1, [PYTHON, str(HERE / "gateway" / "fast_upstream.py"),
                                         "--port", str(upstream_port)]), f"{upstream}/models"):
        if "direct" in targets:
            rows += measure("direct", upstream, "fast", args.seconds, levels)
        if "stepflash" in targets:
            port = free_port()
            config = RESULTS / "gateway_overhead-stepflash.toml"
            stepflash_config(config, upstream)
            command = pinned(0, [STEPFLASH, "serve", "--config", str(config), "--port",
                                 str(port), "--log-level", "warning"])
            with process("stepflash", command, f"http://127.0.0.1:{port}/ready"):
                rows += measure("stepflash", f"http://127.0.0.1:{port}/v1", "fast",
                                args.seconds, levels)
        if "litellm" in targets and args.litellm:
            port = free_port()
            config = RESULTS / "gateway_overhead-litellm.yaml"
            litellm_config(config, upstream)
            command = pinned(0, [args.litellm, "--config", str(config), "--port", str(port),
                                 "--num_workers", "1"])
            # LiteLLM refuses to start unauthenticated; the load generator sends this key.
            with process("litellm", command, f"http://127.0.0.1:{port}/health/liveliness",
                         env={"LITELLM_MASTER_KEY": "sk-bench"}):
                rows += measure("litellm", f"http://127.0.0.1:{port}/v1", "fast",
                                args.seconds, levels)
    summary = summarise(rows)
    header = (f"# Gateway overhead\n\n- date: {datetime.now(UTC).isoformat(timespec='seconds')}\n"
              f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
              f"{platform.python_version()}\n- gateway on core 0; upstream and load on core 1; "
              f"{args.seconds:g}s per cell after a 2s warm-up; 64 tokens per answer\n\n")
    (RESULTS / "gateway_overhead.md").write_text(header + summary + "\n")
    (RESULTS / "gateway_overhead.json").write_text(json.dumps(rows, indent=2))
    print(summary)


if __name__ == "__main__":
    main()

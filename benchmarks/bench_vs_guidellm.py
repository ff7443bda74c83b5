"""Benchmark the benchmark: `stepflash bench` and guidellm against the same paced upstream.

Part A (agreement): the paced upstream (benchmarks/paced_upstream.py, pinned to core 1)
answers every request with a known TTFT and inter-token time. At each concurrency level both
tools, pinned to core 0 and run one after the other, send the same number of streamed chat
requests of the same sizes; their output tokens/s, requests/s and TTFT must agree within 10%.

Part B (one core): the same upstream with no delays; each tool, alone on core 0, drives as
many requests as it can at one concurrency. stepflash bench must sustain at least
guidellm's request rate.

    python3 -m venv /tmp/guidellm-venv
    /tmp/guidellm-venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/guidellm-venv/bin/pip install guidellm
    .venv/bin/python benchmarks/bench_vs_guidellm.py --guidellm /tmp/guidellm-venv/bin/guidellm

guidellm needs a Hugging Face tokenizer to size its prompts; with no hub access the script
trains a small byte-level BPE on guidellm's own synthetic text and passes it as a local path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 0.10
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

TOKENIZER_SCRIPT = """
import json, os, sys
from faker import Faker
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
out = sys.argv[1]
fake = Faker(); fake.seed_instance(0)
corpus = [fake.text(max_nb_chars=2000) for _ in range(2000)]
tokenizer = Tokenizer(models.BPE(unk_token=None))
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False)
tokenizer.train_from_iterator(corpus, trainer)
special = "<|endoftext|>"
PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=special, eos_token=special,
                        unk_token=special, pad_token=special,
                        model_max_length=1_000_000).save_pretrained(out)
config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": special,
          "eos_token": special, "unk_token": special, "pad_token": special,
          "model_max_length": 1_000_000, "clean_up_tokenization_spaces": False}
json.dump(config, open(os.path.join(out, "tokenizer_config.json"), "w"))
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Upstream:
    """The paced upstream as a child process on its own core."""

    def __init__(self, ttft_ms: float, itl_ms: float, core: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [
            "taskset",
            "-c",
            str(core),
            sys.executable,
            str(ROOT / "benchmarks" / "paced_upstream.py"),
            "--port",
            str(self.port),
            "--ttft-ms",
            str(ttft_ms),
            "--itl-ms",
            str(itl_ms),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            try:
                httpx.get(f"{self.url}/models", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the paced upstream did not start")

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def cpu_seconds(command: list[str], env: dict[str, str], log: Path) -> float:
    """Run a command to completion; return its (and its children's) CPU seconds."""
    before = os.times()
    with log.open("w") as output:
        subprocess.run(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, check=True, timeout=1200
        )
    after = os.times()
    return (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def run_stepflash(
    url: str, concurrency: int, requests: int, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        "taskset",
        "-c",
        "0",
        str(ROOT / ".venv" / "bin" / "stepflash"),
        "bench",
        "--url",
        url,
        "--model",
        "paced",
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--input-tokens",
        str(args.input_tokens),
        "--output-tokens",
        str(args.output_tokens),
        "--ignore-eos",
        "-o",
        str(folder),
    ]
    cpu = cpu_seconds(command, {**os.environ, "COLUMNS": "160"}, folder / "run.log")
    (path,) = sorted(folder.glob("bench-*.json"))[-1:]
    level = json.loads(path.read_text())["levels"][0]
    return {
        "requests_per_s": level["requests_per_s"],
        "output_tokens_per_s": level["output_tokens_per_s"],
        "ttft_mean_ms": level["ttft_ms"]["mean"],
        "ttft_median_ms": level["ttft_ms"]["p50"],
        "ttft_p99_ms": level["ttft_ms"]["p99"],
        "itl_mean_ms": level["tpot_ms"]["mean"],
        "e2e_median_ms": level["e2e_latency_ms"]["p50"],
        "successful": level["successful"],
        "cpu_seconds": round(cpu, 2),
    }


def run_guidellm(
    url: str,
    concurrency: int,
    requests: int,
    args: argparse.Namespace,
    tokenizer: Path,
    folder: Path,
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "guidellm.json"
    command = [
        "taskset",
        "-c",
        "0",
        args.guidellm,
        "run",
        "--backend",
        f"kind=openai_http,target={url.removesuffix('/v1')},"
        "request_format=/v1/chat/completions,model=paced",
        "--profile",
        f"kind=concurrent,streams={concurrency}",
        "--constraint",
        f"kind=max_requests,count={requests}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={args.input_tokens},output_tokens={args.output_tokens}",
        "--tokenizer",
        f"kind=huggingface_auto,model={tokenizer}",
        "--output",
        f"kind=json,path={report}",
        "--disable-progress",
    ]
    env = {
        **os.environ,
        **OFFLINE,
        "GUIDELLM__MAX_WORKER_PROCESSES": "1",
        "GUIDELLM__LOGGING__LOG_FILE": str(folder / "guidellm.log"),
    }
    cpu = cpu_seconds(command, env, folder / "run.log")
    metrics = json.loads(report.read_text())["benchmarks"][0]["metrics"]

    def successful(name: str) -> dict[str, Any]:
        return dict(metrics[name]["successful"])

    return {
        "requests_per_s": round(successful("requests_per_second")["mean"], 3),
        "output_tokens_per_s": round(successful("output_tokens_per_second")["mean"], 2),
        "ttft_mean_ms": round(successful("time_to_first_token_ms")["mean"], 3),
        "ttft_median_ms": round(successful("time_to_first_token_ms")["median"], 3),
        "ttft_p99_ms": round(successful("time_to_first_token_ms")["percentiles"]["p99"], 3),
        "itl_mean_ms": round(successful("inter_token_latency_ms")["mean"], 3),
        "e2e_median_ms": round(successful("request_latency")["median"] * 1000, 3),
        "successful": int(successful("request_latency")["count"]),
        "cpu_seconds": round(cpu, 2),
    }


def build_tokenizer(args: argparse.Namespace, folder: Path) -> Path:
    tokenizer = folder / "tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        python = Path(args.guidellm).parent / "python"
        subprocess.run(
            [str(python), "-c", TOKENIZER_SCRIPT, str(tokenizer)],
            check=True,
            env={**os.environ, **OFFLINE},
            timeout=600,
        )
    return tokenizer


def agreement(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    compared = {}
    for key in ("output_tokens_per_s", "requests_per_s", "ttft_mean_ms", "ttft_median_ms"):
        ratio = ours[key] / theirs[key] if theirs[key] else float("inf")
        compared[key] = {"ratio": round(ratio, 4), "within_10pct": abs(ratio - 1) <= TOLERANCE}
    return compared


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--guidellm", required=True, help="path of the guidellm executable")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--one-core-concurrency", type=int, default=32)
    parser.add_argument("--one-core-requests", type=int, default=3000)
    parser.add_argument("--work", type=Path, default=RESULTS / "bench_vs_guidellm")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two cores: one for the upstream, one for the load generator")
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(args, args.work)
    versions = subprocess.run([args.guidellm, "--version"], capture_output=True, text=True)
    results: dict[str, Any] = {
        "guidellm_version": versions.stdout.strip() or versions.stderr.strip(),
        "settings": {key: str(value) for key, value in vars(args).items()},
        "agreement": [],
    }
    with Upstream(args.ttft_ms, args.itl_ms, core=1) as upstream:
        for level in [int(x) for x in args.levels.split(",")]:
            folder = args.work / f"paced-c{level}"
            # enough requests per worker that ramp-up and ramp-down stay a few percent
            count = max(args.requests, 30 * level)
            ours = run_stepflash(upstream.url, level, count, args, folder / "stepflash")
            theirs = run_guidellm(upstream.url, level, count, args, tokenizer, folder / "guidellm")
            row = {
                "concurrency": level,
                "requests": count,
                "stepflash": ours,
                "guidellm": theirs,
                "compared": agreement(ours, theirs),
            }
            results["agreement"].append(row)
            print(json.dumps(row), flush=True)
    with Upstream(0.0, 0.0, core=1) as upstream:
        level, count = args.one_core_concurrency, args.one_core_requests
        folder = args.work / "one-core"
        ours = run_stepflash(upstream.url, level, count, args, folder / "stepflash")
        theirs = run_guidellm(upstream.url, level, count, args, tokenizer, folder / "guidellm")
        results["one_core"] = {
            "concurrency": level,
            "requests": count,
            "stepflash": ours,
            "guidellm": theirs,
            "request_rate_ratio": round(ours["requests_per_s"] / theirs["requests_per_s"], 3),
        }
        print(json.dumps(results["one_core"]), flush=True)
    (RESULTS / "bench_vs_guidellm.json").write_text(json.dumps(results, indent=2))
    write_markdown(results)


def write_markdown(results: dict[str, Any]) -> None:
    lines = [
        "# stepflash bench vs guidellm",
        "",
        f"{results['guidellm_version']}; paced upstream "
        f"TTFT {results['settings']['ttft_ms']} ms, ITL {results['settings']['itl_ms']} ms, "
        f"{results['settings']['input_tokens']} in / {results['settings']['output_tokens']} out "
        f"tokens, at least {results['settings']['requests']} requests (30 per worker) per level; "
        "each tool alone on core 0, the upstream on core 1.",
        "",
        "| concurrency | tool | req/s | out tok/s | TTFT mean | TTFT median | ITL mean | "
        "E2E median | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["agreement"]:
        for tool in ("stepflash", "guidellm"):
            r = row[tool]
            lines.append(
                f"| {row['concurrency']} | {tool} | {r['requests_per_s']} | "
                f"{r['output_tokens_per_s']} | {r['ttft_mean_ms']} | {r['ttft_median_ms']} | "
                f"{r['itl_mean_ms']} | {r['e2e_median_ms']} | {r['cpu_seconds']} |"
            )
        ratios = ", ".join(f"{k} {v['ratio']}" for k, v in row["compared"].items())
        lines.append(f"| {row['concurrency']} | ratio | {ratios} | | | | | | |")
    one = results["one_core"]
    lines += [
        "",
        f"One core, zero-delay upstream, concurrency {one['concurrency']}, "
        f"{one['requests']} requests: stepflash bench {one['stepflash']['requests_per_s']} req/s "
        f"({one['stepflash']['cpu_seconds']} CPU s), guidellm {one['guidellm']['requests_per_s']} "
        f"req/s ({one['guidellm']['cpu_seconds']} CPU s); ratio {one['request_rate_ratio']}.",
    ]
    (RESULTS / "bench_vs_guidellm.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

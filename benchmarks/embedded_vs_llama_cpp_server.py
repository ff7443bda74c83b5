#!/usr/bin/env python
"""Side-by-side benchmark: stepflash's embedded engine vs llama-cpp-python's own OpenAI server.

Both servers load the *same* GGUF file with the same context size, thread count and batch
sizes, and are driven by the *same* client code (httpx, streaming `POST /v1/chat/completions`,
temperature 0, fixed seed, fixed max_tokens). They run one after the other, never together.

Measured per server:

* decode throughput: for each of a few distinct prompts, time to first content token (TTFT)
  and decode tokens/s = (completion tokens - 1) / (time of last token - time of first token);
* prefix cache: TTFT of a ~2,000-token prompt right after an unrelated request (cold), then
  TTFT of the same long prefix with a different short question (warm), and warm/cold.

Results: a table on the terminal, `benchmarks/results/embedded_vs_llama_cpp_server-<model>.json`
(all raw numbers and machine info) and `...-<model>.md` (summary with ratios and targets).
Server output goes to `benchmarks/results/embedded_vs_llama_cpp_server-<model>-<server>.log`.

Run:  .venv/bin/python benchmarks/embedded_vs_llama_cpp_server.py --model tiny
Needs: pip install 'llama-cpp-python[server]==0.3.36'   (or: pip install -e '.[bench]')
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MODEL_NAME = "step-3.7-flash"  # the name requests use; llama.cpp's server gets it as its alias
SHORT_SYSTEM = "You are a helpful assistant."

# Distinct prompts (nothing in common beyond the short system message) that make a model talk
# for well over 128 tokens, so every request runs to max_tokens.
DECODE_PROMPTS = [
    "Explain step by step how a hash table stores keys, handles collisions with chaining and "
    "with open addressing, and when it resizes. Give a worked example for each.",
    "Write a Python function that parses a CSV file by hand, without the csv module, including "
    "quoted fields and escaped quotes, then walk through the code line by line.",
    "Describe the water cycle in detail: evaporation, transpiration, condensation, "
    "precipitation, infiltration and runoff, with a real-world example of each stage.",
]
WARMUP_PROMPT = "List five fruits and one fact about each of them."
UNRELATED_PROMPT = "What is the capital of Japan? Answer in one short sentence."
PREFIX_QUESTION_A = "According to the handbook above, what does section 3 say?"
PREFIX_QUESTION_B = "Summarise the handbook above in one sentence."

# Word lists for the long shared prefix: pseudo-prose that never repeats a sentence, so the
# tokenizer cannot compress it and the prompt really is ~2,000 tokens of distinct text.
_SUBJECTS = """archivist auditor beekeeper cartographer chemist courier curator dispatcher
engineer ferryman forester glassblower harbourmaster inspector librarian locksmith
machinist navigator orchardist potter quartermaster ranger surveyor tailor translator
upholsterer vintner warden weaver welder""".split()
_VERBS = """calibrates catalogues checks compares documents drains inspects labels logs measures
patches polishes records registers repairs replaces reviews samples seals sorts stacks
tests tightens tracks verifies""".split()
_OBJECT_WORDS = """anchor barometers boiler brass cargo compass copper drainage ferry fire grain
harbour kiln ledger lock loom map mooring orchard pressure pump rain signal solar spare storm
tide water weather wind chains valves fittings manifests cards pipes grates timetables hoses
silos lights thermometers books cylinders shuttles drawers ropes ladders gauges seals flags
panels fuses shutters tables filters vanes turbines""".split()


def _phrases(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.split("|") if part.strip()]


_WHEN = """at dawn|before the noon bell|after the evening tide|every second Tuesday|during the
first frost|when the river rises|at the end of each shift|before any festival|after heavy rain|
on the last day of the month|whenever a ship docks|before the winter inventory"""
_PLACES = """the north pier|the old mill|the east warehouse|the signal tower|the lower dock|
the glassworks|the seed vault|the pumping station|the clock tower|the ferry landing|
the timber yard|the west orchard|the salt store|the weather station"""
_REASONS = """so that nothing is lost in transit|because the insurers require it|to keep the
records honest|as agreed at the spring council|since the last flood damaged the old ones|to
avoid disputes with the guild|so the apprentices can learn the routine|because the
harbour master insists on it"""


WHEN, PLACES, REASONS = _phrases(_WHEN), _phrases(_PLACES), _phrases(_REASONS)


def build_prefix(target_chars: int, seed: int) -> str:
    """A deterministic 'handbook' of varied, non-repeating sentences of about target_chars."""
    rng = random.Random(seed)
    lines = [f"Operations handbook of the harbour town of Vel{seed % 97:02d}, edition {seed}."]
    seen: set[str] = set()
    section = 0
    while sum(len(line) + 1 for line in lines) < target_chars:
        section += 1
        lines.append(f"\nSection {section}.")
        for _ in range(rng.randint(3, 5)):
            while True:
                obj = " ".join(rng.sample(_OBJECT_WORDS, 2))
                sentence = (
                    f"The {rng.choice(_SUBJECTS)} at {rng.choice(PLACES)} {rng.choice(_VERBS)} "
                    f"the {obj} {rng.choice(WHEN)}, {rng.choice(REASONS)}; "
                    f"tally {rng.randint(2, 999)}."
                )
                if sentence not in seen:
                    seen.add(sentence)
                    break
            lines.append(sentence)
    return "\n".join(lines)


# -- server processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_jiffies() -> tuple[int, int] | None:
    """(busy, iowait) CPU time of the whole machine (Linux /proc/stat), in clock ticks."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return user + nice + system + irq + softirq + steal, iowait
    except (OSError, ValueError, IndexError):
        return None


def _process_jiffies(pid: int) -> int:
    """user + system CPU time of one process (all its threads), in clock ticks; 0 if gone."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(after_name[11]) + int(after_name[12])
    except (OSError, ValueError, IndexError):
        return 0


class CpuMeter:
    """How many cores the server, this client and *everything else* used over an interval.

    `other_cores` well above zero means another workload competed for the CPU and the
    numbers measured in that interval are not trustworthy.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.pids = [os.getpid()] + ([server_pid] if server_pid else [])
        self._start = self._sample()

    def _sample(self) -> tuple[float, tuple[int, int] | None, int, int]:
        return (time.perf_counter(), _machine_jiffies(),
                _process_jiffies(self.pids[0]), sum(_process_jiffies(p) for p in self.pids[1:]))

    def read(self) -> dict[str, float] | None:
        wall0, machine0, own0, server0 = self._start
        wall1, machine1, own1, server1 = self._sample()
        if machine0 is None or machine1 is None or wall1 <= wall0:
            return None
        wall = wall1 - wall0
        busy, iowait, own, server = (
            (b - a) / CLOCK_TICKS
            for a, b in ((machine0[0], machine1[0]), (machine0[1], machine1[1]), (own0, own1), (server0, server1))
        )
        return {
            "wall_s": round(wall, 4),
            "server_cores": round(server / wall, 3),
            "client_cores": round(own / wall, 3),
            "other_cores": round(max(busy - server - own, 0.0) / wall, 3),
            "iowait_cores": round(iowait / wall, 3),
        }


def wait_until_idle(limit_s: float, threshold: float, say) -> dict[str, Any]:
    """Wait (up to limit_s) for a 2-second window in which other processes use < threshold cores."""
    started = time.perf_counter()
    last = None
    while True:
        meter = CpuMeter(None)
        time.sleep(2.0)
        last = meter.read()
        if last is None or last["other_cores"] < threshold:
            return {"waited_s": round(time.perf_counter() - started, 1), "idle": True, "last_window": last}
        if time.perf_counter() - started >= limit_s:
            say(f"  [yellow]machine still busy after {limit_s:.0f}s (other processes use "
                f"{last['other_cores']:.2f} cores); measuring anyway[/yellow]")
            return {"waited_s": round(time.perf_counter() - started, 1), "idle": False, "last_window": last}
        if time.perf_counter() - started < 2.5:
            say(f"  waiting for the machine to be idle (other processes use {last['other_cores']:.2f} cores)...")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the benchmark itself dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Server:
    """A child server process in its own process group, with its output in a log file."""

    name: str
    command: list[str]
    base_url: str
    ready_path: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    startup_seconds: float | None = None
    _log_offset: int = 0

    def start(self, timeout: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        log.write(f"$ {' '.join(self.command)}\n".encode())
        log.write(f"env: {json.dumps(self.env)}\n\n".encode())
        log.flush()
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: we kill it as a whole
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        log.close()  # the child holds its own descriptor
        deadline = started + timeout
        with httpx.Client(timeout=5) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {self.process.returncode} before it was "
                        f"ready; last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(self.base_url + self.ready_path).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() > deadline:
                    raise RuntimeError(
                        f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.25)
        self.startup_seconds = time.perf_counter() - started
        self._log_offset = self.log_path.stat().st_size

    def new_log_text(self) -> str:
        """Log output written since the last call (best effort)."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            data = log.read()
            self._log_offset += len(data)
            return data.decode(errors="replace")
        return ""

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # No need to be gentle with a benchmark server: SIGTERM, then SIGKILL.
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def running(server: Server, timeout: float) -> Iterator[Server]:
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()


# -- client --------------------------------------------------------------------------------


def chat_body(messages: list[dict[str, str]], max_tokens: int, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def stream_chat(client: httpx.Client, base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one streaming request; return timings (seconds from sending) and what came back."""
    content_times: list[float] = []
    pieces: list[str] = []
    usage: dict[str, Any] | None = None
    finish_reason = None
    errors: list[Any] = []
    chunks = 0
    started = time.perf_counter()
    with client.stream("POST", base_url + "/v1/chat/completions", json=body) as response:
        status = response.status_code
        if status != 200:
            response.read()
            errors.append(response.text[:2000])
        else:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                now = time.perf_counter() - started
                chunks += 1
                data = json.loads(payload)
                if "error" in data:
                    errors.append(data["error"])
                    continue
                if data.get("usage"):
                    usage = data["usage"]
                for choice in data.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        content_times.append(now)
                        pieces.append(text)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
    total = time.perf_counter() - started
    completion_tokens = usage.get("completion_tokens") if usage else None
    counted = completion_tokens if completion_tokens is not None else len(content_times)
    result: dict[str, Any] = {
        "status": status,
        "errors": errors,
        "total_s": total,
        "ttft_s": content_times[0] if content_times else None,
        "last_token_s": content_times[-1] if content_times else None,
        "content_chunks": len(content_times),
        "sse_chunks": chunks,
        "usage": usage,
        "completion_tokens": counted,
        "completion_tokens_source": "usage" if completion_tokens is not None else "content chunks",
        "finish_reason": finish_reason,
        "text": "".join(pieces),
        "content_chunk_times_s": [round(t, 5) for t in content_times],
    }
    span = (content_times[-1] - content_times[0]) if len(content_times) > 1 else 0.0
    result["decode_tok_s"] = (counted - 1) / span if span > 0 and counted > 1 else None
    result["decode_chunks_s"] = (len(content_times) - 1) / span if span > 0 else None
    return result


_PERF = re.compile(
    r"llama_perf_context_print:\s+(prompt eval|eval) time =\s+([\d.]+) ms /\s+(\d+) (?:tokens|runs)"
)


def parse_llama_perf(log: str) -> dict[str, float] | None:
    """llama.cpp's own timings for the last request, from a verbose llama_cpp.server's log."""
    found: dict[str, float] = {}
    for kind, ms, count in _PERF.findall(log):
        key = "prompt" if kind == "prompt eval" else "eval"
        found[f"{key}_ms"], found[f"{key}_tokens"] = float(ms), int(count)
    if "eval_ms" in found and found["eval_ms"] > 0:
        found["eval_tok_s"] = round(found["eval_tokens"] / found["eval_ms"] * 1000, 2)
    return found or None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure(server: Server, args: argparse.Namespace, extra: dict[str, Any], say) -> dict[str, Any]:
    """The whole measurement sequence against one running server."""
    url = server.base_url
    seed = args.seed
    out: dict[str, Any] = {"startup_s": server.startup_seconds}

    def ask(label: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        meter = CpuMeter(server.process.pid if server.process else None)
        result = stream_chat(client, url, chat_body(messages, max_tokens, seed, extra))
        result["cpu"] = meter.read()
        result["label"] = label
        time.sleep(0.05)  # let the server's last log lines for this request land (not timed)
        log = server.new_log_text()
        hits = [line for line in log.splitlines() if "prefix-match" in line]
        if hits:
            result["server_log_prefix_match"] = hits[-1].strip()
        perf = parse_llama_perf(log)
        if perf:
            result["server_log_perf"] = perf
        if result["status"] != 200 or result["errors"]:
            say(f"  [red]{server.name} {label}: HTTP {result['status']} {result['errors']}[/red]")
        else:
            ttft = result["ttft_s"]
            rate = result["decode_tok_s"]
            say(
                f"  {server.name:<9} {label:<18} ttft {ttft * 1000 if ttft is not None else float('nan'):8.1f} ms"
                f"  tokens {result['completion_tokens']!s:>4} ({result['completion_tokens_source']})"
                f"  decode {rate if rate is not None else float('nan'):6.2f} tok/s"
                f"  finish {result['finish_reason']}"
                + (f"  [yellow]other procs {result['cpu']['other_cores']:.2f} cores[/yellow]"
                   if result["cpu"] and result["cpu"]["other_cores"] >= args.busy_threshold else "")
            )
        return result

    with httpx.Client(timeout=httpx.Timeout(args.request_timeout, connect=10)) as client:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            out["models_endpoint"] = client.get(url + "/v1/models").json()
        out["warmup"] = ask(
            "warm-up", [{"role": "system", "content": SHORT_SYSTEM}, {"role": "user", "content": WARMUP_PROMPT}],
            args.max_tokens,
        )
        short = lambda text: [{"role": "system", "content": SHORT_SYSTEM}, {"role": "user", "content": text}]  # noqa: E731

        def flush() -> dict[str, Any]:
            """An unrelated request: afterwards nothing useful is left in the KV cache."""
            return ask("flush", short(UNRELATED_PROMPT), args.prefix_max_tokens)

        def contended(result: dict[str, Any]) -> bool:
            return bool(result.get("cpu")) and result["cpu"]["other_cores"] >= args.busy_threshold

        def with_retries(run_once, flush_first: bool = True) -> dict[str, Any]:
            """Run a measurement; redo it (up to --retries) when other processes took CPU."""
            attempts: list[tuple[float, dict[str, Any]]] = []
            for attempt in range(args.retries + 1):
                record, measured = run_once()
                record["contended"] = any(contended(r) for r in measured)
                worst = max((r["cpu"]["other_cores"] for r in measured if r.get("cpu")), default=0.0)
                attempts.append((worst, record))
                if not record["contended"] or attempt == args.retries:
                    # keep the cleanest attempt (the last one unless all were contended)
                    best = min(range(len(attempts)), key=lambda i: (attempts[i][1]["contended"], attempts[i][0]))
                    chosen = attempts[best][1]
                    chosen["discarded_attempts"] = [a for i, (_, a) in enumerate(attempts) if i != best]
                    return chosen
                say("  [yellow]other processes competed for the CPU: measuring that again[/yellow]")
                if args.wait_idle > 0:
                    wait_until_idle(min(args.wait_idle, 120), args.busy_threshold, say)
                if flush_first:
                    flush()  # never let a retry find its own prompt in the cache
            raise AssertionError("unreachable")

        decode: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            for index, prompt in enumerate(DECODE_PROMPTS):
                def once(repeat=repeat, index=index, prompt=prompt):
                    result = ask(f"decode r{repeat} p{index}", short(prompt), args.max_tokens)
                    result.update(repeat=repeat, prompt_index=index)
                    return result, [result]

                decode.append(with_retries(once))
        out["decode"] = decode

        prefix_runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            prefix = build_prefix(args.prefix_chars, seed=1000 + repeat)

            def once(repeat=repeat, prefix=prefix):
                flushed = flush()
                flushed["label"] = f"prefix r{repeat} flush"
                cold = ask(
                    f"prefix r{repeat} cold",
                    [{"role": "system", "content": prefix}, {"role": "user", "content": PREFIX_QUESTION_A}],
                    args.prefix_max_tokens,
                )
                warm = ask(
                    f"prefix r{repeat} warm",
                    [{"role": "system", "content": prefix}, {"role": "user", "content": PREFIX_QUESTION_B}],
                    args.prefix_max_tokens,
                )
                ratio = (
                    warm["ttft_s"] / cold["ttft_s"]
                    if warm["ttft_s"] is not None and cold["ttft_s"]
                    else None
                )
                record = {
                    "repeat": repeat, "prefix_chars": len(prefix), "flush": flushed, "cold": cold,
                    "warm": warm, "warm_over_cold": ratio,
                }
                return record, [cold, warm]

            prefix_runs.append(with_retries(once, flush_first=False))  # once() flushes itself
        out["prefix"] = prefix_runs

    out["summary"] = summarize(out, args.threads)
    return out


def summarize(run: dict[str, Any], threads: int) -> dict[str, Any]:
    """Medians and counts for one server's measurements (also re-run by --rerender)."""
    decode, prefix_runs = run["decode"], run["prefix"]
    # llama.cpp's threads spin while they have work: a server that keeps them busy uses about
    # `threads` cores; much less means it stalled on something else (its Python side, the GIL).
    full_cpu = 0.85 * min(threads, os.cpu_count() or 1)
    ok = [r for r in decode if r["status"] == 200 and not r["errors"]]
    # Medians leave out measurements that stayed contended after their retries, as long as
    # at least one clean measurement is left; everything is still in the JSON.
    clean_decode = [r for r in ok if not r.get("contended")] or ok
    clean_prefix = [p for p in prefix_runs if not p.get("contended")] or prefix_runs
    decode_full_cpu = [r for r in clean_decode if r.get("cpu") and r["cpu"]["server_cores"] >= full_cpu]
    measured = decode + [p[k] for p in prefix_runs for k in ("cold", "warm")]
    other = [r["cpu"]["other_cores"] for r in measured if r.get("cpu")]
    return {
        "contended_in_medians": sum(1 for r in [*clean_decode, *clean_prefix] if r.get("contended")),
        "decode_requests_in_medians": len(clean_decode),
        "prefix_runs_in_medians": len(clean_prefix),
        "decode_tok_s_median": _median([r["decode_tok_s"] for r in clean_decode]),
        "decode_tok_s_median_full_cpu": _median([r["decode_tok_s"] for r in decode_full_cpu]),
        "decode_requests_full_cpu": len(decode_full_cpu),
        "server_internal_eval_tok_s_median": _median(
            [(r.get("server_log_perf") or {}).get("eval_tok_s") for r in clean_decode]),
        "decode_tok_s_mean": statistics.fmean([r["decode_tok_s"] for r in clean_decode if r["decode_tok_s"]])
        if any(r["decode_tok_s"] for r in clean_decode) else None,
        "decode_chunks_s_median": _median([r["decode_chunks_s"] for r in clean_decode]),
        "ttft_s_median": _median([r["ttft_s"] for r in clean_decode]),
        "completion_tokens": [r["completion_tokens"] for r in decode],
        "completion_tokens_source": sorted({r["completion_tokens_source"] for r in decode}),
        "failed_requests": len(decode) - len(ok),
        "contended_measurements": sum(1 for r in [*decode, *prefix_runs] if r.get("contended")),
        "discarded_contended_attempts": sum(len(r.get("discarded_attempts", [])) for r in [*decode, *prefix_runs]),
        "other_processes_cores_mean": statistics.fmean(other) if other else None,
        "other_processes_cores_max": max(other) if other else None,
        "requests_server_below_85pct_of_threads": sum(
            1 for r in measured
            if r.get("cpu") and r["cpu"]["server_cores"] < full_cpu
        ),
        "server_cores_during_decode_median": _median(
            [r["cpu"]["server_cores"] for r in decode if r.get("cpu")]),
        "prefix_cold_ttft_s_median": _median([p["cold"]["ttft_s"] for p in clean_prefix]),
        "prefix_warm_ttft_s_median": _median([p["warm"]["ttft_s"] for p in clean_prefix]),
        "prefix_warm_over_cold_median": _median([p["warm_over_cold"] for p in clean_prefix]),
        "prefix_prompt_tokens": [
            (p["cold"]["usage"] or {}).get("prompt_tokens") for p in prefix_runs
        ],
        "prefix_warm_cached_tokens": [
            (p["warm"]["usage"] or {}).get("cached_tokens") for p in prefix_runs
        ],
    }


# -- machine info --------------------------------------------------------------------------


def machine_info(threads: int) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_kb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_kb = int(line.split()[1])
    affinity = None
    with contextlib.suppress(AttributeError, OSError):
        affinity = len(os.sched_getaffinity(0))
    versions = {}
    for dist in ("stepflash", "llama_cpp_python", "fastapi", "uvicorn", "httpx", "sse-starlette"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    system_info = None
    with contextlib.suppress(Exception):
        import llama_cpp

        system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "mem_total_gib": round(mem_total_kb / 1024**2, 1) if mem_total_kb else None,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "threads": threads,
        "versions": versions,
        "llama_cpp_system_info": system_info,
    }


# -- reporting -----------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, spec: str = ".2f", scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    s = results.get("stepflash", {}).get("summary", {})
    l = results.get("llama_cpp_server", {}).get("summary", {})
    rows = [
        ("stepflash decode tok/s ÷ llama.cpp decode tok/s (median)", _ratio(s.get("decode_tok_s_median"), l.get("decode_tok_s_median")), ">=", 0.95),
        ("same, only requests during which each server kept its threads busy", _ratio(s.get("decode_tok_s_median_full_cpu"), l.get("decode_tok_s_median_full_cpu")), ">=", 0.95),
        ("stepflash TTFT ÷ llama.cpp TTFT (short prompts, median)", _ratio(s.get("ttft_s_median"), l.get("ttft_s_median")), "<=", 1.1),
        ("stepflash TTFT ÷ llama.cpp TTFT (cold ~2k-token prompt)", _ratio(s.get("prefix_cold_ttft_s_median"), l.get("prefix_cold_ttft_s_median")), "<=", 1.1),
        ("stepflash prefix warm ÷ cold TTFT", s.get("prefix_warm_over_cold_median"), "<=", 0.3),
        ("llama.cpp server prefix warm ÷ cold TTFT (reference)", l.get("prefix_warm_over_cold_median"), None, None),
    ]
    out = []
    for name, value, op, target in rows:
        met = None
        if value is not None and target is not None:
            met = value >= target if op == ">=" else value <= target
        out.append({"metric": name, "value": value, "target": f"{op} {target}" if op else None, "met": met})
    return out


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = results.get("stepflash", {}).get("summary", {})
    l = results.get("llama_cpp_server", {}).get("summary", {})
    return [
        ("decode tok/s (median)", _fmt(s.get("decode_tok_s_median")), _fmt(l.get("decode_tok_s_median"))),
        ("decode tok/s (median of requests at full CPU)",
         f"{_fmt(s.get('decode_tok_s_median_full_cpu'))} (n={s.get('decode_requests_full_cpu')})",
         f"{_fmt(l.get('decode_tok_s_median_full_cpu'))} (n={l.get('decode_requests_full_cpu')})"),
        ("llama.cpp eval tok/s inside the server (its own log, median)",
         _fmt(s.get("server_internal_eval_tok_s_median")), _fmt(l.get("server_internal_eval_tok_s_median"))),
        ("decode content-chunks/s (median)", _fmt(s.get("decode_chunks_s_median")), _fmt(l.get("decode_chunks_s_median"))),
        ("TTFT short prompt, ms (median)", _fmt(s.get("ttft_s_median"), ".1f", 1000), _fmt(l.get("ttft_s_median"), ".1f", 1000)),
        ("completion tokens per request", str(s.get("completion_tokens")), str(l.get("completion_tokens"))),
        ("token count from", ", ".join(s.get("completion_tokens_source", [])), ", ".join(l.get("completion_tokens_source", []))),
        ("prefix cold TTFT, ms", _fmt(s.get("prefix_cold_ttft_s_median"), ".1f", 1000), _fmt(l.get("prefix_cold_ttft_s_median"), ".1f", 1000)),
        ("prefix warm TTFT, ms", _fmt(s.get("prefix_warm_ttft_s_median"), ".1f", 1000), _fmt(l.get("prefix_warm_ttft_s_median"), ".1f", 1000)),
        ("prefix warm ÷ cold", _fmt(s.get("prefix_warm_over_cold_median"), ".3f"), _fmt(l.get("prefix_warm_over_cold_median"), ".3f")),
        ("prefix prompt tokens (usage)", str(s.get("prefix_prompt_tokens")), str(l.get("prefix_prompt_tokens"))),
        ("startup until ready, s", _fmt(results.get("stepflash", {}).get("startup_s"), ".1f"), _fmt(results.get("llama_cpp_server", {}).get("startup_s"), ".1f")),
        ("failed requests", str(s.get("failed_requests")), str(l.get("failed_requests"))),
        ("server CPU use during decode, cores", _fmt(s.get("server_cores_during_decode_median")), _fmt(l.get("server_cores_during_decode_median"))),
        ("measured requests where the server used < 85% of its threads' CPU",
         str(s.get("requests_server_below_85pct_of_threads")), str(l.get("requests_server_below_85pct_of_threads"))),
        ("requests / prefix runs in medians",
         f"{s.get('decode_requests_in_medians')} / {s.get('prefix_runs_in_medians')}",
         f"{l.get('decode_requests_in_medians')} / {l.get('prefix_runs_in_medians')}"),
        ("measurements redone / still contended",
         f"{s.get('discarded_contended_attempts')} / {s.get('contended_measurements')}",
         f"{l.get('discarded_contended_attempts')} / {l.get('contended_measurements')}"),
        ("other processes' CPU, cores (mean / max)",
         f"{_fmt(s.get('other_processes_cores_mean'))} / {_fmt(s.get('other_processes_cores_max'))}",
         f"{_fmt(l.get('other_processes_cores_mean'))} / {_fmt(l.get('other_processes_cores_max'))}"),
    ]


def print_tables(results: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        for name, a, b in summary_rows(results):
            print(f"{name:<36} {a:>16} {b:>16}")
        for r in ratios(results):
            print(f"{r['metric']:<60} {_fmt(r['value'], '.3f'):>8} {r['target'] or '':>8} {r['met']}")
        return
    console = Console()
    table = Table(title=f"stepflash vs llama_cpp.server — model {results['config']['model']}, "
                        f"{results['config']['threads']} threads, n_ctx {results['config']['n_ctx']}")
    table.add_column("metric")
    table.add_column("stepflash", justify="right")
    table.add_column("llama_cpp.server", justify="right")
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    table = Table(title="ratios")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met", justify="center")
    for r in ratios(results):
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[r["met"]]
        table.add_row(r["metric"], _fmt(r["value"], ".3f"), r["target"] or "-", met)
    console.print(table)


def markdown(results: dict[str, Any]) -> str:
    cfg, machine = results["config"], results["machine"]
    lines = [
        f"# stepflash vs llama-cpp-python server — `{cfg['model']}`",
        "",
        f"- date: {machine['date']}",
        f"- machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['mem_total_gib']} GiB; "
        f"{machine['platform']}; Python {machine['python']}",
        f"- versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"- GGUF: `{cfg['gguf_path']}` ({cfg['gguf_bytes']:,} bytes)",
        f"- threads {cfg['threads']} (batch threads {cfg['threads_batch']}), n_ctx {cfg['n_ctx']}, "
        f"n_batch {cfg['n_batch']}, temperature 0, top_p 1, seed {cfg['seed']}, "
        f"max_tokens {cfg['max_tokens']} (prefix test: {cfg['prefix_max_tokens']}), repeats {cfg['repeats']}",
        f"- {len(DECODE_PROMPTS)} distinct decode prompts x {cfg['repeats']}; one uncounted warm-up request per server; "
        f"shared prefix ~{cfg['prefix_chars']} characters",
        "",
        "## Ratios",
        "",
        "| metric | value | target | met |",
        "|---|---:|---:|:---:|",
    ]
    for r in ratios(results):
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        lines.append(f"| {r['metric']} | {_fmt(r['value'], '.3f')} | {r['target'] or '-'} | {met} |")
    lines += ["", "## Per server", "", "| metric | stepflash | llama_cpp.server |", "|---|---:|---:|"]
    for name, a, b in summary_rows(results):
        lines.append(f"| {name} | {a} | {b} |")
    lines += ["", "## Requests", "", "| server | request | TTFT ms | tokens | decode tok/s | finish |",
              "|---|---|---:|---:|---:|---|"]
    for key, label in (("stepflash", "stepflash"), ("llama_cpp_server", "llama_cpp.server")):
        run = results.get(key)
        if not run or "decode" not in run:
            continue
        requests = [run["warmup"], *run["decode"]]
        for p in run["prefix"]:
            requests += [p["flush"], p["cold"], p["warm"]]
        for r in requests:
            lines.append(
                f"| {label} | {r['label']} | {_fmt(r['ttft_s'], '.1f', 1000)} | {r['completion_tokens']} | "
                f"{_fmt(r['decode_tok_s'])} | {r['finish_reason']} |"
            )
    same = results.get("same_text")
    if same is not None:
        lines += ["", f"Decode answers identical between the two servers: {same}"]
    for note in results.get("notes", []):
        lines += ["", f"- {note}"]
    lines.append("")
    return "\n".join(lines)


def add_notes(results: dict[str, Any], busy_threshold: float) -> None:
    """Cross-server checks and warnings, as sentences in results["notes"]."""
    results["notes"] = []
    if "stepflash" in results and "llama_cpp_server" in results:
        a = [r["text"] for r in results["stepflash"]["decode"]]
        b = [r["text"] for r in results["llama_cpp_server"]["decode"]]
        results["same_text"] = a == b
        if a != b:
            results["notes"].append(
                "The two servers produced different decode answers (prompt templates or sampling "
                "differ); token counts per request are listed above."
            )
    for key, label in (("stepflash", "stepflash"), ("llama_cpp_server", "llama_cpp.server")):
        summary = (results.get(key) or {}).get("summary", {})
        if summary.get("contended_in_medians"):
            results["notes"].append(
                f"WARNING: {summary['contended_in_medians']} of {label}'s measurements in the medians "
                f"ran while other processes used >= {busy_threshold} CPU cores (no clean "
                "attempt was left); those numbers are contaminated - rerun on an idle machine "
                "(per-request `cpu` in the JSON shows which)."
            )
        elif summary.get("contended_measurements"):
            results["notes"].append(
                f"{summary['contended_measurements']} of {label}'s measurements stayed contended "
                "after their retries and were left out of the medians (they are in the JSON)."
            )
        stalled = summary.get("decode_requests_in_medians", 0) - summary.get("decode_requests_full_cpu", 0)
        if stalled > 0:
            results["notes"].append(
                f"{label} used less than 85% of its threads' CPU during {stalled} of the "
                f"{summary.get('decode_requests_in_medians')} decode requests in its median while "
                "other processes were quiet: its llama.cpp threads were idle part of the time, "
                "waiting on something else (e.g. the server's own Python work between tokens). "
                "The 'requests at full CPU' row and ratio leave those requests out."
            )


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="default", help="default, small, tiny or a .gguf path")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="generation threads for both servers")
    parser.add_argument("--repeats", type=int, default=1, help="times the decode prompts and the prefix test are repeated")
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens for the decode prompts")
    parser.add_argument("--prefix-max-tokens", type=int, default=8, help="max_tokens for the prefix-cache requests")
    parser.add_argument("--prefix-chars", type=int, default=8000, help="size of the shared prefix in characters")
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--n-batch", type=int, default=512, help="batch size for both servers (stepflash gets it as STEPFLASH_EMBEDDED__N_BATCH)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--servers", choices=["both", "stepflash", "llama"], default="both")
    parser.add_argument("--logits-all", action="store_true",
                        help="run llama_cpp.server with its own default logits_all=True (slower; stepflash uses False)")
    parser.add_argument("--wait-idle", type=float, default=300,
                        help="before each server, wait up to this many seconds for other processes to go quiet (0: don't)")
    parser.add_argument("--busy-threshold", type=float, default=0.15,
                        help="CPU cores used by other processes above which a measurement is flagged as contended")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a measurement is redone when other processes competed for the CPU")
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--rerender", action="store_true",
                        help="run nothing: recompute summaries and rewrite the .md from the existing .json")
    return parser.parse_args(argv)


def _stem(model: str) -> str:
    tag = Path(model).stem if model.endswith(".gguf") else model
    return f"embedded_vs_llama_cpp_server-{tag}"


def rerender(args: argparse.Namespace) -> int:
    json_path = args.results_dir / f"{_stem(args.model)}.json"
    results = json.loads(json_path.read_text())
    config = results["config"]
    threshold = config.get("busy_threshold_cores", args.busy_threshold)
    for key in ("stepflash", "llama_cpp_server"):
        if key in results and "decode" in results[key]:
            results[key]["summary"] = summarize(results[key], config["threads"])
    add_notes(results, threshold)
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    json_path.with_suffix(".md").write_text(markdown(results))
    print_tables(results)
    for note in results["notes"]:
        print(note)
    print(f"rewrote {json_path} and {json_path.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("threads", "repeats", "max_tokens", "prefix_max_tokens"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.retries < 0:
        raise SystemExit("--retries must be 0 or more")

    try:
        from rich.console import Console

        console = Console()
        say = console.print
    except ImportError:
        say = print

    # Ctrl-C, SIGTERM and SIGHUP all become KeyboardInterrupt, so the finally blocks stop the
    # children (SIGINT too: a shell starting us in the background would have it ignored).
    def _interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, _interrupt)

    if args.rerender:
        return rerender(args)

    from stepflash.engines.embedded.model_store import resolve_model

    gguf = resolve_model(args.model, Path.home() / ".cache" / "stepflash")
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = _stem(args.model)
    bindir = Path(sys.executable).parent
    stepflash_bin = bindir / "stepflash"
    if not stepflash_bin.exists():
        stepflash_bin = Path(shutil.which("stepflash") or "stepflash")
    threads_batch = os.cpu_count() or 1  # stepflash leaves n_threads_batch at llama-cpp's default: cpu_count()

    results: dict[str, Any] = {
        "benchmark": "embedded_vs_llama_cpp_server",
        "config": {
            "model": args.model, "gguf_path": str(gguf), "gguf_bytes": gguf.stat().st_size,
            "threads": args.threads, "threads_batch": threads_batch, "n_ctx": args.n_ctx,
            "n_batch": args.n_batch, "seed": args.seed, "max_tokens": args.max_tokens,
            "prefix_max_tokens": args.prefix_max_tokens, "prefix_chars": args.prefix_chars,
            "repeats": args.repeats, "llama_server_logits_all": args.logits_all,
            "wait_idle_s": args.wait_idle, "busy_threshold_cores": args.busy_threshold,
            "retries": args.retries,
            "served_model_name": MODEL_NAME,
            "decode_prompts": DECODE_PROMPTS, "warmup_prompt": WARMUP_PROMPT,
            "unrelated_prompt": UNRELATED_PROMPT,
            "prefix_questions": [PREFIX_QUESTION_A, PREFIX_QUESTION_B],
            "short_system": SHORT_SYSTEM,
        },
        "machine": machine_info(args.threads),
        "notes": [],
    }

    servers: list[tuple[str, Server, dict[str, Any]]] = []
    if args.servers in ("both", "stepflash"):
        port = free_port()
        servers.append(("stepflash", Server(
            name="stepflash",
            command=[str(stepflash_bin), "serve", "--model", args.model, "--port", str(port)],
            env={
                "STEPFLASH_EMBEDDED__N_THREADS": str(args.threads),
                "STEPFLASH_EMBEDDED__N_CTX": str(args.n_ctx),
                "STEPFLASH_EMBEDDED__N_BATCH": str(args.n_batch),
            },
            base_url=f"http://127.0.0.1:{port}", ready_path="/ready",
            log_path=results_dir / f"{stem}-stepflash.log",
        ), {"reasoning_effort": "low"}))
    if args.servers in ("both", "llama"):
        port = free_port()
        servers.append(("llama_cpp_server", Server(
            name="llama.cpp",
            command=[
                sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads),
                "--n_threads_batch", str(threads_batch), "--n_batch", str(args.n_batch),
                "--logits_all", str(args.logits_all),
            ],
            base_url=f"http://127.0.0.1:{port}", ready_path="/v1/models",
            log_path=results_dir / f"{stem}-llama_cpp_server.log",
        ), {
            # llama_cpp.server's chat defaults differ from stepflash's sampler (repeat_penalty
            # 1.1 vs 1.0); set them to what stepflash uses so both sample the same way.
            "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0,
        }))

    if any(key == "llama_cpp_server" for key, _, _ in servers):
        try:
            import sse_starlette  # noqa: F401
            import starlette_context  # noqa: F401
        except ImportError:
            raise SystemExit(
                "llama_cpp.server needs its extras: "
                f"{sys.executable} -m pip install 'llama-cpp-python[server]==0.3.36'"
            ) from None

    say(f"model [bold]{args.model}[/bold]: {gguf}  threads {args.threads}  n_ctx {args.n_ctx}")
    interrupted = False
    try:
        for key, server, extra in servers:
            idle = wait_until_idle(args.wait_idle, args.busy_threshold, say) if args.wait_idle > 0 else None
            say(f"starting {server.name}: {' '.join(server.command)}  (log: {server.log_path})")
            with running(server, args.startup_timeout):
                say(f"  ready after {server.startup_seconds:.1f}s")
                results[key] = measure(server, args, extra, say)
                results[key]["command"] = server.command
                results[key]["env"] = server.env
                results[key]["request_extra"] = extra
                results[key]["log_path"] = str(server.log_path)
                results[key]["idle_wait"] = idle
    except KeyboardInterrupt:
        interrupted = True
        say("[yellow]interrupted: servers stopped; writing partial results[/yellow]")
    except RuntimeError as error:
        results["error"] = str(error)
        say(f"[red]{error}[/red]")

    add_notes(results, args.busy_threshold)
    results["interrupted"] = interrupted

    json_path = results_dir / f"{stem}.json"
    md_path = results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(markdown(results))
    if "stepflash" in results or "llama_cpp_server" in results:
        print_tables(results)
    for note in results["notes"]:
        say(f"[yellow]{note}[/yellow]")
    say(f"wrote {json_path} and {md_path}")
    return 130 if interrupted else (1 if "error" in results else 0)


if __name__ == "__main__":
    sys.exit(main())

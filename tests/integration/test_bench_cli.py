"""`stepflash bench` against a paced upstream whose TTFT and inter-token time are known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TTFT_MS, ITL_MS = 30.0, 2.0


@pytest.fixture(scope="module")
def paced() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "paced_upstream.py"),
            "--port",
            str(port),
            "--ttft-ms",
            str(TTFT_MS),
            "--itl-ms",
            str(ITL_MS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepflash", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "160"},
    )


def only_json(folder: Path) -> dict:
    (path,) = folder.glob("bench-*.json")
    return json.loads(path.read_text())


def test_sweep_measures_the_known_pace(paced: str, tmp_path: Path) -> None:
    result = bench(
        "--url",
        paced,
        "--model",
        "paced",
        "--concurrency",
        "1,4",
        "--requests",
        "12",
        "--input-tokens",
        "32",
        "--output-tokens",
        "16",
        "-o",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data = only_json(tmp_path / "out")
    assert [level["concurrency"] for level in data["levels"]] == [1, 4]
    for level in data["levels"]:
        assert (level["requests"], level["successful"], level["failed"]) == (12, 12, 0)
        assert level["output_tokens"] == 12 * 16
        assert level["usage_reported"] is True
        assert level["mean_prompt_tokens"] == 32
        # the upstream waits TTFT before the first token and ITL between tokens: a measured
        # value below either would be a measurement bug
        assert level["ttft_ms"]["p50"] >= TTFT_MS
        assert level["tpot_ms"]["p50"] >= ITL_MS * 0.95
        assert level["e2e_latency_ms"]["p50"] >= TTFT_MS + 15 * ITL_MS * 0.95
        assert level["requests_per_s"] > 0 and level["output_tokens_per_s"] > 0
        assert set(level["ttft_ms"]) == {"mean", "p50", "p90", "p99"}
    (png,) = (tmp_path / "out").glob("bench-*.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 600
    assert "TTFT p50" in result.stdout


def test_duration_mode_and_prompts_file(paced: str, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "one two three"}\n\n'
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}]}\n'
    )
    result = bench(
        "--url",
        paced,
        "--model",
        "paced",
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--prompts-file",
        str(prompts),
        "--output-tokens",
        "4",
        "-o",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (level,) = only_json(tmp_path / "out")["levels"]
    assert level["successful"] >= 2 and level["failed"] == 0
    assert level["mean_prompt_tokens"] == pytest.approx(2.5, abs=0.5)


def test_unreachable_endpoint_counts_errors_and_exits_one(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = bench("--url", url, "--concurrency", "2", "--requests", "4", "-o", "out", cwd=tmp_path)
    assert result.returncode == 1
    (level,) = only_json(tmp_path / "out")["levels"]
    assert (level["successful"], level["failed"]) == (0, 4)
    assert any("Connect" in error for error in level["errors"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "between 1 and"),
        (["--concurrency", "a,b"], "1,4,16"),
        (["--requests", "5", "--duration", "2"], "not both"),
        (["--extra-body", "[1]"], "JSON object"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_prompts_file_names_the_line(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"text": 1}\n')
    result = bench("--prompts-file", str(prompts), cwd=tmp_path)
    assert result.returncode == 2
    assert "p.jsonl:2" in result.stderr

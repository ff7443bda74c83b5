"""Shared fixtures: live stepflash servers on 127.0.0.1 running real models."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# Real PostgreSQL and Redis servers, started on demand by the tests that need them.
pytest_plugins = ["tests.services"]

STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    tmp: Path, model: str | None, env: dict[str, str] | None = None, config: Path | None = None
) -> LiveServer:
    """Start `stepflash serve` as a child process and wait until /ready says it is ready."""
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    # Each server keeps its accounts and files apart, unless the test shares them on purpose.
    environment = {**os.environ, "STEPFLASH_DATA_DIR": str(tmp / f"data-{port}"), **(env or {})}
    with log_path.open("wb") as log_file:
        command = [sys.executable, "-m", "stepflash", "serve", "--port", str(port)]
        command += ["--model", model] if model else []
        command += ["--config", str(config)] if config else []
        process = subprocess.Popen(
            [*command, "--log-level", "warning"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server did not become ready in {STARTUP_SECONDS}s:\n{server.log()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show what tests measured (recorded with `record_property`), e.g. peak memory."""
    for report in terminalreporter.stats.get("passed", []):
        for name, value in report.user_properties:
            terminalreporter.write_line(f"{report.nodeid}: {name}: {value}")


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stepflash")


@pytest.fixture(scope="session")
def tiny_server(session_tmp: Path) -> Iterator[LiveServer]:
    """The tiny real model (SmolLM2-135M) with a short reasoning budget to keep tests quick."""
    server = start_server(
        session_tmp,
        "tiny",
        {
            "STEPFLASH_EMBEDDED__N_CTX": "4096",
            "STEPFLASH_REASONING__BUDGET_MEDIUM": "24",
            "STEPFLASH_REASONING__BUDGET_HIGH": "48",
            "STEPFLASH_LIMITS__DEFAULT_MAX_TOKENS": "64",
        },
    )
    yield server
    stop_server(server)

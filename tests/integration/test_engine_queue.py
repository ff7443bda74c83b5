"""The engine queue is bounded (503 + Retry-After beyond it) and freed when clients leave."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_server, stop_server

LONG = {
    "model": "step-3.7-flash",
    "messages": [{"role": "user", "content": "List numbers."}],
    "max_tokens": 3000,
    "reasoning_effort": "low",
    # A grammar that needs 1,000 numbers keeps the tiny model busy for thousands of tokens.
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "numbers",
            "schema": {"type": "array", "items": {"type": "integer"}, "minItems": 1000},
        },
    },
}
FREE_WITHIN_SECONDS = 20  # a liveness bound, not a performance target


@pytest.fixture(scope="module")
def single_slot_server(session_tmp: Path) -> Iterator[LiveServer]:
    server = start_server(
        session_tmp,
        "tiny",
        {"STEPFLASH_EMBEDDED__QUEUE_SIZE": "0", "STEPFLASH_EMBEDDED__N_CTX": "4096"},
    )
    yield server
    stop_server(server)


def busy(server: LiveServer) -> int:
    return httpx.get(f"{server.url}/ready", timeout=5).json()["engines"][0]["busy"]


def wait_until_idle(server: LiveServer) -> None:
    deadline = time.monotonic() + FREE_WITHIN_SECONDS
    while busy(server) != 0:
        assert time.monotonic() < deadline, "the engine was not freed after the client left"
        time.sleep(0.1)


def test_streaming_disconnect_frees_the_engine(single_slot_server: LiveServer) -> None:
    with httpx.stream(
        "POST",
        f"{single_slot_server.api}/chat/completions",
        json={**LONG, "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept referenced: dropping it would close the stream
        while '"content"' not in next(lines):
            pass
        assert busy(single_slot_server) == 1
    wait_until_idle(single_slot_server)


def test_full_queue_gets_503_with_retry_after(single_slot_server: LiveServer) -> None:
    started = threading.Event()

    def hold_the_engine() -> None:
        with httpx.stream(
            "POST",
            f"{single_slot_server.api}/chat/completions",
            json={**LONG, "stream": True, "max_tokens": 400},
            timeout=120,
        ) as response:
            for _ in response.iter_lines():
                started.set()

    holder = threading.Thread(target=hold_the_engine)
    holder.start()
    try:
        assert started.wait(30)
        response = httpx.post(f"{single_slot_server.api}/chat/completions", json=LONG, timeout=30)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["code"] == "engine_overloaded" and "retry" in error["message"]
    finally:
        holder.join(timeout=120)
    wait_until_idle(single_slot_server)


def test_non_streaming_disconnect_frees_the_engine(single_slot_server: LiveServer) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{single_slot_server.api}/chat/completions", json=LONG, timeout=2.0)
    wait_until_idle(single_slot_server)
    answer = httpx.post(
        f"{single_slot_server.api}/chat/completions", json={**LONG, "max_tokens": 4}, timeout=60
    )
    assert answer.status_code == 200
    assert json.loads(answer.text)["usage"]["completion_tokens"] <= 4

"""Two stepflash replicas sharing PostgreSQL and Redis, as in production.

A V0 account (5 concurrent requests, 10 a minute) bursts at both replicas at once: together
they never admit more than its limits, and the ledger holds exactly the usage the engine
reported. Then one replica is killed with SIGKILL mid-stream: every request that finished is
in the ledger, nothing else is, and the dead replica's slots come back when their leases end.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.accounts_db import STEP37_USD, AccountsDB, expected_cost_micro
from tests.conftest import LiveServer, start_server, stop_server
from tests.services import PostgresServer, RedisServer
from tests.upstreams import ScriptedUpstream

COST = expected_cost_micro(812, 768, 23, STEP37_USD)
LEASE_SECONDS = 2.0
CHAT = {"model": "step-3.7-flash", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream("sglang").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def db_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database(f"replicas_{int(time.time() * 1000)}")


@pytest.fixture(scope="module")
def replicas(
    db_url: str,
    redis_server: RedisServer,
    upstream: ScriptedUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[LiveServer]]:
    tmp = tmp_path_factory.mktemp("replicas")
    config = tmp / "stepflash.toml"
    config.write_text(
        f'[[models]]\nname = "step-3.7-flash"\nbackend = "openai"\nreplicas = ["{upstream.url}"]\n'
    )
    env = {
        "STEPFLASH_ACCOUNTS__DATABASE_URL": db_url,
        "STEPFLASH_ACCOUNTS__REDIS_URL": redis_server.url,
        "STEPFLASH_ACCOUNTS__LEASE_SECONDS": str(LEASE_SECONDS),
        "STEPFLASH_ACCOUNTS__CACHE_SECONDS": "0.2",
        "STEPFLASH_DATA_DIR": str(tmp / "shared"),
    }
    servers = [start_server(tmp, None, env=env, config=config) for _ in range(2)]
    yield servers
    for server in servers:
        if server.process.poll() is None:
            stop_server(server)


def _account(db: AccountsDB, name: str) -> str:
    key = db.create_key(name)
    db.topup(name, "1")  # V0: 5 concurrent, 10 requests a minute
    time.sleep(0.5)
    return key


def _post(server: LiveServer, key: str) -> httpx.Response:
    return httpx.post(
        f"{server.api}/chat/completions", json=CHAT, headers={"x-api-key": key}, timeout=30
    )


def test_limits_hold_exactly_across_replicas_under_a_burst(
    replicas: list[LiveServer], upstream: ScriptedUpstream, db_url: str
) -> None:
    db = AccountsDB(db_url)
    key = _account(db, "burst")
    upstream.hold_seconds, upstream.max_in_flight = 1.0, 0
    admitted: list[httpx.Response] = []
    with ThreadPoolExecutor(max_workers=20) as pool:
        for _wave in range(5):  # bounded: the minute's ten requests are gone after two waves
            targets = [replicas[i % 2] for i in range(20)]
            wave = list(pool.map(lambda server: _post(server, key), targets))
            ok = [r for r in wave if r.status_code == 200]
            assert len(ok) <= 5, "more concurrent requests than the tier allows"
            assert all(r.status_code in (200, 429) for r in wave)
            admitted += ok
            if not ok:
                break
    upstream.hold_seconds = 0.0
    assert upstream.max_in_flight <= 5
    assert len(admitted) == 10  # exactly the minute's allowance, across both replicas
    refusal = _post(replicas[0], key)
    assert refusal.status_code == 429 and int(refusal.headers["retry-after"]) >= 1
    rows = [row for row in db.ledger_rows("burst") if row["kind"] == "usage"]
    assert sorted(row["reference"] for row in rows) == sorted(r.json()["id"] for r in admitted)
    reported = [r.json()["usage"] for r in admitted]
    assert all(u["prompt_tokens"] == 812 and u["cached_tokens"] == 768 for u in reported)
    assert sum(row["amount"] for row in rows) == -10 * COST  # cached at the hit price, once
    assert db.account("burst")["balance"] == 1_000_000 - 10 * COST


def _stream(server: LiveServer, key: str, finished: dict[str, str], lock: threading.Lock) -> None:
    """Read one streamed answer to its end; record its id if [DONE] arrived."""
    body = {**CHAT, "stream": True}
    completion_id = None
    try:
        with httpx.stream(
            "POST",
            f"{server.api}/chat/completions",
            json=body,
            headers={"x-api-key": key},
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                if line == "data: [DONE]" and completion_id:
                    with lock:
                        finished[completion_id] = "done"
                elif line.startswith("data: {"):
                    completion_id = json.loads(line[6:]).get("id", completion_id)
    except httpx.HTTPError:
        pass  # the replica died under it


def test_kill_9_loses_no_settled_request_and_leaks_no_slot(
    replicas: list[LiveServer], upstream: ScriptedUpstream, db_url: str
) -> None:
    db = AccountsDB(db_url)
    key = _account(db, "crash")
    victim, survivor = replicas
    finished: dict[str, str] = {}
    lock = threading.Lock()
    first = _post(victim, key)
    assert first.status_code == 200
    finished[first.json()["id"]] = "done"
    upstream.delay = 0.4  # six chunks: streams last about 2.4 s
    threads = [
        threading.Thread(target=_stream, args=(victim, key, finished, lock)) for _ in range(4)
    ]
    asked = len(upstream.requests)
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(upstream.requests) < asked + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # all four are mid-stream
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    for thread in threads:
        thread.join(timeout=30)
    upstream.delay = 0.0
    # The dead replica's four leases still hold their slots: of two at once, one gets the fifth.
    upstream.hold_seconds = 1.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        pair = list(pool.map(lambda _: _post(survivor, key).status_code, range(2)))
    upstream.hold_seconds = 0.0
    assert sorted(pair) == [200, 429]
    time.sleep(LEASE_SECONDS + 0.5)
    assert _post(survivor, key).status_code == 200  # the leases expired: slots are back
    rows = [row for row in db.ledger_rows("crash") if row["kind"] == "usage"]
    references = {row["reference"] for row in rows}
    assert set(finished) <= references  # every request that finished was settled
    assert len(references) == len(rows) == len(finished) + 2  # + the survivor's two 200s
    assert all(row["amount"] == -COST and row["completion_tokens"] == 23 for row in rows)
    account = db.account("crash")
    assert account["balance"] == 1_000_000 + sum(row["amount"] for row in rows)

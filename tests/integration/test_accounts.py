"""Accounts against a live server, on SQLite and on PostgreSQL: authentication on every
route but health, exact billing from the usage the engine reported, 402, 429, tiers, keys.

The upstream is a scripted Step 3.7 engine reporting 812 prompt tokens of which 768 were
cached, and 23 completion tokens; the official SDKs are the clients.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.accounts_db import STEP37_USD, AccountsDB, expected_cost_micro
from tests.conftest import LiveServer, start_server, stop_server
from tests.services import PostgresServer
from tests.upstreams import ScriptedUpstream

COST = expected_cost_micro(812, 768, 23, STEP37_USD)
CACHE_SECONDS = 0.2


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('accounts')}/stepflash.db"
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    return postgres.create_database(f"accounts_{int(time.time() * 1000)}")


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream("sglang").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(
    database_url: str, upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("server")
    config = tmp / "stepflash.toml"
    config.write_text(
        f'[[models]]\nname = "step-3.7-flash"\nbackend = "openai"\nreplicas = ["{upstream.url}"]\n'
    )
    env = {
        "STEPFLASH_ACCOUNTS__DATABASE_URL": database_url,
        "STEPFLASH_ACCOUNTS__CACHE_SECONDS": str(CACHE_SECONDS),
    }
    live = start_server(tmp, None, env=env, config=config)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def db(database_url: str) -> AccountsDB:
    return AccountsDB(database_url)


def _chat(server: LiveServer, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "step-3.7-flash", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{server.api}/chat/completions", json=body, headers=headers, timeout=30)


def _wait_cache() -> None:
    time.sleep(CACHE_SECONDS * 2)


@pytest.fixture(scope="module")
def alice(server: LiveServer, db: AccountsDB) -> str:
    """The first key: before it, the server is open; after it, every route but health asks."""
    assert _chat(server, None).status_code == 200  # open: no keys yet
    key = db.create_key("alice")
    db.topup("alice", "5")
    _wait_cache()
    return key


ROUTES = [
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/step_plan/v1/chat/completions"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/files"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/keys"),
    ("GET", "/v1/account"),
    ("POST", "/v1/admin/topup"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
]


def test_every_route_but_health_refuses_missing_wrong_and_revoked_keys(
    server: LiveServer, db: AccountsDB, alice: str
) -> None:
    victim = httpx.post(
        f"{server.api}/keys", json={"name": "soon revoked"}, headers={"x-api-key": alice}
    ).json()
    revoked = httpx.delete(f"{server.api}/keys/{victim['id']}", headers={"x-api-key": alice})
    assert revoked.status_code == 200
    for key in (None, "sk-sf-wrong", victim["key"]):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        for method, path in ROUTES:
            response = httpx.request(method, server.url + path, headers=headers, json={})
            assert response.status_code == 401, (key, path, response.text)
            error = response.json()
            kind = error["error"]["type"]
            assert kind == "authentication_error", (path, error)
            assert "key" in error["error"]["message"]
    for path in ("/health", "/ready"):
        assert httpx.get(server.url + path).status_code == 200


def test_sdks_get_authentication_errors(server: LiveServer, alice: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.api, api_key="sk-sf-nope", max_retries=0).models.list()
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-sf-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(
            model="step-3.7-flash", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )


def test_each_request_is_billed_exactly_once_from_the_reported_usage(
    server: LiveServer, db: AccountsDB, alice: str
) -> None:
    before = db.account("alice")["balance"]
    client = openai.OpenAI(base_url=server.api, api_key=alice, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="step-3.7-flash", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.prompt_tokens == 812
    assert raw.headers["x-stepflash-cost"] == f"{COST / 1_000_000:.6f}"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) >= 0
    streamed_raw = client.chat.completions.with_raw_response.create(
        model="step-3.7-flash",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    # A stream's headers leave before its usage is known: its limits, not yet its cost.
    assert (
        streamed_raw.headers["x-ratelimit-limit-requests"]
        == raw.headers["x-ratelimit-limit-requests"]
    )
    assert "x-stepflash-cost" not in streamed_raw.headers
    ids = {completion.id, *(chunk.id for chunk in streamed_raw.parse())}
    anthropic_client = anthropic.Anthropic(base_url=server.url, api_key=alice, max_retries=0)
    message = anthropic_client.messages.create(
        model="step-3.7-flash", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.usage.cache_read_input_tokens == 768
    ids.add(message.id)
    # The charge is durable before the last byte of each response: no waiting needed here.
    rows = [row for row in db.ledger_rows("alice") if row["reference"] in ids]
    assert len(rows) == 3
    assert all(row["amount"] == -COST and row["cached_tokens"] == 768 for row in rows)
    assert db.account("alice")["balance"] == before - 3 * COST


def test_balance_equals_the_sum_of_the_ledger(
    server: LiveServer, db: AccountsDB, alice: str
) -> None:
    assert _chat(server, alice).status_code == 200
    rows = db.ledger_rows("alice")
    account = db.account("alice")
    assert account["balance"] == sum(row["amount"] for row in rows)
    assert account["topup_total"] == sum(row["amount"] for row in rows if row["kind"] == "topup")


def test_an_empty_balance_gets_402_in_both_protocols(
    server: LiveServer, db: AccountsDB, alice: str
) -> None:
    broke = db.create_key("broke")
    _wait_cache()
    with pytest.raises(openai.APIStatusError) as caught:
        openai.OpenAI(base_url=server.api, api_key=broke, max_retries=0).chat.completions.create(
            model="step-3.7-flash", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 402
    assert "insufficient balance" in caught.value.message
    client = anthropic.Anthropic(base_url=server.url, api_key=broke, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(
            model="step-3.7-flash", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.status_code == 402
    assert db.ledger_rows("broke") == []


def test_v0_allows_ten_requests_a_minute_then_429_with_retry_after(
    server: LiveServer, db: AccountsDB, alice: str
) -> None:
    key = db.create_key("minute")
    db.topup("minute", "1")
    _wait_cache()
    statuses = [_chat(server, key) for _ in range(11)]
    assert [r.status_code for r in statuses] == [200] * 10 + [429]
    assert statuses[9].headers["x-ratelimit-remaining-requests"] == "0"
    refused = statuses[10]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert len(db.ledger_rows("minute")) == 1 + 10  # the top-up and ten charges


def test_topups_promote_the_tier(server: LiveServer, db: AccountsDB, alice: str) -> None:
    key = db.create_key("growing")
    db.topup("growing", "13.99")
    _wait_cache()
    account = httpx.get(f"{server.api}/account", headers={"x-api-key": key}).json()
    assert account["tier"] == "V0" and account["limits"]["concurrency"] == 5
    db.topup("growing", "0.01")  # 14 USD in all: V1
    _wait_cache()
    account = httpx.get(f"{server.api}/account", headers={"x-api-key": key}).json()
    assert account["tier"] == "V1"
    assert account["limits"] == {
        "concurrency": 100,
        "requests_per_minute": 1000,
        "tokens_per_minute": 20_000_000,
    }
    assert _chat(server, key).headers["x-ratelimit-limit-requests"] == "1000"


def test_a_key_never_grants_more_than_its_creator_has(
    server: LiveServer, db: AccountsDB, alice: str
) -> None:
    headers = {"x-api-key": alice}
    admin_key = httpx.post(f"{server.api}/keys", json={"admin": True}, headers=headers)
    assert admin_key.status_code == 403
    other = httpx.post(f"{server.api}/keys", json={"account": "mallory"}, headers=headers)
    assert other.status_code == 403
    topup = {"account": "alice", "amount": "1000"}
    assert httpx.post(f"{server.api}/admin/topup", json=topup, headers=headers).status_code == 403
    admin = db.create_key("ops", admin=True)
    _wait_cache()
    granted = httpx.post(
        f"{server.api}/admin/topup", json=topup, headers={"x-api-key": admin}
    ).json()
    assert granted["account"] == "alice" and granted["tier"] == "V4"  # 1,005 USD in all


def test_one_account_cannot_see_another_accounts_usage_or_keys(
    server: LiveServer, db: AccountsDB, alice: str
) -> None:
    bob = db.create_key("bob")
    _wait_cache()
    usage = httpx.get(f"{server.api}/usage", headers={"x-api-key": bob}).json()
    assert usage["data"] == []
    peek = httpx.get(f"{server.api}/usage?account=alice", headers={"x-api-key": bob})
    assert peek.status_code == 403
    keys = httpx.get(f"{server.api}/keys", headers={"x-api-key": bob}).json()["data"]
    assert {key["account_id"] for key in keys} == {"bob"}
    assert all("secret" not in key and "secret_hash" not in key for key in keys)
    alice_keys = httpx.get(f"{server.api}/keys", headers={"x-api-key": alice}).json()["data"]
    victim = alice_keys[0]["id"]
    assert (
        httpx.delete(f"{server.api}/keys/{victim}", headers={"x-api-key": bob}).status_code == 404
    )
    alice_usage = httpx.get(f"{server.api}/usage", headers={"x-api-key": alice}).json()
    assert alice_usage["data"] and all(row["cost"] for row in alice_usage["data"])


def test_keys_are_stored_hashed_and_never_logged(
    server: LiveServer, db: AccountsDB, alice: str, database_url: str
) -> None:
    assert alice not in server.log()
    if database_url.startswith("sqlite"):
        database_file = Path(database_url.split("///", 1)[1])
        assert alice.encode() not in database_file.read_bytes()

"""The ledger's group commit and the key cache, against real SQLite and PostgreSQL databases.

The database moves balances with every inserted row (a trigger), so each test checks the
balance against the rows, including the rows a duplicate key kept out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from sqlalchemy import func, select, text

from stepflash.accounts.database import (
    BatchInsert,
    BatchWriteError,
    Database,
    DatabaseError,
    open_database,
)
from stepflash.accounts.ledger import (
    LEDGER_COLUMNS,
    EntryKind,
    LedgerEntry,
    LedgerWriter,
    ledger_row,
)
from stepflash.accounts.schema import ledger
from stepflash.accounts.store import AccountStore
from stepflash.gate.auth import Authenticator

if TYPE_CHECKING:
    from tests.services import PostgresServer

pytest_plugins = ["tests.services"]  # the postgres_server fixture

T = TypeVar("T")
TOPUP = 1_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'stepflash.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    return postgres.create_database(f"ledger_{os.urandom(8).hex()}")


def run(url: str, scenario: Callable[[Database, AccountStore], Awaitable[T]]) -> T:
    async def main() -> T:
        database = await open_database(url)
        try:
            store = AccountStore(database, "USD")
            await store.topup("alice", TOPUP, "first-alice")
            await store.topup("bob", TOPUP, "first-bob")
            return await asyncio.wait_for(scenario(database, store), 20)
        finally:
            await database.aclose()

    return asyncio.run(main())


def usage(account: str, reference: str, amount: int) -> LedgerEntry:
    return LedgerEntry(account, EntryKind.USAGE, reference, -amount, "USD", prompt_tokens=1)


async def committed(writer: LedgerWriter, entry: LedgerEntry) -> None:
    """What a request does: queue its row, then wait until it is durable (a request cancelled
    meanwhile cancels its wait, not its row)."""
    await writer.submit(entry)


async def rows(database: Database, account: str) -> tuple[int, int]:
    query = select(func.count(), func.coalesce(func.sum(ledger.c.amount), 0)).where(
        ledger.c.account_id == account
    )
    async with database.connect() as connection:
        count, total = (await connection.execute(query)).one()
    return int(count), int(total)


def test_concurrent_charges_commit_together_and_move_balances_exactly(url: str) -> None:
    async def scenario(database: Database, store: AccountStore) -> None:
        writer = LedgerWriter(database, batch_max=16)
        await writer.start()
        entries = [usage(("alice", "bob")[i % 2], f"req-{i}", 10 + i) for i in range(100)]
        await asyncio.gather(*(committed(writer, entry) for entry in entries))
        # Replays of settled requests, and a charge whose caller gave up waiting.
        await asyncio.gather(*(committed(writer, entry) for entry in entries[:10]))
        waiting = asyncio.ensure_future(committed(writer, usage("alice", "cancelled", 7)))
        await asyncio.sleep(0)
        waiting.cancel()
        await writer.aclose()
        alice_charges = sum(10 + i for i in range(0, 100, 2)) + 7
        bob_charges = sum(10 + i for i in range(1, 100, 2))
        assert await rows(database, "alice") == (51 + 1, TOPUP - alice_charges)
        assert await rows(database, "bob") == (50 + 1, TOPUP - bob_charges)
        for account, charges in (("alice", alice_charges), ("bob", bob_charges)):
            totals = await store.totals(account)
            assert totals is not None
            assert (totals.balance, totals.topup_total) == (TOPUP - charges, TOPUP)

    run(url, scenario)


@contextlib.asynccontextmanager
async def busy_loop() -> AsyncIterator[None]:
    """Every turn of the event loop does some work while this lasts, like a server under load."""
    loop = asyncio.get_running_loop()
    busy = True

    def work() -> None:
        if busy:
            time.sleep(0.0005)
            loop.call_soon(work)

    loop.call_soon(work)
    try:
        yield
    finally:
        busy = False


def recorded_commits(database: Database) -> list[tuple[float, int]]:
    """(when it began, rows) of every group `database` commits from now on."""
    loop = asyncio.get_running_loop()
    commits: list[tuple[float, int]] = []
    insert_many = database.insert_many

    async def recording(batch: BatchInsert, rows: list[tuple[object, ...]]) -> None:
        commits.append((loop.time(), len(rows)))
        await insert_many(batch, rows)

    database.insert_many = recording  # type: ignore[method-assign]
    return commits


def test_while_the_server_is_busy_commits_start_a_group_interval_apart(url: str) -> None:
    """Charges arriving within `group_seconds` of the last commit's start share the next
    commit, which waits for that interval while the event loop has other work."""

    async def scenario(database: Database, _store: AccountStore) -> None:
        commits = recorded_commits(database)
        writer = LedgerWriter(database, batch_max=16, group_seconds=0.5)
        await writer.start()
        async with busy_loop():
            await committed(writer, usage("alice", "first", 1))
            following = []
            for i in range(5):
                charge = committed(writer, usage("alice", f"n{i}", 1))
                following.append(asyncio.ensure_future(charge))
                await asyncio.sleep(0.02)
            await asyncio.gather(*following)
        await writer.aclose()
        assert [size for _, size in commits] == [1, 5]
        assert commits[1][0] - commits[0][0] >= 0.49
        assert await rows(database, "alice") == (1 + 6, TOPUP - 6)

    run(url, scenario)


def test_an_idle_server_commits_at_once(url: str) -> None:
    """With nothing else to run, waiting for more charges would only leave the core idle: a
    charge right after a commit, and one after a quiet spell, are written at once."""

    async def scenario(database: Database, _store: AccountStore) -> None:
        loop = asyncio.get_running_loop()
        commits = recorded_commits(database)
        writer = LedgerWriter(database, batch_max=16, group_seconds=30)
        await writer.start()
        submitted = []
        for name in ("first", "right-after"):
            submitted.append(loop.time())
            await committed(writer, usage("alice", name, 1))
        await asyncio.sleep(0.3)  # quiet
        submitted.append(loop.time())
        await committed(writer, usage("alice", "after-quiet", 1))
        await writer.aclose()
        assert [size for _, size in commits] == [1, 1, 1]
        assert all(began - sent < 0.25 for (began, _), sent in zip(commits, submitted, strict=True))
        assert await rows(database, "alice") == (1 + 3, TOPUP - 3)

    run(url, scenario)


def test_a_group_whose_connection_died_is_written_on_a_fresh_one(
    postgres_server: PostgresServer,
) -> None:
    """PostgreSQL restarted or a proxy cut the writer's connection: the next group is retried
    on a new connection, and no charge is lost or written twice."""
    url = postgres_server.create_database(f"ledger_{os.urandom(8).hex()}")

    async def scenario(database: Database, _store: AccountStore) -> None:
        writer = LedgerWriter(database, batch_max=16)
        await writer.start()
        await committed(writer, usage("alice", "before", 5))
        async with database.connect() as connection:
            killed = await connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            assert killed.scalar_one() >= 1  # the writer's own connection among them
        await asyncio.gather(
            *(committed(writer, usage("alice", f"after-{i}", 1)) for i in range(5))
        )
        await writer.aclose()
        assert await rows(database, "alice") == (1 + 1 + 5, TOPUP - 5 - 5)

    run(url, scenario)


def test_a_failed_group_write_writes_nothing_and_the_next_one_succeeds(url: str) -> None:
    """A group that fails part-way (here its second row breaks a NOT NULL column) leaves no
    row behind, and the connection it broke does not break the next group."""

    async def scenario(database: Database, _store: AccountStore) -> None:
        batch = database.batch_insert(ledger, LEDGER_COLUMNS)
        good = [ledger_row(usage("alice", f"group-{i}", 3)) for i in range(3)]
        broken = [{**row, "currency": None} if i == 1 else row for i, row in enumerate(good)]
        with pytest.raises(BatchWriteError):
            await database.insert_many(batch, [tuple(r[c] for c in batch.columns) for r in broken])
        assert await rows(database, "alice") == (1, TOPUP)
        await database.insert_many(batch, [tuple(r[c] for c in batch.columns) for r in good])
        assert await rows(database, "alice") == (1 + 3, TOPUP - 9)

    run(url, scenario)


def test_a_closed_writer_refuses_new_entries(url: str) -> None:
    async def scenario(database: Database, _store: AccountStore) -> None:
        writer = LedgerWriter(database, batch_max=16)
        await writer.start()
        await writer.aclose()
        with pytest.raises(RuntimeError, match="not running"):
            writer.submit(usage("alice", "late", 1))

    run(url, scenario)


class CountingStore(AccountStore):
    """The real store, counting the lookups the authenticator makes."""

    lookups = 0
    totals_reads = 0
    key_checks = 0

    async def has_active_keys(self) -> bool:
        self.key_checks += 1
        return await super().has_active_keys()

    async def lookup_key(self, secret: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().lookup_key(secret)

    async def totals(self, account: str):  # type: ignore[no-untyped-def]
        self.totals_reads += 1
        return await super().totals(account)


def test_requests_missing_the_cache_together_share_one_lookup(url: str) -> None:
    async def scenario(database: Database, _store: AccountStore) -> None:
        store = CountingStore(database, "USD")
        secret = (await store.create_key("alice")).secret
        auth = Authenticator(store, cache_seconds=60)
        principals = await asyncio.gather(*(auth.authenticate(secret) for _ in range(30)))
        assert {p.account_id for p in principals} == {"alice"}
        assert store.lookups == 1
        wrong = await asyncio.gather(
            *(auth.authenticate("sk-sf-wrong") for _ in range(30)), return_exceptions=True
        )
        assert all("invalid or revoked" in str(error) for error in wrong)
        assert store.lookups == 2
        fresh = Authenticator(store, cache_seconds=60)
        totals = await asyncio.gather(*(fresh.totals("bob") for _ in range(30)))
        assert {t.balance for t in totals} == {TOPUP}
        assert store.totals_reads == 1

    run(url, scenario)


def test_an_open_server_checks_for_keys_once_for_concurrent_requests(url: str) -> None:
    """With no key yet, every request asks whether one exists once the answer is
    `cache_seconds` old; the requests arriving together share one query, and the first key
    closes the server for all of them."""

    async def scenario(database: Database, _store: AccountStore) -> None:
        store = CountingStore(database, "USD")
        auth = Authenticator(store, cache_seconds=60)
        principals = await asyncio.gather(*(auth.authenticate(None) for _ in range(30)))
        assert {(p.account_id, p.billed) for p in principals} == {("local", False)}
        assert store.key_checks == 1
        secret = (await store.create_key("alice")).secret
        closed = Authenticator(store, cache_seconds=60)
        refused = await asyncio.gather(
            *(closed.authenticate(None) for _ in range(30)), return_exceptions=True
        )
        assert all("no API key" in str(error) for error in refused)
        assert (await closed.authenticate(secret)).account_id == "alice"
        assert store.key_checks == 2

    run(url, scenario)


@pytest.mark.parametrize("memory_url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
def test_an_in_memory_sqlite_database_is_refused(memory_url: str) -> None:
    with pytest.raises(DatabaseError, match="in-memory SQLite database"):
        Database(memory_url)

"""Storage fees (and the file count limit) against real SQLite and PostgreSQL databases and a
real blob directory, with a fake clock; "replicas" are separate engines on one database.

Prices are the USD defaults (0.07 per GB per day = 70,000 micro-units), so a 1,000,000-byte
file costs 70 micro-units a day; every expected amount below is worked out by hand.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from sqlalchemy import select

from stepflash.accounts.database import Database, open_database
from stepflash.accounts.files import FileService, LocalBlobStore
from stepflash.accounts.pricing import PriceList
from stepflash.accounts.schema import accounts, files, ledger
from stepflash.accounts.storage_fees import StorageFeeRunner, StorageFees
from stepflash.accounts.store import AccountStore
from stepflash.config import BillingSettings, FileSettings
from stepflash.core.errors import StepflashError

if TYPE_CHECKING:
    from tests.services import PostgresServer

pytest_plugins = ["tests.services"]  # the postgres_server fixture

T = TypeVar("T")
DAY = 86_400
UPLOADED = int(datetime(2026, 1, 1, 6, 0, tzinfo=UTC).timestamp())  # 18 h before midnight
SIZE = 1_000_000
BALANCE = 1_000_000


@dataclass
class Clock:
    now: float = UPLOADED

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    database: Database
    clock: Clock
    fees: StorageFees
    files: FileService
    store: AccountStore
    blobs: Path

    async def ledger(self, account: str) -> list[tuple[str, int]]:
        query = (
            select(ledger.c.reference, ledger.c.amount)
            .where(ledger.c.account_id == account, ledger.c.kind == "storage")
            .order_by(ledger.c.id)
        )
        async with self.database.connect() as connection:
            return [tuple(row) for row in await connection.execute(query)]

    async def balance(self, account: str) -> int:
        query = select(accounts.c.balance).where(accounts.c.id == account)
        async with self.database.connect() as connection:
            return (await connection.execute(query)).scalar_one()

    async def billed_until(self, file_id: str) -> int:
        query = select(files.c.storage_billed_until).where(files.c.id == file_id)
        async with self.database.connect() as connection:
            return (await connection.execute(query)).scalar_one()


@dataclass
class Place:
    """A database and a blob directory of the test's own."""

    url: str
    blobs: Path


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "sqlite":
        return Place(f"sqlite+aiosqlite:///{tmp_path / 'stepflash.db'}", tmp_path / "files")
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"fees_{os.urandom(8).hex()}"
    return Place(postgres.create_database(name), tmp_path / "files")


def run(place: Place, scenario: Callable[[World], Awaitable[T]]) -> T:
    async def main() -> T:
        database = await open_database(place.url)
        clock = Clock()
        prices = PriceList(BillingSettings())
        fees = StorageFees(database, prices, clock)
        service = FileService(database, LocalBlobStore(place.blobs), FileSettings(), fees, clock)
        store = AccountStore(database, prices.currency)
        try:
            world = World(database, clock, fees, service, store, place.blobs)
            return await asyncio.wait_for(scenario(world), 10)
        finally:
            await database.aclose()

    return asyncio.run(main())


async def upload(world: World, account: str) -> str:
    source = io.BytesIO(os.urandom(SIZE))
    return (await world.files.upload(account, "storage", "data.bin", source)).id


def test_two_days_later_two_exact_charges_then_nothing_more(place: Place) -> None:
    async def scenario(world: World) -> dict[str, Any]:
        await world.store.topup("alice", BALANCE)
        file_id = await upload(world, "alice")
        written = await world.fees.accrue(now=UPLOADED + 2 * DAY)
        first = (await world.ledger("alice"), await world.balance("alice"))
        again = await world.fees.accrue(now=UPLOADED + 2 * DAY)
        later_same_day = await world.fees.accrue(now=UPLOADED + 2 * DAY + 3600)
        billed_until = await world.billed_until(file_id)
        return {
            "file_id": file_id,
            "written": (written, again, later_same_day),
            "first": first,
            "after": (await world.ledger("alice"), await world.balance("alice")),
            "billed_until": billed_until,
        }

    result = run(place, scenario)
    file_id = result["file_id"]
    # 18 h of the first day: 70 x 0.75 = 52.5, rounded half up; then a whole day: 70.
    charges = [(f"storage:{file_id}:2026-01-01", -53), (f"storage:{file_id}:2026-01-02", -70)]
    assert result["written"] == (2, 0, 0)
    assert result["first"] == (charges, BALANCE - 123)
    assert result["after"] == result["first"]
    assert result["billed_until"] == int(datetime(2026, 1, 3, tzinfo=UTC).timestamp())


def test_deleting_charges_the_last_partial_day_and_removes_the_blob(place: Place) -> None:
    async def scenario(world: World) -> tuple[str, list[tuple[str, int]], int, list[Path]]:
        await world.store.topup("alice", BALANCE)
        file_id = await upload(world, "alice")
        await world.fees.accrue(now=UPLOADED + 2 * DAY)
        world.clock.now = UPLOADED + 2 * DAY + 6 * 3600  # 12:00 on the third day
        await world.files.delete("alice", file_id)
        blobs = [path for path in world.blobs.rglob("*") if path.is_file()]
        return file_id, await world.ledger("alice"), await world.balance("alice"), blobs

    file_id, rows, balance, blobs = run(place, scenario)
    assert rows[-1] == (f"storage:{file_id}:final", -35)  # 12 h: 70 x 0.5
    assert len(rows) == 3
    assert balance == BALANCE - 53 - 70 - 35
    assert blobs == []


def test_deleting_before_any_accrual_charges_each_day_then_the_rest(place: Place) -> None:
    async def scenario(world: World) -> tuple[str, list[tuple[str, int]]]:
        file_id = await upload(world, "alice")
        world.clock.now = UPLOADED + DAY  # 06:00 the next day, the job never ran
        await world.files.delete("alice", file_id)
        return file_id, await world.ledger("alice")

    file_id, rows = run(place, scenario)
    assert rows == [(f"storage:{file_id}:2026-01-01", -53), (f"storage:{file_id}:final", -18)]


def test_the_open_servers_local_account_is_never_charged(place: Place) -> None:
    async def scenario(world: World) -> tuple[int, list[tuple[str, int]], int]:
        file_id = await upload(world, "local")
        written = await world.fees.accrue(now=UPLOADED + 5 * DAY)
        world.clock.now = UPLOADED + 6 * DAY
        await world.files.delete("local", file_id)
        return written, await world.ledger("local"), await world.balance("local")

    assert run(place, scenario) == (0, [], 0)


def test_replicas_accruing_at_once_charge_each_day_once(place: Place) -> None:
    async def scenario(world: World) -> tuple[list[int], list[tuple[str, int]]]:
        for _ in range(3):
            await upload(world, "alice")
        databases = [Database(world.database.url) for _ in range(4)]
        replicas = [StorageFees(database, PriceList(BillingSettings())) for database in databases]
        try:
            written = await asyncio.gather(*(r.accrue(now=UPLOADED + 3 * DAY) for r in replicas))
        finally:
            for database in databases:
                await database.aclose()
        return written, await world.ledger("alice")

    written, rows = run(place, scenario)
    assert sum(written) == 9  # 3 files x 3 days, each written by exactly one replica
    assert len({reference for reference, _ in rows}) == len(rows) == 9
    assert sum(amount for _, amount in rows) == 3 * (-53 - 70 - 70)


def test_the_runner_accrues_on_start_and_closes(place: Place) -> None:
    async def scenario(world: World) -> int:
        await upload(world, "alice")
        world.clock.now = UPLOADED + 2 * DAY
        runner = StorageFeeRunner(world.fees, interval_seconds=3600)
        await runner.start()
        while len(await world.ledger("alice")) < 2:
            await asyncio.sleep(0.02)
        await runner.aclose()
        return len(await world.ledger("alice"))

    assert run(place, scenario) == 2


def test_a_burst_of_uploads_across_replicas_stops_at_the_limit(place: Place) -> None:
    async def scenario(world: World) -> tuple[int, int]:
        databases = [Database(world.database.url) for _ in range(4)]
        replicas = [
            FileService(
                database,
                LocalBlobStore(world.blobs),
                FileSettings(max_files_per_account=3),
                StorageFees(database, PriceList(BillingSettings())),
            )
            for database in databases
        ]

        async def attempt(service: FileService) -> bool:
            try:
                await service.upload("alice", "storage", "a.txt", io.BytesIO(b"x"))
            except StepflashError:
                return False
            return True

        try:
            stored = await asyncio.gather(*(attempt(r) for r in replicas for _ in range(3)))
        finally:
            for database in databases:
                await database.aclose()
        records, _more = await world.files.list_files("alice")
        return sum(stored), len(records)

    assert run(place, scenario) == (3, 3)

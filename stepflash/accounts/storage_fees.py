"""Storage fees: every stored file is charged for each UTC day it was kept (FORMATS.md §3).

A file's `storage_billed_until` is the moment up to which it has been charged. The accrual
charges each whole UTC day that has ended since then, one ledger entry per file and day
(`storage:{file_id}:{YYYY-MM-DD}`, the day the period lies in), and moves
`storage_billed_until` to the last midnight; deleting a file charges what remains up to the
deletion (`storage:{file_id}:final`). Periods are UTC days, not 24 hours from the upload, so
every replica cuts the same periods and names them alike.

Several replicas may run the accrual at once. Each one claims a file's periods with a
conditional update (`… WHERE storage_billed_until = <what it read>`) in the same transaction
as the ledger rows, so only one of them charges a period and none skips one; the ledger's
unique (kind, reference) would refuse a second charge anyway. Every transaction here starts
with a write, which on SQLite takes the write lock before anything is read.

Amounts are rounded per period; a period that rounds to 0 micro-units (a few kilobytes for a
day) writes no row. The open server's local account is never charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from stepflash.accounts.database import Database
from stepflash.accounts.ledger import EntryKind, LedgerEntry, apply_entries
from stepflash.accounts.pricing import PriceList
from stepflash.accounts.schema import files
from stepflash.gate.auth import OPEN_ACCOUNT

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400
BATCH = 256  # files claimed per transaction


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What a charge needs to know about a file."""

    id: str
    account_id: str
    bytes: int
    billed_until: int  # unix seconds


def _day_periods(start: int, end: int) -> Iterator[tuple[int, int]]:
    """[start, end) cut at every UTC midnight."""
    while start < end:
        stop = min(end, (start // DAY_SECONDS + 1) * DAY_SECONDS)
        yield start, stop
        start = stop


def _midnight(moment: float) -> int:
    return int(moment) // DAY_SECONDS * DAY_SECONDS


class StorageFees:
    def __init__(
        self, database: Database, prices: PriceList, clock: Callable[[], float] = time.time
    ) -> None:
        self._database = database
        self._prices = prices
        self._clock = clock

    def entries(self, stored: StoredFile, end: int, charged_at: int) -> list[LedgerEntry]:
        """The charges for [billed_until, end): one per UTC day, the piece that does not end
        at a midnight named `final` (only a deletion charges such a piece)."""
        if stored.account_id == OPEN_ACCOUNT:
            return []
        charges = []
        for start, stop in _day_periods(stored.billed_until, end):
            amount = self._prices.storage_cost(stored.bytes * (stop - start))
            if amount == 0:
                continue
            day = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
            label = day if stop % DAY_SECONDS == 0 else "final"
            charges.append(
                LedgerEntry(
                    stored.account_id,
                    EntryKind.STORAGE,
                    f"storage:{stored.id}:{label}",
                    -amount,
                    self._prices.currency,
                    created_at=charged_at,
                )
            )
        return charges

    async def charge_deleted(
        self, connection: AsyncConnection, stored: StoredFile, now: int
    ) -> None:
        """Charge what `stored` has not paid for yet, in the caller's transaction (the one that
        deletes its row, so the job cannot charge the same time again)."""
        await apply_entries(self._database, connection, self.entries(stored, now, now))

    async def accrue(self, now: float | None = None) -> int:
        """Charge every stored file for the UTC days that ended since it was last charged.
        Returns the number of ledger rows written."""
        moment = int(self._clock() if now is None else now)
        cutoff = _midnight(moment)
        written, after = 0, ""
        while batch := await self._due(cutoff, after):
            written += await self._charge(batch, cutoff, moment)
            after = batch[-1].id
        return written

    async def _due(self, cutoff: int, after: str) -> list[StoredFile]:
        query = (
            select(files.c.id, files.c.account_id, files.c.bytes, files.c.storage_billed_until)
            .where(
                files.c.storage_billed_until < cutoff,
                files.c.account_id != OPEN_ACCOUNT,
                files.c.id > after,
            )
            .order_by(files.c.id)
            .limit(BATCH)
        )
        async with self._database.connect() as connection:
            return [StoredFile(*row) for row in await connection.execute(query)]

    async def _charge(self, batch: list[StoredFile], cutoff: int, moment: int) -> int:
        charges: list[LedgerEntry] = []
        async with self._database.begin() as connection:
            for stored in batch:
                claim = (
                    update(files)
                    .where(
                        files.c.id == stored.id,
                        files.c.storage_billed_until == stored.billed_until,
                    )
                    .values(storage_billed_until=cutoff)
                )
                if (await connection.execute(claim)).rowcount == 1:  # else another replica did
                    charges += self.entries(stored, cutoff, moment)
            inserted = await apply_entries(self._database, connection, charges)
        return len(inserted)


class StorageFeeRunner:
    """Runs the accrual now and then every `interval_seconds`, until closed. Safe on every
    replica at once (see the module's docstring)."""

    def __init__(self, fees: StorageFees, interval_seconds: float = 3600.0) -> None:
        self._fees = fees
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="storage-fees")

    async def aclose(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                written = await self._fees.accrue()
            except Exception:  # a bad hour must not end the job: the next run catches up
                log.exception("storage fees: the accrual failed; retrying in %.0fs", self._interval)
            else:
                if written:
                    log.info("storage fees: %d charges written", written)
            await asyncio.sleep(self._interval)

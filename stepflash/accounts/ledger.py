"""The ledger: immutable entries, written in groups, each settled exactly once.

Every movement of money is one row keyed by (kind, reference) — a request id, a top-up id, a
file's storage day. Writing the same key twice is ignored, so retries and replays can never
charge twice. The account's balance and cumulative top-up move in the same transaction as the
rows, so a crash leaves either all of a group or none of it.

`LedgerWriter` batches the rows of concurrent requests into one transaction (one fsync for
many requests) off the request path; each request awaits its own row's commit, so a request
that told its client it was settled is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from stepflash.accounts.database import Database
from stepflash.accounts.schema import accounts, ledger

log = logging.getLogger(__name__)


class EntryKind(StrEnum):
    TOPUP = "topup"
    USAGE = "usage"
    STORAGE = "storage"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    account_id: str
    kind: EntryKind
    reference: str
    amount: int  # micro-units; charges are negative
    currency: str
    key_id: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    media_tokens: int = 0
    web_searches: int = 0
    created_at: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True, slots=True)
class AccountTotals:
    balance: int
    topup_total: int


async def apply_entries(
    database: Database, connection: AsyncConnection, entries: Iterable[LedgerEntry]
) -> tuple[set[tuple[str, str]], dict[str, AccountTotals]]:
    """Insert the entries not yet recorded and move their accounts' totals, in the caller's
    transaction. Returns the (kind, reference) keys inserted and the accounts' new totals."""
    rows = [{**asdict(entry), "kind": str(entry.kind)} for entry in entries]
    if not rows:
        return set(), {}
    insert = database.insert_ignoring_duplicates(ledger).returning(
        ledger.c.kind, ledger.c.reference, ledger.c.account_id, ledger.c.amount
    )
    inserted = (await connection.execute(insert, rows)).all()
    moves: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for kind, _reference, account_id, amount in inserted:
        moves[account_id][0] += amount
        if kind == EntryKind.TOPUP:
            moves[account_id][1] += amount
    totals: dict[str, AccountTotals] = {}
    for account_id in sorted(moves):  # one lock order for every writer: no deadlocks
        balance_move, topup_move = moves[account_id]
        statement = (
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(
                balance=accounts.c.balance + balance_move,
                topup_total=accounts.c.topup_total + topup_move,
            )
            .returning(accounts.c.balance, accounts.c.topup_total)
        )
        balance, topup_total = (await connection.execute(statement)).one()
        totals[account_id] = AccountTotals(balance, topup_total)
    return {(kind, reference) for kind, reference, _a, _m in inserted}, totals


_Pending = tuple[LedgerEntry, "asyncio.Future[bool]"]


class LedgerWriter:
    """Group commit: whatever entries arrived while the last commit ran go in the next one."""

    RETRY_SECONDS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(
        self,
        database: Database,
        batch_max: int,
        on_commit: Callable[[dict[str, AccountTotals]], None] = lambda _totals: None,
    ) -> None:
        self._database = database
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def record(self, entry: LedgerEntry) -> bool:
        """Wait until `entry` is committed; False if its (kind, reference) already was."""
        if self._task is None or self._task.done():
            raise RuntimeError("the ledger writer is not running")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((entry, future))
        # A cancelled request still gets its row written: shield the commit from the caller.
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        """Commit everything already queued, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            batch: list[_Pending] = []
            stopping = item is None
            if item is not None:
                batch.append(item)
            while len(batch) < self._batch_max and not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is None:
                    stopping = True
                else:
                    batch.append(queued)
            if batch:
                await self._commit(batch)
            if stopping and self._queue.empty():
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        for attempt, delay in enumerate((*self.RETRY_SECONDS, None)):
            try:
                async with self._database.begin() as connection:
                    inserted, totals = await apply_entries(
                        self._database, connection, (entry for entry, _ in batch)
                    )
            except (DBAPIError, OSError) as error:
                if delay is None:
                    log.error("ledger commit failed %d times, giving up: %s", attempt + 1, error)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    return
                log.warning("ledger commit failed, retrying in %.2fs: %s", delay, error)
                await asyncio.sleep(delay)
                continue
            self._on_commit(totals)
            for entry, future in batch:
                if not future.done():
                    future.set_result((str(entry.kind), entry.reference) in inserted)
            return

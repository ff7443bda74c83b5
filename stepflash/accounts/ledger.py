"""The ledger: immutable entries, written in groups, each settled exactly once.

Every movement of money is one row keyed by (kind, reference) — a request id, a top-up id, a
file's storage day. Writing the same key twice is ignored, so retries and replays can never
charge twice. The database moves the account's balance and cumulative top-up with every row it
inserts (a trigger, migration 0002), in the same statement, so a crash leaves either all of a
group or none of it, and a row kept out as a duplicate moves nothing.

`LedgerWriter` batches the rows of concurrent requests into one write (one fsync for many
requests) off the request path; each request awaits its own row's commit, so a request that
told its client it was settled is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from stepflash.accounts.database import BatchWriteError, Database
from stepflash.accounts.schema import ledger

log = logging.getLogger(__name__)


class EntryKind(StrEnum):
    TOPUP = "topup"
    USAGE = "usage"
    STORAGE = "storage"


@dataclass(slots=True)  # not frozen: see `stepflash.gate.limits.Ask`
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


LEDGER_COLUMNS = (
    "account_id",
    "kind",
    "reference",
    "amount",
    "currency",
    "key_id",
    "model",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "media_tokens",
    "web_searches",
    "created_at",
)


def ledger_row(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "account_id": entry.account_id,
        "kind": str(entry.kind),
        "reference": entry.reference,
        "amount": entry.amount,
        "currency": entry.currency,
        "key_id": entry.key_id,
        "model": entry.model,
        "prompt_tokens": entry.prompt_tokens,
        "cached_tokens": entry.cached_tokens,
        "completion_tokens": entry.completion_tokens,
        "media_tokens": entry.media_tokens,
        "web_searches": entry.web_searches,
        "created_at": entry.created_at,
    }


async def apply_entries(
    database: Database, connection: AsyncConnection, entries: Iterable[LedgerEntry]
) -> set[tuple[str, str]]:
    """Insert the entries not yet recorded, in the caller's transaction (their accounts' totals
    move with them). Returns the (kind, reference) keys inserted."""
    rows = [ledger_row(entry) for entry in entries]
    if not rows:
        return set()
    insert = database.insert_ignoring_duplicates(ledger).returning(
        ledger.c.kind, ledger.c.reference
    )
    return {(kind, reference) for kind, reference in await connection.execute(insert, rows)}


_Pending = tuple[LedgerEntry, "asyncio.Future[None]"]
_account_of = operator.attrgetter("account_id")

# A turn of the event loop shorter than this ran nothing but the writer's probe: the server has
# no other work. Under the accounts benchmark's load the turns the probe saw took either under
# 5 µs (idle, one in ten) or over 100 µs (serving requests); almost none fell between.
IDLE_TURN_SECONDS = 25e-6


class LedgerWriter:
    """Group commit: whatever entries arrive while a commit runs go in the next one.

    A commit is one statement (`Database.insert_many`). Rows go in account order, so replicas
    committing groups that share accounts lock them in the same order and never deadlock.

    While the server is busy, a commit starts at least `group_seconds` after the one before it:
    fewer, larger groups, so fewer fsyncs per request. A group goes sooner once it holds
    `batch_max` rows, or as soon as the event loop runs out of other work: then every request
    that could keep the core busy is waiting for this group (or for an upstream), and waiting
    longer would only leave the core idle. So an entry after a quiet spell is committed at once.
    """

    RETRY_SECONDS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, database: Database, batch_max: int, group_seconds: float = 0.0) -> None:
        self._database = database
        self._batch_max = batch_max
        self._group_seconds = group_seconds
        self._insert = database.batch_insert(ledger, LEDGER_COLUMNS)
        # an entry's values in the statement's order (its kind goes as the str it is)
        self._values = operator.attrgetter(*self._insert.columns)
        self._pending: list[_Pending] = []
        self._writing: asyncio.Task[None] | None = None
        self._last_start = -math.inf  # loop time the latest commit began
        self._open = False

    async def start(self) -> None:
        self._open = True

    def submit(self, entry: LedgerEntry) -> asyncio.Future[None]:
        """Queue `entry` for the next commit; the future resolves once it is durable. The entry
        is queued before this returns, so a caller cancelled while it waits cannot lose it."""
        if not self._open:
            raise RuntimeError("the ledger writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_pending(), name="ledger-writer")
        return future

    async def aclose(self) -> None:
        """Commit everything already queued, then stop."""
        self._open = False
        if self._writing is not None:
            await self._writing

    async def _write_pending(self) -> None:
        """Commit groups until nothing is pending; ends, to be started again by `submit`."""
        try:
            await asyncio.sleep(0)  # the rest of this turn of the event loop joins the group
            while self._pending:
                await self._gather()
                self._last_start = asyncio.get_running_loop().time()
                batch = self._pending[: self._batch_max]
                del self._pending[: self._batch_max]
                try:
                    await self._commit(batch)
                except Exception as error:  # not the database's doing: fail the group, go on
                    log.exception("ledger commit failed")
                    _resolve(batch, error)
        finally:
            self._writing = None

    async def _gather(self) -> None:
        """Let a group grow while the server is busy, until `group_seconds` after the previous
        commit began."""
        loop = asyncio.get_running_loop()
        wait = self._last_start + self._group_seconds - loop.time()
        if wait <= 0 or len(self._pending) >= self._batch_max:
            return
        grown: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(wait, _finish, grown)
        loop.call_soon(self._probe, grown, time.perf_counter())
        try:
            await grown
        finally:
            timer.cancel()

    def _probe(self, grown: asyncio.Future[None], scheduled: float) -> None:
        """Once a turn of the event loop: end the wait when the turn since `scheduled` was
        idle or the group is full, else look again next turn. A callback, not a task, so that
        looking costs a busy server well under a microsecond a turn."""
        if grown.done():
            return
        now = time.perf_counter()
        if now - scheduled < IDLE_TURN_SECONDS or len(self._pending) >= self._batch_max:
            grown.set_result(None)
        else:
            asyncio.get_running_loop().call_soon(self._probe, grown, now)

    async def _commit(self, batch: list[_Pending]) -> None:
        entries = sorted((entry for entry, _ in batch), key=_account_of)
        rows = [self._values(entry) for entry in entries]
        for attempt, delay in enumerate((*self.RETRY_SECONDS, None)):
            try:
                await self._database.insert_many(self._insert, rows)
            except BatchWriteError as error:
                if delay is None:
                    log.error("ledger commit failed %d times, giving up: %s", attempt + 1, error)
                    _resolve(batch, error)
                    return
                log.warning("ledger commit failed, retrying in %.2fs: %s", delay, error)
                await asyncio.sleep(delay)
                continue
            _resolve(batch, None)
            return


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve(batch: list[_Pending], error: BaseException | None) -> None:
    for _, future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

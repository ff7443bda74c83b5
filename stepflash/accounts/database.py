"""The database: an async SQLAlchemy engine, migrated to the latest schema on open.

SQLite (the default, a file in the data directory) runs in WAL mode with full synchronous
commits, so a committed ledger row survives a crash; PostgreSQL is used as it comes. Several
replicas may start at once against one PostgreSQL: migrations run under an advisory lock.

Group commits of the ledger take a faster road than other queries (`insert_many`): every
round trip of a commit is a turn of the event loop that a request waits through, so a group
is one atomic write in one trip; and its statement is compiled once for the driver, whose
`executemany` takes the rows as tuples. The writer keeps one connection of its own and calls
the driver (asyncpg, sqlite3) on it directly: on PostgreSQL, SQLAlchemy's checkout, greenlet
hop and cursor adaptation cost about 0.3 ms of CPU per group, more than asyncpg's whole write
of twenty rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from stepflash.accounts.schema import metadata

_MIGRATION_LOCK = 0x5EF1A5  # PostgreSQL advisory lock id held while migrating


BATCH_TIMEOUT_SECONDS = 30.0  # a group write that takes longer fails (and is retried)


class DatabaseError(Exception):
    """The database cannot be opened or migrated; the message says which and why."""


class BatchWriteError(Exception):
    """A group write failed as a whole (nothing of it was written); trying again may succeed."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files(__package__) / "migrations"))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
    command.upgrade(_alembic_config(connection), "head")


@dataclass(frozen=True, slots=True)
class BatchInsert:
    """An INSERT compiled for one driver: `sql` takes one tuple per row, in `columns` order."""

    sql: str
    columns: tuple[str, ...]


def _compile_batch(statement: Insert, columns: Sequence[str], dialect: Dialect) -> BatchInsert:
    compiled = statement.compile(dialect=dialect, column_keys=list(columns), for_executemany=True)
    order = compiled.positiontup
    if order is None or sorted(order) != sorted(columns):  # a named paramstyle, or a default
        raise DatabaseError(f"cannot batch {statement} for {dialect.name}")
    return BatchInsert(str(compiled), tuple(order))


class Database:
    """One engine per process; `insert` hides the one dialect difference we use."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database in (None, "", ":memory:"):
                raise DatabaseError(
                    f"{url!r} is an in-memory SQLite database, which no other connection sees "
                    "and which loses every charge when the process ends; give a file path"
                )
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = (
            {} if self.is_sqlite else {"pool_size": 10, "max_overflow": 10, "pool_pre_ping": True}
        )
        self.engine: AsyncEngine = create_async_engine(url, **options)
        self._batches: _SqliteBatches | _PostgresBatches
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            self._batches = _SqliteBatches(url)
        else:
            self._batches = _PostgresBatches(url)

    async def migrate(self) -> None:
        """Bring the schema to the latest revision (creating it on a new database)."""
        try:
            async with self.engine.begin() as connection:
                await connection.run_sync(_upgrade)
        except (SQLAlchemyError, OSError) as error:
            raise DatabaseError(f"cannot migrate {self.safe_url}: {error}") from error

    def insert_ignoring_duplicates(self, table: Any) -> Insert:
        """INSERT … ON CONFLICT DO NOTHING, in this database's dialect."""
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing()

    def batch_insert(self, table: Any, columns: Sequence[str]) -> BatchInsert:
        """INSERT … ON CONFLICT DO NOTHING of `columns`, for `insert_many`."""
        return self._batches.compile(self.insert_ignoring_duplicates(table), columns)

    async def insert_many(self, batch: BatchInsert, rows: list[tuple[Any, ...]]) -> None:
        """Insert many rows as one atomic write, in one trip from the event loop; raises
        `BatchWriteError` when none of them could be written."""
        await self._batches.insert_many(batch, rows)

    def connect(self) -> AsyncConnection:
        return self.engine.connect()

    def begin(self) -> Any:
        return self.engine.begin()

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def aclose(self) -> None:
        await self._batches.aclose()
        await self.engine.dispose()


class _SqliteBatches:
    """A blocking sqlite3 connection in a thread of its own: aiosqlite would hop between threads
    for every statement and the commit, and the commit's fsync must not stall the event loop.
    The thread calls sqlite3 directly: SQLAlchemy's begin, execute and commit, in a thread that
    takes the interpreter from the event loop, cost a third of a group's CPU."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url).set(drivername="sqlite")
        self._path = str(parsed.database)
        self._dialect = parsed.get_dialect()()
        self._connection: sqlite3.Connection | None = None  # used by the thread only
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-batches")

    def compile(self, statement: Insert, columns: Sequence[str]) -> BatchInsert:
        return _compile_batch(statement, columns, self._dialect)

    async def insert_many(self, batch: BatchInsert, rows: list[tuple[Any, ...]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._insert, batch, rows)
        except (sqlite3.Error, OSError) as error:
            raise BatchWriteError(str(error)) from error

    def _insert(self, batch: BatchInsert, rows: list[tuple[Any, ...]]) -> None:
        connection = self._connection or self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")  # the write lock first: no upgrade to wait on
            connection.executemany(batch.sql, rows)
            connection.execute("COMMIT")
        except sqlite3.Error:
            self._close()  # closing rolls back whatever the failed write had begun
            raise

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None)  # BEGIN/COMMIT are ours
        _sqlite_pragmas(connection, None)
        self._connection = connection
        return connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown()


# What a PostgreSQL group write can raise when it did not happen: SQLAlchemy could not open the
# connection, the server refused the write, the connection is gone or broken (a terminated
# backend can leave asyncpg's protocol in a state it cannot leave), or it timed out.
_DRIVER_ERRORS = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class _PostgresBatches:
    """One connection of its own, used through asyncpg: outside a transaction an
    `executemany` is one round trip and atomic (asyncpg >= 0.22), so neither BEGIN nor COMMIT
    (nor a pool ping) costs a trip. A connection that fails is dropped and opened afresh on
    the next write."""

    def __init__(self, url: str) -> None:
        self._engine = create_async_engine(url, pool_size=1, max_overflow=0)
        self._connection: AsyncConnection | None = None
        self._driver: asyncpg.Connection | None = None

    def compile(self, statement: Insert, columns: Sequence[str]) -> BatchInsert:
        return _compile_batch(statement, columns, self._engine.dialect)

    async def insert_many(self, batch: BatchInsert, rows: list[tuple[Any, ...]]) -> None:
        try:
            driver = self._driver or await self._open()
            await driver.executemany(batch.sql, rows, timeout=BATCH_TIMEOUT_SECONDS)
        except _DRIVER_ERRORS as error:
            await self._drop()
            raise BatchWriteError(str(error)) from error

    async def _open(self) -> asyncpg.Connection:
        self._connection = await self._engine.connect()
        raw = await self._connection.get_raw_connection()
        self._driver = raw.driver_connection
        return self._driver

    async def _drop(self) -> None:
        """Forget a connection that failed; closing a broken one may fail too, and must not
        hide the error that broke it."""
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await connection.invalidate()
                await connection.close()

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        await self._engine.dispose()


async def open_database(url: str) -> Database:
    database = Database(url)
    try:
        await database.migrate()
    except DatabaseError:
        await database.aclose()
        raise
    return database


__all__ = [
    "BatchInsert",
    "BatchWriteError",
    "Database",
    "DatabaseError",
    "metadata",
    "open_database",
]

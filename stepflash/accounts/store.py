"""Accounts and keys: the queries behind the CLI, the admin API and authentication."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from stepflash.accounts.database import Database
from stepflash.accounts.keys import NewKey, digest, matches, new_key
from stepflash.accounts.ledger import EntryKind, LedgerEntry, apply_entries
from stepflash.accounts.schema import accounts, api_keys, ledger

ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
USAGE_GROUPS = ("day", "model", "key")


class AccountError(Exception):
    """A request the store refuses, with a message for the person who made it."""


@dataclass(frozen=True, slots=True)
class AccountTotals:
    balance: int
    topup_total: int


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What authentication learns from a key: who it is and what its account has."""

    key_id: str
    account_id: str
    admin: bool
    revoked: bool
    totals: AccountTotals


def _now() -> int:
    return int(time.time())


def check_account_name(name: str) -> str:
    if not ACCOUNT_NAME.match(name):
        raise AccountError(
            f"account name {name!r} is invalid: 1-64 letters, digits, or _ . @ - "
            "(starting with a letter or digit)"
        )
    return name


class AccountStore:
    def __init__(self, database: Database, currency: str) -> None:
        self.database = database
        self.currency = currency

    async def ensure_account(self, name: str) -> None:
        check_account_name(name)
        async with self.database.begin() as connection:
            statement = self.database.insert_ignoring_duplicates(accounts).values(
                id=name, created_at=_now(), balance=0, topup_total=0
            )
            await connection.execute(statement)

    async def create_key(
        self, account: str, *, name: str = "", admin: bool = False, created_by: str | None = None
    ) -> NewKey:
        await self.ensure_account(account)
        key = new_key()
        async with self.database.begin() as connection:
            await connection.execute(
                insert(api_keys).values(
                    id=key.id,
                    account_id=account,
                    name=name[:128],
                    prefix=key.prefix,
                    secret_hash=key.digest,
                    admin=admin,
                    created_by=created_by,
                    created_at=_now(),
                )
            )
        return key

    async def list_keys(self, account: str | None = None) -> list[dict[str, Any]]:
        """Keys without their secrets (prefix only), newest first."""
        columns = [
            api_keys.c.id,
            api_keys.c.account_id,
            api_keys.c.name,
            api_keys.c.prefix,
            api_keys.c.admin,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
        ]
        query = select(*columns).order_by(api_keys.c.created_at.desc(), api_keys.c.id)
        if account is not None:
            query = query.where(api_keys.c.account_id == account)
        async with self.database.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(query)]

    async def revoke_key(self, key_id: str, account: str | None = None) -> bool:
        """Revoke `key_id` (only within `account` when given). False if there is no such key."""
        statement = update(api_keys).where(api_keys.c.id == key_id)
        if account is not None:
            statement = statement.where(api_keys.c.account_id == account)
        async with self.database.begin() as connection:
            result = await connection.execute(
                statement.values(revoked_at=func.coalesce(api_keys.c.revoked_at, _now()))
            )
        return bool(result.rowcount)

    async def has_active_keys(self) -> bool:
        query = select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
        async with self.database.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def lookup_key(self, secret: str) -> KeyRecord | None:
        query = (
            select(
                api_keys.c.id,
                api_keys.c.account_id,
                api_keys.c.admin,
                api_keys.c.revoked_at,
                api_keys.c.secret_hash,
                accounts.c.balance,
                accounts.c.topup_total,
            )
            .join(accounts, accounts.c.id == api_keys.c.account_id)
            .where(api_keys.c.secret_hash == digest(secret))
        )
        async with self.database.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None or not matches(secret, row.secret_hash):
            return None
        return KeyRecord(
            row.id,
            row.account_id,
            row.admin,
            row.revoked_at is not None,
            AccountTotals(row.balance, row.topup_total),
        )

    async def totals(self, account: str) -> AccountTotals | None:
        async with self.database.connect() as connection:
            return await _totals(connection, account)

    async def topup(self, account: str, amount: int, reference: str | None = None) -> AccountTotals:
        """Add `amount` micro-units (negative to correct a mistake) as one ledger entry."""
        if amount == 0:
            raise AccountError("a top-up of 0 changes nothing")
        await self.ensure_account(account)
        entry = LedgerEntry(
            account,
            EntryKind.TOPUP,
            reference or f"topup-{secrets.token_hex(8)}",
            amount,
            self.currency,
        )
        async with self.database.begin() as connection:
            if not await apply_entries(self.database, connection, [entry]):
                raise AccountError(f"top-up {entry.reference!r} was already recorded")
            totals = await _totals(connection, account)
        assert totals is not None  # ensured above
        return totals

    async def usage(
        self,
        account: str | None,
        since: int,
        group_by: tuple[str, ...] = USAGE_GROUPS,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Charges (usage and storage, not top-ups) summed by day, model and key (and account,
        for the admin's view)."""
        day = func.floor(ledger.c.created_at / 86_400).label("day")
        keys = {
            "day": day,
            "model": ledger.c.model.label("model"),
            "key": ledger.c.key_id.label("key"),
        }
        groups = [keys[g] for g in group_by]
        if account is None:
            groups.insert(0, ledger.c.account_id.label("account"))
        query = (
            select(
                *groups,
                func.count().label("entries"),
                func.sum(ledger.c.prompt_tokens).label("prompt_tokens"),
                func.sum(ledger.c.cached_tokens).label("cached_tokens"),
                func.sum(ledger.c.completion_tokens).label("completion_tokens"),
                func.sum(ledger.c.media_tokens).label("media_tokens"),
                func.sum(ledger.c.web_searches).label("web_searches"),
                func.sum(-ledger.c.amount).label("cost"),
            )
            .where(ledger.c.created_at >= since, ledger.c.kind != EntryKind.TOPUP)
            .group_by(*groups)
            .order_by(*groups)
            .limit(limit)
        )
        if account is not None:
            query = query.where(ledger.c.account_id == account)
        async with self.database.connect() as connection:
            rows = await connection.execute(query)
            return [_usage_row(row._mapping) for row in rows]


async def _totals(connection: AsyncConnection, account: str) -> AccountTotals | None:
    query = select(accounts.c.balance, accounts.c.topup_total).where(accounts.c.id == account)
    row = (await connection.execute(query)).first()
    return None if row is None else AccountTotals(row.balance, row.topup_total)


def _usage_row(mapping: Any) -> dict[str, Any]:
    row = dict(mapping)
    if "day" in row:
        row["day"] = time.strftime("%Y-%m-%d", time.gmtime(int(row["day"]) * 86_400))
    return {k: v if k in _LABELS else int(v) for k, v in row.items()}


_LABELS = frozenset({"day", "model", "key", "account"})

"""Synchronous access to a stepflash accounts database from tests: keys, top-ups, ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from sqlalchemy import select

from stepflash.accounts.database import open_database
from stepflash.accounts.schema import accounts, ledger
from stepflash.accounts.store import AccountStore

T = TypeVar("T")


class AccountsDB:
    def __init__(self, url: str, currency: str = "USD") -> None:
        self.url = url
        self.currency = currency

    def _run(self, work: Callable[[AccountStore], Awaitable[T]]) -> T:
        async def main() -> T:
            database = await open_database(self.url)
            try:
                return await work(AccountStore(database, self.currency))
            finally:
                await database.aclose()

        return asyncio.run(main())

    def create_key(self, account: str, admin: bool = False) -> str:
        return self._run(lambda store: store.create_key(account, admin=admin)).secret

    def topup(self, account: str, amount: str) -> None:
        self._run(lambda store: store.topup(account, int(Decimal(amount) * 1_000_000)))

    def revoke(self, key_id: str) -> bool:
        return self._run(lambda store: store.revoke_key(key_id))

    def ledger_rows(self, account: str | None = None) -> list[dict[str, Any]]:
        async def rows(store: AccountStore) -> list[dict[str, Any]]:
            query = select(ledger).order_by(ledger.c.id)
            if account is not None:
                query = query.where(ledger.c.account_id == account)
            async with store.database.connect() as connection:
                return [dict(row._mapping) for row in await connection.execute(query)]

        return self._run(rows)

    def account(self, account: str) -> dict[str, Any]:
        async def row(store: AccountStore) -> dict[str, Any]:
            query = select(accounts).where(accounts.c.id == account)
            async with store.database.connect() as connection:
                return dict((await connection.execute(query)).one()._mapping)

        return self._run(row)


def expected_cost_micro(
    prompt: int, cached: int, completion: int, rates: tuple[str, str, str]
) -> int:
    """A request's cost computed independently of stepflash: Decimal prices per million
    tokens, rounded half up to a micro-unit once per request."""
    miss, hit, out = (Decimal(rate) for rate in rates)
    cost = ((prompt - cached) * miss + cached * hit + completion * out) / Decimal(1_000_000)
    return int((cost * 1_000_000).to_integral_value(ROUND_HALF_UP))


STEP37_USD = ("0.20", "0.04", "1.15")

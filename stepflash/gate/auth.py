"""Who is asking: the API key in `Authorization: Bearer` or `x-api-key`, looked up by its
digest and cached for `cache_seconds`, so the hot path touches the database about once a
second per key rather than once per request. When an entry expires, the requests arriving
meanwhile share one lookup instead of each starting its own.

With no active key in the database the server is *open*: every caller is the local account,
unbilled and unlimited (the CLI refuses to bind a non-loopback address in that state). The
first key created turns authentication on, within `cache_seconds`, for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from stepflash.accounts.keys import digest
from stepflash.accounts.store import AccountStore, AccountTotals
from stepflash.core.errors import ErrorKind, StepflashError

T = TypeVar("T")
OPEN_ACCOUNT = "local"
MAX_KEY_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    key_id: str | None  # None when the server is open
    admin: bool
    billed: bool  # False when the server is open: no limits, no charges


OPEN_PRINCIPAL = Principal(OPEN_ACCOUNT, None, admin=True, billed=False)


def secret_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def _refused(message: str) -> StepflashError:
    return StepflashError(ErrorKind.AUTHENTICATION, message)


class Authenticator:
    def __init__(self, store: AccountStore, cache_seconds: float) -> None:
        self._store = store
        self._ttl = cache_seconds
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._totals: dict[str, tuple[float, AccountTotals]] = {}
        self._lookups: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._open_until = 0.0  # while the clock is below this, the server is known open
        self._closed = False  # a key has existed: authentication is on for good

    async def authenticate(self, secret: str | None) -> Principal:
        """On every request: the cached paths below do not await, which would cost a
        coroutine each."""
        if not self._closed and await self._is_open():
            return OPEN_PRINCIPAL
        if not secret:
            raise _refused("no API key: send it as `Authorization: Bearer KEY` or in `x-api-key`")
        if len(secret) > MAX_KEY_LENGTH:
            raise _refused("invalid API key")
        now = time.monotonic()
        secret_digest = digest(secret)  # the cache holds digests, never secrets
        cached = self._keys.get(secret_digest)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            principal = await self._once(
                ("key", secret_digest), lambda: self._look_up(secret, secret_digest, now)
            )
        if principal is None:
            raise _refused("invalid or revoked API key")
        return principal

    async def _is_open(self) -> bool:
        now = time.monotonic()
        if now < self._open_until:
            return True
        return await self._once(("open", ""), lambda: self._check_open(now))

    async def _check_open(self, now: float) -> bool:
        if await self._store.has_active_keys():
            self._closed = True
            return False
        self._open_until = now + self._ttl
        return True

    async def _look_up(self, secret: str, secret_digest: str, now: float) -> Principal | None:
        record = await self._store.lookup_key(secret)
        principal = None
        if record is not None and not record.revoked:
            principal = Principal(record.account_id, record.key_id, record.admin, billed=True)
            self._remember_totals(record.account_id, record.totals, now)
        if len(self._keys) > 100_000:  # bounded: a flood of wrong keys cannot grow it forever
            self._keys.clear()
        self._keys[secret_digest] = (now + self._ttl, principal)
        return principal

    def forget_key(self, key_id: str) -> None:
        """A key was revoked here: stop trusting its cached entry at once."""
        self._keys = {
            d: entry
            for d, entry in self._keys.items()
            if entry[1] is None or entry[1].key_id != key_id
        }

    def _remember_totals(self, account: str, totals: AccountTotals, now: float) -> None:
        self._totals[account] = (now + self._ttl, totals)

    def update_totals(self, account: str, totals: AccountTotals) -> None:
        """Totals this replica just wrote (a top-up): fresher than any cache."""
        self._remember_totals(account, totals, time.monotonic())

    async def totals(self, account: str) -> AccountTotals:
        cached = self._totals.get(account)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        return await self._once(("totals", account), lambda: self._read_totals(account, now))

    async def _read_totals(self, account: str, now: float) -> AccountTotals:
        totals = await self._store.totals(account) or AccountTotals(0, 0)
        self._remember_totals(account, totals, now)
        return totals

    async def _once(self, key: tuple[str, str], look_up: Callable[[], Awaitable[T]]) -> T:
        """One lookup per key at a time: the callers that miss together share its answer."""
        running = self._lookups.get(key)
        if running is None:
            running = asyncio.ensure_future(look_up())
            self._lookups[key] = running
            running.add_done_callback(lambda _done: self._lookups.pop(key, None))
        result: T = await asyncio.shield(running)
        return result

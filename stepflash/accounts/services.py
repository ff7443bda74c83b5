"""Everything accounts need at run time, opened and closed together by the app's lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from stepflash.accounts.database import open_database
from stepflash.accounts.ledger import LedgerWriter
from stepflash.accounts.pricing import PriceList
from stepflash.accounts.storage_fees import StorageFeeRunner, StorageFees
from stepflash.accounts.store import AccountStore
from stepflash.config import Settings
from stepflash.gate.auth import Authenticator
from stepflash.gate.gate import Gate
from stepflash.gate.limits import LimitBackend
from stepflash.gate.memory_limits import MemoryLimits
from stepflash.gate.redis_limits import RedisLimits
from stepflash.gate.tiers import TierTable

log = logging.getLogger(__name__)

# An image at high detail costs at most 36 crops (FORMATS.md §4); a video, its frames.
IMAGE_TOKENS_AT_MOST = 3_200
VIDEO_TOKENS_PER_FRAME = 171
# SQLite fsyncs each ledger commit in this process, sharing its CPU with serving: group longer.
SQLITE_LEDGER_GROUP_MS = 25.0


@dataclass(slots=True)
class AccountServices:
    store: AccountStore
    auth: Authenticator
    gate: Gate
    ledger: LedgerWriter
    limits: LimitBackend


def _limit_backend(settings: Settings) -> LimitBackend:
    lease = settings.accounts.lease_seconds
    pending = 3 * settings.accounts.cache_seconds  # outlives every replica's cached balance
    if settings.accounts.redis_url:
        return RedisLimits.from_url(
            settings.accounts.redis_url, lease_seconds=lease, pending_seconds=pending
        )
    return MemoryLimits(lease_seconds=lease, pending_seconds=pending)


@asynccontextmanager
async def open_account_services(settings: Settings) -> AsyncIterator[AccountServices]:
    database = await open_database(settings.database_url)
    prices = PriceList(settings.billing)
    store = AccountStore(database, prices.currency)
    auth = Authenticator(store, settings.accounts.cache_seconds)
    group_ms = settings.accounts.ledger_group_ms
    if group_ms is None:
        group_ms = SQLITE_LEDGER_GROUP_MS if database.is_sqlite else 0.0
    ledger = LedgerWriter(database, settings.accounts.ledger_batch, group_ms / 1000)
    limits = _limit_backend(settings)
    assert settings.billing.tiers is not None
    media_part_tokens = max(
        IMAGE_TOKENS_AT_MOST, settings.media.video_max_frames * VIDEO_TOKENS_PER_FRAME
    )
    gate = Gate(
        auth,
        limits,
        ledger,
        prices,
        TierTable(settings.billing.tiers),
        default_max_tokens=settings.limits.default_max_tokens,
        media_part_tokens=media_part_tokens,
    )
    storage_fees = StorageFeeRunner(StorageFees(database, prices))  # hourly
    await ledger.start()
    await limits.start()
    await storage_fees.start()
    log.info("accounts in %s; limits %s", database.safe_url, type(limits).__name__)
    try:
        yield AccountServices(store, auth, gate, ledger, limits)
    finally:
        await storage_fees.aclose()
        await limits.aclose()
        await ledger.aclose()
        await database.aclose()

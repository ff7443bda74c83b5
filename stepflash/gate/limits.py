"""Per-account rate limits and balance holds: the types every limit backend speaks.

Admission is two-phase. `reserve` counts the request against its account's concurrency,
requests-per-minute and tokens-per-minute limits and holds money against its balance, all at
once or not at all; `settle` gives back what the request did not use. Backends keep this state
in the process (`memory_limits.MemoryLimits`) or in Redis (`redis_limits.RedisLimits`, shared by
every replica). Every running request holds a *lease* that the backend renews while the request
lives; a replica that dies stops renewing, so its slots and holds come back when the leases
expire instead of leaking forever.

Money held for a settled request stays held as *pending* for `pending_seconds` after it is
charged: long enough for every replica's cached balance to include the charge, so no replica
ever sees money that has already been spent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TierLimits:
    """What one account may use at once and per minute."""

    concurrency: int
    requests_per_minute: int
    tokens_per_minute: int


@dataclass(slots=True)
class Ask:
    """What one request asks of its account at admission.

    Not frozen, like `Grant` and the ledger's `LedgerEntry`: they are made for every billed
    request, and a frozen dataclass takes about four times as long to build. Nothing changes
    them after they are made."""

    account: str  # account id
    request_id: str  # unique per request; the key of its lease and hold
    tokens: int  # prompt estimate + max_tokens, counted toward tokens per minute
    hold: int  # micro-units held against the balance until settlement
    balance: int  # the account's committed balance, as this replica last read it
    limits: TierLimits


@dataclass(slots=True)
class Grant:
    """An admitted request: what it holds, and what its account has left (for headers)."""

    ask: Ask
    bucket: int  # the second (unix time) whose token count holds `ask.tokens`
    remaining_requests: int
    remaining_tokens: int
    reset_requests_seconds: float  # until a request slot frees in the minute window
    reset_tokens_seconds: float  # until the token window has room for this much again
    settled: bool = False  # set by the in-process backend's first `settle`


class RefusalReason(StrEnum):
    CONCURRENCY = "concurrency"
    REQUESTS = "requests"
    TOKENS = "tokens"
    BALANCE = "balance"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not admitted and when trying again can succeed."""

    reason: RefusalReason
    retry_after_seconds: float  # 0 for BALANCE: waiting does not help, a top-up does
    limit: int  # the limit that refused (the balance for BALANCE)
    remaining_requests: int
    remaining_tokens: int


class LimitBackend(Protocol):
    async def start(self) -> None:
        """Begin renewing the leases of running requests."""

    async def aclose(self) -> None:
        """Stop renewing; leases of requests still running expire on their own."""

    async def reserve(self, ask: Ask) -> Grant | Refusal:
        """Admit `ask` against every limit and the balance atomically, or refuse it."""

    def settle(self, grant: Grant, tokens: int, charged: int) -> asyncio.Future[None]:
        """The request ended: free its concurrency slot, correct its token count to `tokens`
        (what it really used; 0 when it failed), and keep `charged` micro-units pending
        for `pending_seconds` in place of its hold (0 when nothing was charged).

        It starts at once and needs no waiting for: the future says when it has taken effect
        (tests wait for it; requests do not)."""

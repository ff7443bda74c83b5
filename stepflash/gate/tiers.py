"""Spend tiers: an account's tier follows from its cumulative top-up, nothing else."""

from __future__ import annotations

from bisect import bisect_right

from stepflash.accounts.pricing import to_micro
from stepflash.config import Tier
from stepflash.gate.limits import TierLimits


class TierTable:
    def __init__(self, tiers: list[Tier]) -> None:
        self._tiers = sorted(tiers, key=lambda tier: tier.topup)
        self._thresholds = [to_micro(tier.topup) for tier in self._tiers]
        self._limits = [
            TierLimits(t.concurrency, t.requests_per_minute, t.tokens_per_minute)
            for t in self._tiers
        ]

    def index(self, topup_total: int) -> int:
        """The highest tier whose threshold `topup_total` (micro-units) has reached."""
        return max(bisect_right(self._thresholds, topup_total) - 1, 0)

    def name(self, topup_total: int) -> str:
        return self._tiers[self.index(topup_total)].name

    def limits(self, topup_total: int) -> TierLimits:
        return self._limits[self.index(topup_total)]

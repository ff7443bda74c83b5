"""Admission and settlement of one billed request.

`Gate.admit` reserves, before any work: a concurrency slot, a request in the minute window,
the prompt estimate plus `max_tokens` in the token window, and the most the request can cost
held against the balance. `Admission.settle` then charges what the engine reported (one
ledger row, keyed by the request id, awaited until durable) and gives back the rest;
`Admission.release` gives everything back when the request failed or its client left.
A cancelled request cannot skip either: both start before their first await.
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache

from stepflash.accounts.ledger import EntryKind, LedgerEntry, LedgerWriter
from stepflash.accounts.pricing import PriceList, format_money
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.core.events import Usage
from stepflash.core.request import ChatRequest, TextPart
from stepflash.gate.auth import Authenticator, Principal
from stepflash.gate.limits import Ask, Grant, LimitBackend, Refusal, RefusalReason, TierLimits
from stepflash.gate.tiers import TierTable

log = logging.getLogger(__name__)

BYTES_PER_TOKEN_ESTIMATE = 3  # fewer bytes per token than any tokenizer we serve: holds enough
MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators the template adds per message


def _utf8_length(text: str) -> int:
    """Bytes in UTF-8, without encoding a copy when the text is ASCII (it knows it is)."""
    return len(text) if text.isascii() else len(text.encode())


def estimate_prompt_tokens(request: ChatRequest, media_part_tokens: int) -> int:
    """An upper estimate of the prompt, without tokenizing: the hold is corrected at
    settlement, so over-estimating only holds a little more for a moment."""
    text_bytes = sum(len(tool.description) + len(str(tool.parameters)) for tool in request.tools)
    media_parts = 0
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                text_bytes += _utf8_length(part.text)
            else:
                media_parts += 1
        if message.tool_calls:
            text_bytes += sum(len(call.arguments) + len(call.name) for call in message.tool_calls)
        if message.reasoning:
            text_bytes += _utf8_length(message.reasoning)
    messages = len(request.messages) * MESSAGE_OVERHEAD_TOKENS
    return text_bytes // BYTES_PER_TOKEN_ESTIMATE + messages + media_parts * media_part_tokens


Headers = list[tuple[bytes, bytes]]  # as an ASGI response carries them: lower-case, encoded


@lru_cache(maxsize=64)
def _tier_headers(limits: TierLimits) -> tuple[tuple[bytes, bytes], ...]:
    """The headers a tier's limits alone decide, encoded once per tier rather than per
    response (they are on every billed response)."""
    return (
        (b"x-ratelimit-limit-requests", b"%d" % limits.requests_per_minute),
        (b"x-ratelimit-limit-tokens", b"%d" % limits.tokens_per_minute),
        (b"x-ratelimit-limit-concurrency", b"%d" % limits.concurrency),
    )


def limit_headers(limits: TierLimits, remaining_requests: int, remaining_tokens: int) -> Headers:
    """OpenAI's `x-ratelimit-*` names, plus the concurrency limit StepFun's tiers add."""
    return [
        *_tier_headers(limits),
        (b"x-ratelimit-remaining-requests", b"%d" % remaining_requests),
        (b"x-ratelimit-remaining-tokens", b"%d" % remaining_tokens),
    ]


def grant_headers(grant: Grant) -> Headers:
    """What an admitted request's response says: its limits, what is left, and when more is."""
    headers = limit_headers(grant.ask.limits, grant.remaining_requests, grant.remaining_tokens)
    headers.append((b"x-ratelimit-reset-requests", b"%.3fs" % grant.reset_requests_seconds))
    headers.append((b"x-ratelimit-reset-tokens", b"%.3fs" % grant.reset_tokens_seconds))
    return headers


_REFUSALS = {
    RefusalReason.CONCURRENCY: "concurrent requests",
    RefusalReason.REQUESTS: "requests per minute",
    RefusalReason.TOKENS: "tokens per minute",
}


def refusal_error(refusal: Refusal, ask: Ask, currency: str) -> StepflashError:
    if refusal.reason is RefusalReason.BALANCE:
        return StepflashError(
            ErrorKind.INSUFFICIENT_BALANCE,
            f"insufficient balance: this request can cost up to {format_money(ask.hold)} "
            f"{currency} (its prompt and max_tokens) and the account's balance does not cover "
            "it beside its requests in flight; top up, or lower max_tokens",
            code="insufficient_balance",
        )
    what = _REFUSALS[refusal.reason]
    headers = {
        name.decode(): value.decode()
        for name, value in limit_headers(
            ask.limits, refusal.remaining_requests, refusal.remaining_tokens
        )
    }
    return StepflashError(
        ErrorKind.RATE_LIMITED,
        f"rate limit reached: {refusal.limit} {what} for this account's tier; "
        f"retry after {refusal.retry_after_seconds:.1f}s",
        retry_after=refusal.retry_after_seconds,
        headers=headers,
    )


class Gate:
    def __init__(
        self,
        auth: Authenticator,
        limits: LimitBackend,
        ledger: LedgerWriter,
        prices: PriceList,
        tiers: TierTable,
        *,
        default_max_tokens: int,
        media_part_tokens: int,
    ) -> None:
        self.auth = auth
        self.limits = limits
        self.ledger = ledger
        self.prices = prices
        self.tiers = tiers
        self._default_max_tokens = default_max_tokens
        self._media_part_tokens = media_part_tokens

    async def admit(
        self, principal: Principal, request: ChatRequest, request_id: str
    ) -> Admission | None:
        """Reserve what `request` may use, or raise 429/402. None when nothing is billed."""
        if not principal.billed:
            return None
        totals = await self.auth.totals(principal.account_id)
        prompt = estimate_prompt_tokens(request, self._media_part_tokens)
        output = (request.max_tokens or self._default_max_tokens) * request.n
        ask = Ask(
            account=principal.account_id,
            request_id=request_id,
            tokens=prompt + output,
            hold=self.prices.model(request.model).cost(prompt, 0, output),
            balance=totals.balance,
            limits=self.tiers.limits(totals.topup_total),
        )
        result = await self.limits.reserve(ask)
        if isinstance(result, Refusal):
            raise refusal_error(result, ask, self.prices.currency)
        return Admission(self, principal, result)


class Admission:
    """One admitted request's reservation, until it is settled or released (once)."""

    def __init__(self, gate: Gate, principal: Principal, grant: Grant) -> None:
        self._gate = gate
        self._principal = principal
        self.grant = grant
        self.cost: int | None = None  # micro-units, once settled
        self._finished = False

    def headers(self) -> Headers:
        """The limits' headers, and once settled, the request's cost."""
        headers = grant_headers(self.grant)
        if self.cost is not None:
            headers.append((b"x-stepflash-cost", format_money(self.cost).encode()))
            headers.append((b"x-stepflash-currency", self._gate.prices.currency.encode()))
        return headers

    async def settle(self, model: str, usage: Usage | None, media_tokens: int) -> None:
        """Charge what the engine reported and wait until the charge is durable.

        The charge is queued and the limits settled before the first await, so a request
        cancelled while it waits still pays exactly once and leaves nothing held."""
        if self._finished:
            return
        self._finished = True
        gate, ask = self._gate, self.grant.ask
        if usage is None:
            log.warning("request %s ended without usage; nothing charged", ask.request_id)
            usage = Usage(0, 0)
        self.cost = gate.prices.usage_cost(model, usage)
        committed = gate.ledger.submit(
            LedgerEntry(
                account_id=ask.account,
                kind=EntryKind.USAGE,
                reference=ask.request_id,
                amount=-self.cost,
                currency=gate.prices.currency,
                key_id=self._principal.key_id,
                model=model,
                prompt_tokens=usage.prompt_tokens,
                cached_tokens=usage.cached_tokens,
                completion_tokens=usage.completion_tokens,
                media_tokens=media_tokens,
            )
        )
        _report_failure(gate.limits.settle(self.grant, usage.total_tokens, self.cost))
        await committed  # cancelling this wait leaves the queued entry to be written

    def release(self) -> None:
        """The request failed or its client left: give back everything, charge nothing."""
        if self._finished:
            return
        self._finished = True
        _report_failure(self._gate.limits.settle(self.grant, 0, 0))


def _report_failure(settled: asyncio.Future[None]) -> None:
    """Settlements are not awaited; one that fails (Redis down) is logged, and the lease it
    could not free expires on its own. One already done (in-process limits) is looked at now
    rather than in a callback of the next loop turn."""
    if settled.done():
        _log_settle_failure(settled)
    else:
        settled.add_done_callback(_log_settle_failure)


def _log_settle_failure(settled: asyncio.Future[None]) -> None:
    if not settled.cancelled() and settled.exception() is not None:
        log.error("settling limits failed: %s", settled.exception())

"""Limit backends: every rule against the in-process backend and against a real Redis.

Both backends run the same tests (the `backends` fixture); Redis ones get their own key prefix
per test, and `Backends.replica` gives a second replica sharing the first one's state.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from stepflash.gate.limits import Ask, Grant, LimitBackend, Refusal, RefusalReason, TierLimits
from stepflash.gate.memory_limits import COMPACT_AFTER, WINDOW_MS, MemoryLimits, TimeLog
from stepflash.gate.redis_limits import RedisLimits
from tests.services import RedisServer

LIMITS = TierLimits(concurrency=100, requests_per_minute=1000, tokens_per_minute=1_000_000)
SCENARIO_SECONDS = 10


def ask(
    *,
    limits: TierLimits = LIMITS,
    tokens: int = 10,
    hold: int = 0,
    balance: int = 1_000_000,
    account: str = "acct",
) -> Ask:
    return Ask(account, uuid.uuid4().hex, tokens, hold, balance, limits)


class Backends:
    """Makes backends of one kind and closes them when the scenario ends."""

    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self.prefix = f"test-{uuid.uuid4().hex}"
        self.made: list[LimitBackend] = []

    def new(self, lease_seconds: float = 30.0, pending_seconds: float = 30.0) -> LimitBackend:
        backend: LimitBackend
        if self.redis_url is None:
            backend = MemoryLimits(lease_seconds=lease_seconds, pending_seconds=pending_seconds)
        else:
            backend = RedisLimits.from_url(
                self.redis_url,
                lease_seconds=lease_seconds,
                pending_seconds=pending_seconds,
                prefix=self.prefix,
            )
        self.made.append(backend)
        return backend

    def replica(self, of: LimitBackend, lease_seconds: float = 30.0) -> LimitBackend:
        """Another replica sharing `of`'s state: `of` itself in memory, a new client in Redis."""
        return of if self.redis_url is None else self.new(lease_seconds)

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        asyncio.run(self._run(scenario))

    async def _run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(scenario(), SCENARIO_SECONDS)
        finally:
            for backend in self.made:
                await backend.aclose()


@pytest.fixture(params=["memory", "redis"])
def backends(request: pytest.FixtureRequest) -> Backends:
    if request.param == "memory":
        return Backends(None)
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backends(server.url)


async def granted(backend: LimitBackend, request: Ask) -> Grant:
    result = await backend.reserve(request)
    assert isinstance(result, Grant), result
    return result


async def refused(backend: LimitBackend, request: Ask, reason: RefusalReason) -> Refusal:
    result = await backend.reserve(request)
    assert isinstance(result, Refusal), result
    assert result.reason == reason, result
    return result


def test_concurrency_limit_is_exact(backends: Backends) -> None:
    limits = replace(LIMITS, concurrency=3)

    async def scenario() -> None:
        backend = backends.new()
        for _ in range(3):
            await granted(backend, ask(limits=limits))
        refusal = await refused(backend, ask(limits=limits), RefusalReason.CONCURRENCY)
        assert refusal.limit == 3
        assert 0.05 <= refusal.retry_after_seconds <= 1.0
        assert refusal.remaining_requests == 997

    backends.run(scenario)


def test_settle_frees_a_slot(backends: Backends) -> None:
    limits = replace(LIMITS, concurrency=1)

    async def scenario() -> None:
        backend = backends.new()
        grant = await granted(backend, ask(limits=limits))
        await refused(backend, ask(limits=limits), RefusalReason.CONCURRENCY)
        await backend.settle(grant, 10, 0)
        await granted(backend, ask(limits=limits))

    backends.run(scenario)


def test_requests_per_minute_are_exact_and_settled_requests_still_count(
    backends: Backends,
) -> None:
    limits = replace(LIMITS, requests_per_minute=3)

    async def scenario() -> None:
        backend = backends.new()
        grants = [await granted(backend, ask(limits=limits)) for _ in range(3)]
        assert [grant.remaining_requests for grant in grants] == [2, 1, 0]
        assert all(59 < grant.reset_requests_seconds <= 60 for grant in grants)
        for grant in grants:
            await backend.settle(grant, 10, 0)
        refusal = await refused(backend, ask(limits=limits), RefusalReason.REQUESTS)
        assert (refusal.limit, refusal.remaining_requests) == (3, 0)
        assert 58 < refusal.retry_after_seconds <= 60

    backends.run(scenario)


def test_tokens_per_minute_follow_what_settle_reports(backends: Backends) -> None:
    limits = replace(LIMITS, tokens_per_minute=100)

    async def scenario() -> None:
        backend = backends.new()
        first = await granted(backend, ask(limits=limits, tokens=60))
        assert first.remaining_tokens == 40
        assert 58 < first.reset_tokens_seconds <= 60  # another 60 fits once this bucket leaves
        refusal = await refused(backend, ask(limits=limits, tokens=50), RefusalReason.TOKENS)
        assert (refusal.limit, refusal.remaining_tokens) == (100, 40)
        assert 58 < refusal.retry_after_seconds <= 60
        await backend.settle(first, 20, 0)  # used 20 of the 60 it asked for
        second = await granted(backend, ask(limits=limits, tokens=40))
        assert (second.remaining_tokens, second.reset_tokens_seconds) == (40, 0)
        await backend.settle(second, 80, 0)  # used more than it asked for: 20 + 80 = 100
        await refused(backend, ask(limits=limits, tokens=1), RefusalReason.TOKENS)

    backends.run(scenario)


def test_an_ask_over_the_token_limit_is_refused_for_a_whole_window(backends: Backends) -> None:
    limits = replace(LIMITS, tokens_per_minute=100)

    async def scenario() -> None:
        backend = backends.new()
        refusal = await refused(backend, ask(limits=limits, tokens=101), RefusalReason.TOKENS)
        assert (refusal.retry_after_seconds, refusal.limit, refusal.remaining_tokens) == (
            60.0,
            100,
            100,
        )

    backends.run(scenario)


def test_balance_holds_and_pending_charges(backends: Backends) -> None:
    async def scenario() -> None:
        backend = backends.new(pending_seconds=0.2)
        first = await granted(backend, ask(hold=60, balance=100))
        refusal = await refused(backend, ask(hold=41, balance=100), RefusalReason.BALANCE)
        assert (refusal.retry_after_seconds, refusal.limit) == (0, 100)
        second = await granted(backend, ask(hold=40, balance=100))
        await backend.settle(second, 10, 0)  # nothing charged: its hold is gone at once
        await backend.settle(first, 10, 50)  # 50 charged: pending in place of the 60 held
        await refused(backend, ask(hold=51, balance=100), RefusalReason.BALANCE)
        await granted(backend, ask(hold=50, balance=100))
        await asyncio.sleep(0.3)  # the pending 50 is gone: the balance now includes the charge
        await granted(backend, ask(hold=50, balance=100))
        await refused(backend, ask(hold=1, balance=100), RefusalReason.BALANCE)

    backends.run(scenario)


def test_a_crashed_replica_loses_its_slots_and_holds_when_leases_expire(
    backends: Backends,
) -> None:
    limits = replace(LIMITS, concurrency=2)

    async def scenario() -> None:
        crashed = backends.new(lease_seconds=0.5)
        await crashed.start()
        for _ in range(2):
            await granted(crashed, ask(limits=limits, hold=50, balance=100))
        await crashed.aclose()  # stops renewing and never settles, like a dead process
        survivor = backends.replica(crashed, lease_seconds=0.5)
        refusal = await refused(survivor, ask(limits=limits), RefusalReason.CONCURRENCY)
        assert 0.05 <= refusal.retry_after_seconds <= 0.5
        await asyncio.sleep(0.6)
        await granted(survivor, ask(limits=limits, hold=100, balance=100))
        await granted(survivor, ask(limits=limits))

    backends.run(scenario)


def test_renewal_keeps_a_long_request_past_its_lease(backends: Backends) -> None:
    async def scenario() -> None:
        one_slot = replace(LIMITS, concurrency=1)
        backend = backends.new(lease_seconds=0.3)
        await backend.start()
        grant = await granted(backend, ask(limits=one_slot, hold=100))
        await asyncio.sleep(1.0)  # more than three leases
        await refused(backend, ask(limits=one_slot, balance=100), RefusalReason.CONCURRENCY)
        await refused(backend, ask(hold=1, balance=100), RefusalReason.BALANCE)
        await backend.settle(grant, 10, 0)
        await granted(backend, ask(limits=one_slot, hold=100, balance=100))

    backends.run(scenario)


def test_a_refusal_changes_nothing(backends: Backends) -> None:
    limits = TierLimits(concurrency=2, requests_per_minute=4, tokens_per_minute=100)

    async def scenario() -> None:
        backend = backends.new()
        first = await granted(backend, ask(limits=limits, tokens=30, hold=60, balance=100))
        await refused(backend, ask(limits=limits, tokens=80), RefusalReason.TOKENS)
        await refused(backend, ask(limits=limits, hold=50, balance=100), RefusalReason.BALANCE)
        second = await granted(backend, ask(limits=limits, hold=40, balance=100))
        assert (second.remaining_requests, second.remaining_tokens) == (2, 60)
        refusal = await refused(backend, ask(limits=limits), RefusalReason.CONCURRENCY)
        assert (refusal.remaining_requests, refusal.remaining_tokens) == (2, 60)
        await backend.settle(first, 30, 0)
        await backend.settle(second, 10, 0)
        third = await granted(backend, ask(limits=limits, hold=100, balance=100))
        await backend.settle(third, 10, 0)
        fourth = await granted(backend, ask(limits=limits))
        await backend.settle(fourth, 10, 0)
        refusal = await refused(backend, ask(limits=limits), RefusalReason.REQUESTS)
        assert (refusal.remaining_requests, refusal.remaining_tokens) == (0, 40)
        again = await refused(backend, ask(limits=limits), RefusalReason.REQUESTS)
        assert again.remaining_tokens == 40

    backends.run(scenario)


def test_checks_run_in_order_concurrency_requests_tokens_balance(backends: Backends) -> None:
    tight = TierLimits(concurrency=1, requests_per_minute=1, tokens_per_minute=10)

    async def scenario() -> None:
        backend = backends.new()
        grant = await granted(backend, ask(limits=tight, tokens=10, hold=100, balance=100))
        over_all = ask(limits=tight, tokens=10, hold=1, balance=100)
        await refused(backend, over_all, RefusalReason.CONCURRENCY)
        await backend.settle(grant, 10, 100)  # charged: held as pending
        await refused(backend, over_all, RefusalReason.REQUESTS)
        await refused(
            backend,
            replace(over_all, limits=replace(tight, requests_per_minute=2)),
            RefusalReason.TOKENS,
        )
        roomy = replace(tight, requests_per_minute=2, tokens_per_minute=20)
        await refused(backend, replace(over_all, limits=roomy), RefusalReason.BALANCE)

    backends.run(scenario)


def test_settle_is_idempotent(backends: Backends) -> None:
    limits = replace(LIMITS, tokens_per_minute=100)

    async def scenario() -> None:
        backend = backends.new(pending_seconds=0.2)
        grant = await granted(backend, ask(limits=limits, tokens=50, hold=100, balance=100))
        await backend.settle(grant, 10, 30)
        await backend.settle(grant, 10, 30)  # a second correction would leave 0 tokens, not 10
        other = await granted(backend, ask(limits=limits, tokens=90, hold=70, balance=100))
        assert other.remaining_tokens == 0
        await asyncio.sleep(0.3)  # the pending 30 is gone; settling again must not bring it back
        await backend.settle(grant, 10, 30)
        await granted(
            backend, ask(limits=replace(limits, tokens_per_minute=200), hold=30, balance=100)
        )

    backends.run(scenario)


def test_memory_limits_keep_nothing_per_settled_request_but_its_admission_time() -> None:
    """A settled request leaves its admission time in the minute's log (it still counts) and,
    while charged, one pending amount; nothing else. Its time leaves the log after a minute."""

    async def scenario() -> None:
        backend = MemoryLimits(pending_seconds=10)
        clock = [backend._now()]
        backend._now = lambda: clock[0]  # type: ignore[method-assign]
        for charged in (0, 0, 5, 0, 5):
            await backend.settle(await granted(backend, ask()), 10, charged)
            clock[0] += 1000
        account = backend._accounts["acct"]
        assert (account.leases, account.running, account.running_total) == ({}, {}, 0)
        assert len(account.requests) == 5
        assert [amount for _, amount in account.pending] == [5, 5]
        clock[0] += WINDOW_MS - 5000 + 1500  # the first two admissions are a minute old
        await granted(backend, ask())
        assert len(account.requests) == 4
        assert (len(account.pending), account.pending_total) == (0, 0)

    asyncio.run(scenario())


@given(
    gaps=st.lists(st.integers(0, 3), max_size=3 * COMPACT_AFTER),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
@settings(max_examples=40, deadline=None)
def test_a_time_log_forgets_exactly_the_times_through_each_cut(
    gaps: list[int], cuts: list[int]
) -> None:
    """Whatever the cuts and however often the log compacts, it keeps the times after the
    latest cut, in order."""
    times = list(itertools.accumulate(gaps))
    log = TimeLog()
    for time_ms in times:
        log.append(time_ms)
    kept = times
    for cut in sorted(cuts):
        log.forget_through(cut)
        kept = [time_ms for time_ms in kept if time_ms > cut]
        assert len(log) == len(kept)
        assert log.oldest() == (kept[0] if kept else None)


def test_settle_after_the_lease_expired_still_corrects_tokens_once(backends: Backends) -> None:
    limits = replace(LIMITS, tokens_per_minute=100)

    async def scenario() -> None:
        backend = backends.new(lease_seconds=0.2)  # never started: the lease just runs out
        grant = await granted(backend, ask(limits=limits, tokens=80))
        await asyncio.sleep(0.3)
        await backend.settle(grant, 10, 0)
        await backend.settle(grant, 10, 0)
        other = await granted(backend, ask(limits=limits, tokens=90))
        assert other.remaining_tokens == 0

    backends.run(scenario)


def test_replicas_under_a_burst_admit_exactly_the_limits(backends: Backends) -> None:
    limits = TierLimits(concurrency=5, requests_per_minute=10, tokens_per_minute=1_000_000)

    async def scenario() -> None:
        first = backends.new()
        replicas = [first, backends.replica(first)]

        async def burst() -> Counter[str]:
            pairs = [(replicas[i % 2], ask(limits=limits)) for i in range(50)]
            results = await asyncio.gather(*(replica.reserve(one) for replica, one in pairs))
            for (replica, _), result in zip(pairs, results, strict=True):
                if isinstance(result, Grant):
                    await replica.settle(result, 10, 0)
            return Counter(_outcome(result) for result in results)

        assert await burst() == {"granted": 5, "concurrency": 45}
        assert await burst() == {"granted": 5, "concurrency": 45}
        assert await burst() == {"requests": 50}

    backends.run(scenario)


def _outcome(result: Grant | Refusal) -> str:
    return "granted" if isinstance(result, Grant) else result.reason.value


def test_redis_keys_share_the_account_hash_tag_and_expire(redis_server: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex}"

    async def scenario() -> None:
        client = Redis.from_url(redis_server.url, decode_responses=True)  # works either way
        backend = RedisLimits(client, prefix=prefix)
        try:
            grant = await granted(backend, ask(account="acme", hold=5))
            await granted(backend, ask(account="acme", hold=5))  # still running
            await backend.settle(grant, 10, 5)
            keys = sorted(await client.keys(f"{prefix}:*"))
            names = [
                "conc",
                f"done:{grant.ask.request_id}",
                "held",
                "holdexp",
                "holds",
                "reqs",
                "toks",
            ]
            assert keys == [f"{prefix}:{{acme}}:{name}" for name in names]
            ttls = [await client.pttl(key) for key in keys]
            assert all(ttl > 0 for ttl in ttls), ttls
        finally:
            await backend.aclose()
            await client.aclose()

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_SECONDS))


def test_memory_and_redis_decide_alike(redis_server: RedisServer) -> None:
    """A seeded random run of reserves and (sometimes repeated) settles gets the same decisions
    from both backends. Nothing expires during it, so time hardly matters."""
    rng = random.Random(20240611)
    tiers = {  # one account short of each limit
        "tokens": TierLimits(concurrency=4, requests_per_minute=100, tokens_per_minute=400),
        "requests": TierLimits(concurrency=4, requests_per_minute=15, tokens_per_minute=10**5),
        "slots": TierLimits(concurrency=2, requests_per_minute=100, tokens_per_minute=10**5),
    }

    async def scenario() -> Counter[str]:
        memory = MemoryLimits(lease_seconds=30, pending_seconds=30)
        redis = RedisLimits.from_url(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")
        running: list[tuple[Grant, Grant]] = []
        outcomes: Counter[str] = Counter()
        try:
            for _ in range(200):
                if running and rng.random() < 0.45:
                    await _settle_both(rng, memory, redis, running)
                    continue
                account = rng.choice(sorted(tiers))
                request = ask(
                    limits=tiers[account],
                    account=account,
                    tokens=rng.randint(0, 150),
                    hold=rng.randint(0, 300),
                    balance=1500,
                )
                in_memory, in_redis = await memory.reserve(request), await redis.reserve(request)
                assert _decision(in_memory) == _decision(in_redis), request
                assert abs(_wait(in_memory) - _wait(in_redis)) < 1.5
                outcomes[_outcome(in_memory)] += 1
                if isinstance(in_memory, Grant) and isinstance(in_redis, Grant):
                    running.append((in_memory, in_redis))
        finally:
            await redis.aclose()
        return outcomes

    outcomes = asyncio.run(asyncio.wait_for(scenario(), SCENARIO_SECONDS))
    assert set(outcomes) == {"granted", *RefusalReason}, outcomes


async def _settle_both(
    rng: random.Random,
    memory: LimitBackend,
    redis: LimitBackend,
    running: list[tuple[Grant, Grant]],
) -> None:
    """Settle a random running request in both backends, now and then twice."""
    in_memory, in_redis = running.pop(rng.randrange(len(running)))
    tokens = rng.randint(0, in_memory.ask.tokens + 50)
    charged = rng.randint(0, in_memory.ask.hold)
    for _ in range(2 if rng.random() < 0.2 else 1):
        await memory.settle(in_memory, tokens, charged)
        await redis.settle(in_redis, tokens, charged)


def _decision(result: Grant | Refusal) -> tuple[object, ...]:
    if isinstance(result, Grant):
        return ("granted", result.remaining_requests, result.remaining_tokens)
    return (result.reason, result.limit, result.remaining_requests, result.remaining_tokens)


def _wait(result: Grant | Refusal) -> float:
    if isinstance(result, Grant):
        return result.reset_requests_seconds + result.reset_tokens_seconds
    return result.retry_after_seconds


def test_a_redis_reserve_sent_twice_counts_once(redis_server: RedisServer) -> None:
    """A batch whose replies were lost is sent again: the request it admitted already must not
    take a second slot, request, token count or hold."""
    limits = TierLimits(concurrency=1, requests_per_minute=2, tokens_per_minute=100)

    async def scenario() -> None:
        backend = RedisLimits.from_url(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")
        try:
            request = ask(limits=limits, tokens=60, hold=70, balance=100)
            first = await granted(backend, request)
            again = await granted(backend, request)  # over every limit if counted twice
            assert again.bucket == first.bucket
            assert again.remaining_requests == first.remaining_requests == 1
            assert again.remaining_tokens == first.remaining_tokens == 40
            await backend.settle(first, 60, 0)
            # one slot, one request, 60 tokens and no hold were used: this one fits exactly
            await granted(backend, ask(limits=limits, tokens=40, hold=100, balance=100))
        finally:
            await backend.aclose()

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_SECONDS))


def test_redis_calls_survive_a_dropped_connection(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        backend = RedisLimits.from_url(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")
        admin = Redis.from_url(redis_server.url)
        try:
            grant = await granted(backend, ask())
            assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
            await backend.settle(grant, 10, 0)  # on the killed connection, then a fresh one
            await granted(backend, ask())
        finally:
            await backend.aclose()
            await admin.aclose()

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_SECONDS))


def test_redis_scripts_are_loaded_again_after_a_script_flush(redis_server: RedisServer) -> None:
    """Redis restarted or was flushed: the scripts are gone, and the calls still run."""

    async def scenario() -> None:
        backend = RedisLimits.from_url(redis_server.url, prefix=f"test-{uuid.uuid4().hex}")
        admin = Redis.from_url(redis_server.url)
        try:
            grant = await granted(backend, ask())
            await admin.script_flush()
            await backend.settle(grant, 10, 0)
            await asyncio.gather(*(granted(backend, ask()) for _ in range(3)))
        finally:
            await backend.aclose()
            await admin.aclose()

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_SECONDS))


def test_redis_limits_log_in_and_select_the_database_of_their_url(
    redis_server: RedisServer,
) -> None:
    """A URL's user, password and database are used: the keys land in that database."""

    async def scenario() -> None:
        admin = Redis.from_url(redis_server.url)
        user, password = f"limits-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        await admin.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"]
        )
        url = f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/3"
        prefix = f"test-{uuid.uuid4().hex}"
        backend = RedisLimits.from_url(url, prefix=prefix)
        in_db3 = Redis.from_url(url)
        try:
            await granted(backend, ask(account="acme"))
            assert await in_db3.zcard(f"{prefix}:{{acme}}:conc") == 1
            assert await admin.zcard(f"{prefix}:{{acme}}:conc") == 0  # not in database 0
            wrong = RedisLimits.from_url(url.replace(password, "wrong"), prefix=prefix)
            with pytest.raises(ResponseError, match="WRONGPASS"):
                await wrong.reserve(ask())
            await wrong.aclose()
        finally:
            await backend.aclose()
            await in_db3.aclose()
            await admin.acl_deluser(user)
            await admin.aclose()

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_SECONDS))


def test_closing_redis_limits_sends_the_settlements_already_made(
    redis_server: RedisServer,
) -> None:
    """Shutdown right after requests end: their settlements (not awaited by the gate) still
    reach Redis before the client closes, so no slot waits for its lease to expire. The close
    comes 0-3 turns after the settlements, to catch their batch at every stage of its trip."""

    async def settle_then_close(turns: int) -> int:
        prefix = f"test-{uuid.uuid4().hex}"
        backend = RedisLimits.from_url(redis_server.url, prefix=prefix)
        grants = [await granted(backend, ask(account="acme")) for _ in range(5)]
        for grant in grants:
            backend.settle(grant, 10, 0)
        for _ in range(turns):
            await asyncio.sleep(0)
        await backend.aclose()
        client = Redis.from_url(redis_server.url)
        try:
            return await client.zcard(f"{prefix}:{{acme}}:conc")
        finally:
            await client.aclose()

    async def scenario() -> list[int]:
        return [await settle_then_close(turns) for turns in range(4)]

    assert asyncio.run(asyncio.wait_for(scenario(), SCENARIO_SECONDS)) == [0, 0, 0, 0]

"""Limits kept in Redis, exact across every replica sharing it.

Each operation is one Lua script, so it is atomic on the server; scripts are loaded once and run
by EVALSHA. The operations that concurrent requests start in one turn of the event loop go to
Redis together, in one pipeline (`stepflash.gate.redis_scripts`): one round trip and one
wake-up for many requests. Scripts read the time with `redis.call('TIME')`, so replicas whose
clocks disagree still agree on every lease, window and bucket. The rules are those of `MemoryLimits`
(see `stepflash.gate.memory_limits`), whose constants the scripts receive as arguments.

Keys, per account (the `{account}` hash tag keeps them in one cluster slot; account ids must not
contain braces):

* `{prefix}:{account}:conc`     ZSET request id -> lease expiry (ms)
* `{prefix}:{account}:reqs`     ZSET request id -> admission time (ms), the last minute
* `{prefix}:{account}:toks`     HASH unix second -> tokens, the last minute
* `{prefix}:{account}:holds`    HASH request id -> micro-units held
* `{prefix}:{account}:holdexp`  ZSET request id -> hold expiry (ms)
* `{prefix}:{account}:held`     the sum of `holds`, kept as they change (never rescanned)
* `{prefix}:{account}:done:ID`  settled marker, gone after two minutes

Every key expires after a window plus a lease plus `pending_seconds` without writes or renewals,
so an idle account leaves nothing behind. Needs Redis 5 or later (scripts that write after
`TIME`); money is summed as Lua numbers, exact below 2**53 micro-units.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Set
from dataclasses import dataclass

from redis.asyncio import Redis

from stepflash.gate.limits import Ask, Grant, Refusal, RefusalReason
from stepflash.gate.memory_limits import (
    RETRY_MAX_MS,
    RETRY_MIN_MS,
    SETTLED_MS,
    WINDOW_MS,
    LeaseRenewal,
)
from stepflash.gate.redis_scripts import ScriptPipeline

_CLOCK = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""

# KEYS: conc, reqs, toks, holds, holdexp, held
# ARGV: request id, tokens, hold, balance, concurrency, requests/min, tokens/min,
#       lease ms, key ttl ms, window ms, min retry ms, max retry ms
# Returns {code, wait ms, remaining requests, remaining tokens, reset tokens ms, bucket}: code 0
# admits (wait = until a request slot frees), 1-4 refuse (wait = retry after) for concurrency,
# requests, tokens, balance. A request id admitted already is admitted again without change, so
# a batch may be sent twice.
RESERVE = (
    _CLOCK
    + """
local rid, tokens, hold, balance = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local concurrency, rpm, tpm = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lease, ttl, window = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local retry_min, retry_max = tonumber(ARGV[11]), tonumber(ARGV[12])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
for _, expired in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  local amount = redis.call('HGET', KEYS[4], expired)
  if amount then redis.call('DECRBY', KEYS[6], amount) end
  redis.call('HDEL', KEYS[4], expired)
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)

local buckets, used = {}, 0
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  local second, count = tonumber(flat[i]), tonumber(flat[i + 1])
  if second * 1000 + window > now then
    buckets[#buckets + 1] = {second, count}
    used = used + count
  else
    redis.call('HDEL', KEYS[3], flat[i])
  end
end

local function tokens_wait(left, need)
  if left + need <= tpm then return 0 end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  for _, bucket in ipairs(buckets) do
    left = left - bucket[2]
    if left + need <= tpm then return bucket[1] * 1000 + window - now end
  end
  return window
end

local function requests_wait()
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #oldest == 0 then return window end
  return tonumber(oldest[2]) + window - now
end

local function concurrency_wait()
  local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #earliest == 0 then return retry_max end
  return math.min(math.max(tonumber(earliest[2]) - now, retry_min), retry_max)
end

local held = tonumber(redis.call('GET', KEYS[6]) or '0')
local live, count = redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])
local left_requests, left_tokens = math.max(rpm - count, 0), math.max(tpm - used, 0)

local admitted = redis.call('ZSCORE', KEYS[2], rid)
if admitted then  -- a batch sent again after its reply was lost: admitted already, change nothing
  local second = math.floor(tonumber(admitted) / 1000)
  return {0, requests_wait(), left_requests, left_tokens, tokens_wait(used, tokens), second}
end

if live >= concurrency then return {1, concurrency_wait(), left_requests, left_tokens, 0, 0} end
if count >= rpm then return {2, requests_wait(), left_requests, left_tokens, 0, 0} end
if used + tokens > tpm then
  return {3, tokens_wait(used, tokens), left_requests, left_tokens, 0, 0}
end
if balance - held < hold then return {4, 0, left_requests, left_tokens, 0, 0} end

redis.call('ZADD', KEYS[1], now + lease, rid)
redis.call('ZADD', KEYS[2], now, rid)
redis.call('HINCRBY', KEYS[3], time[1], ARGV[2])
redis.call('HSET', KEYS[4], rid, ARGV[3])
redis.call('INCRBY', KEYS[6], ARGV[3])
redis.call('ZADD', KEYS[5], now + lease, rid)
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
buckets[#buckets + 1] = {tonumber(time[1]), tokens}
local reset_tokens = tokens_wait(used + tokens, tokens)
return {0, requests_wait(), left_requests - 1, tpm - used - tokens, reset_tokens, tonumber(time[1])}
"""
)

# KEYS: conc, toks, holds, holdexp, done marker, held
# ARGV: request id, bucket, token correction, charged, pending ms, key ttl ms, marker ms, window ms
# Returns 1, or 0 when the request was already settled.
SETTLE = (
    _CLOCK
    + """
if not redis.call('SET', KEYS[5], '1', 'NX', 'PX', ARGV[7]) then return 0 end
local rid = ARGV[1]
redis.call('ZREM', KEYS[1], rid)
if tonumber(ARGV[2]) * 1000 + tonumber(ARGV[8]) > now then
  local tokens = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') + tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', math.max(tokens, 0)))
end
local holding = tonumber(redis.call('HGET', KEYS[3], rid) or '0')
if tonumber(ARGV[4]) > 0 then
  redis.call('HSET', KEYS[3], rid, ARGV[4])
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), rid)
  redis.call('INCRBY', KEYS[6], tonumber(ARGV[4]) - holding)
else
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[4], rid)
  redis.call('DECRBY', KEYS[6], holding)
end
for _, i in ipairs({2, 3, 4, 6}) do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return 1
"""
)

# KEYS: conc, holds, holdexp
# ARGV: lease ms, key ttl ms, request ids...
# Extends live leases and their holds; an expired lease stays lost (its slot may be taken).
RENEW = (
    _CLOCK
    + """
local expiry = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  local current = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if current and tonumber(current) > now then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
    redis.call('ZADD', KEYS[3], 'XX', expiry, ARGV[i])
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return 0
"""
)

_KEY_CACHE_ACCOUNTS = 10_000  # bounded: forgotten all at once when full, rebuilt on use


@dataclass(frozen=True, slots=True)
class _AccountKeys:
    reserve: list[str]
    settle: list[str]
    held: str
    done: str  # the settled marker's key, less the request id


_REFUSALS = list(RefusalReason)  # reply codes 1-4, in the order the checks run


Running = Mapping[str, Set[str]]  # account -> ids of its requests this process is running


class RunningGrants:
    """The requests this process admitted and has not settled: the leases it must renew in a
    store that other replicas share."""

    def __init__(self) -> None:
        self._by_account: dict[str, set[str]] = {}

    def add(self, ask: Ask) -> None:
        ids = self._by_account.get(ask.account)
        if ids is None:  # not setdefault: that would build a spare set every call
            ids = self._by_account[ask.account] = set()
        ids.add(ask.request_id)

    def discard(self, ask: Ask) -> None:
        ids = self._by_account.get(ask.account)
        if ids is None:
            return
        ids.discard(ask.request_id)
        if not ids:
            del self._by_account[ask.account]

    def snapshot(self) -> Running:
        return {account: frozenset(ids) for account, ids in self._by_account.items()}


class RedisLimits:
    """Per-account limits and balance holds shared by every replica using one Redis.

    `client`: a `redis.asyncio.Redis` the caller owns and closes (or use `from_url`, whose client
    `aclose` closes). `lease_seconds`, `pending_seconds`: as for `MemoryLimits`. `prefix`: the
    first part of every key, to share one Redis between deployments or tests.
    """

    def __init__(
        self,
        client: Redis,
        *,
        lease_seconds: float = 30.0,
        pending_seconds: float = 3.0,
        prefix: str = "sf",
    ) -> None:
        self._client = client
        self._owns_client = False
        self._prefix = prefix
        self._lease_ms = round(lease_seconds * 1000)
        self._pending_ms = round(pending_seconds * 1000)
        self._ttl_ms = WINDOW_MS + self._lease_ms + self._pending_ms
        self._scripts = ScriptPipeline(client, RESERVE, SETTLE, RENEW)
        self._key_cache: dict[str, _AccountKeys] = {}
        self._running = RunningGrants()
        self._renewal = LeaseRenewal(lease_seconds, self._renew)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        lease_seconds: float = 30.0,
        pending_seconds: float = 3.0,
        prefix: str = "sf",
    ) -> RedisLimits:
        """Connect to `url` (e.g. `redis://host:6379/0`) with a client this backend owns."""
        limits = cls(
            Redis.from_url(url),
            lease_seconds=lease_seconds,
            pending_seconds=pending_seconds,
            prefix=prefix,
        )
        limits._owns_client = True
        return limits

    async def start(self) -> None:
        await self._renewal.start()

    async def aclose(self) -> None:
        await self._renewal.aclose()
        await self._scripts.aclose()
        if self._owns_client:
            await self._client.aclose()

    async def reserve(self, ask: Ask) -> Grant | Refusal:
        limits = ask.limits
        reply = await self._scripts.submit(
            RESERVE,
            keys=self._account_keys(ask.account).reserve,
            args=[
                ask.request_id,
                ask.tokens,
                ask.hold,
                ask.balance,
                limits.concurrency,
                limits.requests_per_minute,
                limits.tokens_per_minute,
                self._lease_ms,
                self._ttl_ms,
                WINDOW_MS,
                RETRY_MIN_MS,
                RETRY_MAX_MS,
            ],
        )
        code, wait_ms, requests, tokens, reset_tokens_ms, bucket = (int(value) for value in reply)
        if code:
            reason = _REFUSALS[code - 1]
            return Refusal(reason, wait_ms / 1000, _limit(reason, ask), requests, tokens)
        self._running.add(ask)
        return Grant(ask, bucket, requests, tokens, wait_ms / 1000, reset_tokens_ms / 1000)

    def settle(self, grant: Grant, tokens: int, charged: int) -> asyncio.Future[None]:
        ask = grant.ask
        self._running.discard(ask)
        keys = self._account_keys(ask.account)
        return self._scripts.submit(
            SETTLE,
            keys=[*keys.settle, keys.done + ask.request_id, keys.held],
            args=[
                ask.request_id,
                grant.bucket,
                tokens - ask.tokens,
                charged,
                self._pending_ms,
                self._ttl_ms,
                SETTLED_MS,
                WINDOW_MS,
            ],
        )

    def _keys(self, account: str, *names: str) -> list[str]:
        return [f"{self._prefix}:{{{account}}}:{name}" for name in names]

    def _account_keys(self, account: str) -> _AccountKeys:
        """The keys every reserve and settle of `account` names, built once per account."""
        keys = self._key_cache.get(account)
        if keys is None:
            if len(self._key_cache) >= _KEY_CACHE_ACCOUNTS:
                self._key_cache.clear()
            keys = _AccountKeys(
                reserve=self._keys(account, "conc", "reqs", "toks", "holds", "holdexp", "held"),
                settle=self._keys(account, "conc", "toks", "holds", "holdexp"),
                held=self._keys(account, "held")[0],
                done=self._keys(account, "done:")[0],
            )
            self._key_cache[account] = keys
        return keys

    async def _renew(self) -> None:
        for account, request_ids in self._running.snapshot().items():
            await self._scripts.submit(
                RENEW,
                keys=self._keys(account, "conc", "holds", "holdexp"),
                args=[self._lease_ms, self._ttl_ms, *request_ids],
            )


def _limit(reason: RefusalReason, ask: Ask) -> int:
    """The limit a refusal reports: the one that refused, or the balance for BALANCE."""
    return {
        RefusalReason.CONCURRENCY: ask.limits.concurrency,
        RefusalReason.REQUESTS: ask.limits.requests_per_minute,
        RefusalReason.TOKENS: ask.limits.tokens_per_minute,
        RefusalReason.BALANCE: ask.balance,
    }[reason]

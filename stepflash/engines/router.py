"""A router over the replicas of one model: affinity, health, failover before the first token.

* Prefix affinity: requests whose conversations start the same go to the same replica, so its
  prefix cache stays warm (rendezvous hashing, so adding a replica moves few prefixes).
* Health: a replica that fails is benched for a cooldown and probed in the background; a
  replica with too many requests in flight is skipped while others have room.
* Failover: a failure before the first event is retried on the next replica; after output
  has been sent nothing is retried — the stream ends with a well-formed error instead, and
  the tokens delivered so far are reported as usage first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.core.events import Event
from stepflash.core.request import ChatRequest, MediaKind
from stepflash.engines.upstream.transport import StreamCut, UpstreamUnavailable

log = logging.getLogger(__name__)


class ReplicaEngine(Protocol):
    kind: str
    model_name: str
    context_length: int
    media: frozenset[MediaKind]

    def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]: ...

    async def count_prompt_tokens(self, request: ChatRequest) -> int: ...


@dataclass(frozen=True, slots=True)
class RouterPolicy:
    max_attempts: int = 3
    max_in_flight: int = 256  # per replica; beyond it the replica counts as overloaded
    cooldown_seconds: float = 10.0
    health_interval_seconds: float = 5.0
    affinity_chars: int = 2048  # how much of the conversation's start decides the replica


@dataclass(slots=True)
class Replica:
    name: str
    engine: ReplicaEngine
    probe: Callable[[], Awaitable[bool]] | None = None
    in_flight: int = 0
    benched_until: float = 0.0
    failures: int = field(default=0)

    def healthy(self, now: float) -> bool:
        return now >= self.benched_until


def affinity_key(request: ChatRequest, chars: int) -> str:
    """The start of the conversation, as a replica's prefix cache holds it after earlier turns.

    The newest message is left out (no replica has cached it yet), so every turn of one
    conversation maps to the same key once its shared start is at least `chars` long.
    """
    parts = [tool.name for tool in request.tools]
    size = 0
    history = request.messages[:-1] or request.messages
    for message in history:
        text = f"{message.role}:{message.text}"
        parts.append(text)
        size += len(text)
        if size >= chars:
            break
    return "\n".join(parts)[:chars]


def _score(key: str, replica: Replica) -> int:
    digest = hashlib.blake2b(f"{replica.name}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest)


class Router:
    """Looks like one engine of the replicas' kind (`openai`, `completions`) to the catalog."""

    def __init__(self, replicas: Sequence[Replica], policy: RouterPolicy) -> None:
        if not replicas:
            raise ValueError("a router needs at least one replica")
        self.replicas = list(replicas)
        self.policy = policy
        first = replicas[0].engine
        self.kind = first.kind
        self.model_name = first.model_name
        self.context_length = first.context_length
        self.media = first.media
        self._health_task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> int:
        return sum(replica.in_flight for replica in self.replicas)

    @property
    def available(self) -> bool:
        now = time.monotonic()
        return any(replica.healthy(now) for replica in self.replicas)

    def order(self, request: ChatRequest) -> list[Replica]:
        """Replicas to try, best first: affinity order, healthy and unloaded ones ahead."""
        key = affinity_key(request, self.policy.affinity_chars)
        ranked = sorted(self.replicas, key=lambda replica: _score(key, replica), reverse=True)
        now = time.monotonic()

        def rank(replica: Replica) -> int:
            if not replica.healthy(now):
                return 2
            return 1 if replica.in_flight >= self.policy.max_in_flight else 0

        return sorted(ranked, key=rank)[: self.policy.max_attempts]

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        failures: list[str] = []
        for replica in self.order(request):
            delivered = False
            replica.in_flight += 1
            try:
                async with aclosing(replica.engine.stream(request)) as events:
                    async for event in events:
                        delivered = True
                        yield event
                replica.failures = 0
                return
            except StreamCut as cut:
                self._bench(replica, str(cut))
                yield cut.usage
                raise StepflashError(
                    ErrorKind.UPSTREAM, f"the upstream failed mid-stream: {cut}"
                ) from cut
            except UpstreamUnavailable as error:
                self._bench(replica, str(error))
                if delivered:
                    raise StepflashError(ErrorKind.UPSTREAM, str(error)) from error
                failures.append(f"{replica.name}: {error}")
            finally:
                replica.in_flight -= 1
        raise StepflashError(
            ErrorKind.OVERLOADED,
            "no replica could serve the request: " + "; ".join(failures),
            retry_after=self.policy.cooldown_seconds,
        )

    async def count_prompt_tokens(self, request: ChatRequest) -> int:
        """Asked of the replicas in the order a request would go to them."""
        failures: list[str] = []
        for replica in self.order(request):
            try:
                return await replica.engine.count_prompt_tokens(request)
            except UpstreamUnavailable as error:
                self._bench(replica, str(error))
                failures.append(f"{replica.name}: {error}")
        raise StepflashError(
            ErrorKind.OVERLOADED,
            "no replica could count the tokens: " + "; ".join(failures),
            retry_after=self.policy.cooldown_seconds,
        )

    def _bench(self, replica: Replica, reason: str) -> None:
        replica.failures += 1
        replica.benched_until = time.monotonic() + self.policy.cooldown_seconds
        log.warning(
            "replica %s benched for %gs: %s", replica.name, self.policy.cooldown_seconds, reason
        )

    async def start(self) -> None:
        if any(replica.probe for replica in self.replicas):
            self._health_task = asyncio.create_task(self._watch_health())

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task

    async def _watch_health(self) -> None:
        """Probe every replica; a failed probe benches it, a passing one reinstates it."""
        while True:
            await asyncio.sleep(self.policy.health_interval_seconds)
            for replica in self.replicas:
                if replica.probe is None:
                    continue
                ok = await replica.probe()
                if ok and not replica.healthy(time.monotonic()):
                    log.info("replica %s is healthy again", replica.name)
                    replica.benched_until = 0.0
                elif not ok:
                    self._bench(replica, "health check failed")

"""Build the served models from the configuration: engines, routers and their names.

With no `[[models]]` configured, the embedded CPU model serves its `served_as` names (as a
labelled stand-in). Otherwise each configured model gets its backend: a router over upstream
replicas, or the embedded model, which is loaded once however many names point at it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from stepflash.config import BackendKind, ModelSettings, Settings
from stepflash.engines.base import Engine
from stepflash.engines.embedded.engine import EmbeddedEngine
from stepflash.engines.router import Replica, ReplicaEngine, Router, RouterPolicy
from stepflash.engines.upstream.completions import CompletionsReplica
from stepflash.engines.upstream.openai_chat import OpenAIChatReplica, UpstreamTarget
from stepflash.engines.upstream.transport import UpstreamTimeouts
from stepflash.protocol.openai_client import EffortPassing
from stepflash.serving.catalog import ModelCatalog, ServedModel, embedded_catalog

Probe = Callable[[], Awaitable[bool]]
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)


def _probe(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Probe:
    """A health check: the replica answers a GET without a server error."""

    async def probe() -> bool:
        try:
            async with session.get(url, headers=headers, timeout=PROBE_TIMEOUT) as response:
                return response.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False

    return probe


def _router(model: ModelSettings, session: aiohttp.ClientSession) -> Router:
    replicas = []
    for url in model.replicas:
        base = url.rstrip("/")
        target = UpstreamTarget(
            base,
            model.upstream_model or model.name,
            model.api_key,
            UpstreamTimeouts(connect=model.connect_timeout, read=model.read_timeout),
        )
        engine: ReplicaEngine
        if model.backend is BackendKind.COMPLETIONS:
            engine = CompletionsReplica(
                target,
                session,
                model.context_length,
                model.write_bos,
                model.accepted_media,
                model.image_placeholder,
            )
        else:
            engine = OpenAIChatReplica(
                target,
                session,
                EffortPassing(model.effort),
                model.context_length,
                model.accepted_media,
            )
        probe = None
        if model.health_path:
            probe = _probe(session, base + model.health_path, target.headers)
        replicas.append(Replica(base, engine, probe))
    policy = RouterPolicy(
        max_attempts=model.max_attempts,
        max_in_flight=model.max_in_flight,
        cooldown_seconds=model.cooldown_seconds,
        health_interval_seconds=model.health_interval_seconds,
        affinity_chars=model.affinity_chars,
    )
    return Router(replicas, policy)


def uses_embedded(settings: Settings) -> bool:
    """Whether any served name is answered by the embedded CPU model."""
    return not settings.models or any(
        model.backend is BackendKind.EMBEDDED for model in settings.models
    )


async def build_catalog(
    settings: Settings, session: aiohttp.ClientSession, embedded: Engine | None = None
) -> ModelCatalog:
    """Every served name with its engine; loads the embedded model only if something uses it."""

    async def load_embedded() -> Engine:
        nonlocal embedded
        if embedded is None:
            embedded = await asyncio.to_thread(EmbeddedEngine.load, settings)
        return embedded

    if not settings.models:
        return embedded_catalog(await load_embedded(), settings.embedded.served_as)
    served: list[ServedModel] = []
    for model in settings.models:
        if model.backend is BackendKind.EMBEDDED:
            engine = await load_embedded()
            stand_in = True
        else:
            engine = _router(model, session)
            stand_in = False
        for name in (model.name, *model.aliases):
            stand_in_for = name if stand_in else None
            served.append(ServedModel(name, engine, stand_in_for, image_detail=model.image_detail))
    return ModelCatalog(served, settings.step_plan)

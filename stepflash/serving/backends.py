"""Build the served models from the configuration: engines, routers and their names.

With no `[[models]]` configured, the embedded CPU model serves its `served_as` names (as a
labelled stand-in). Otherwise each configured model gets its backend: a router over upstream
replicas, or the embedded model, which is loaded once however many names point at it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from stepflash.config import BackendKind, ModelSettings, Settings
from stepflash.engines.base import Engine
from stepflash.engines.embedded.engine import EmbeddedEngine
from stepflash.engines.router import Replica, ReplicaEngine, Router, RouterPolicy
from stepflash.engines.upstream.completions import CompletionsReplica
from stepflash.engines.upstream.openai_chat import OpenAIChatReplica, UpstreamTarget
from stepflash.engines.upstream.transport import UpstreamTimeouts
from stepflash.protocol.openai_client import EffortPassing
from stepflash.serving.catalog import ModelCatalog, ServedModel, embedded_catalog


def _probe(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        try:
            response = await client.get(url, headers=headers, timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    return probe


def _router(model: ModelSettings, client: httpx.AsyncClient) -> Router:
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
            engine = CompletionsReplica(target, client, model.context_length, model.write_bos)
        else:
            engine = OpenAIChatReplica(
                target, client, EffortPassing(model.effort), model.context_length
            )
        probe = (
            _probe(client, base + model.health_path, target.headers) if model.health_path else None
        )
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
    settings: Settings, client: httpx.AsyncClient, embedded: Engine | None = None
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
            engine = _router(model, client)
            stand_in = False
        for name in (model.name, *model.aliases):
            served.append(ServedModel(name, engine, stand_in_for=name if stand_in else None))
    return ModelCatalog(served, settings.step_plan)

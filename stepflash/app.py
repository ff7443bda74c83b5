"""create_app(settings): wires the pieces together and does nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from stepflash import __version__
from stepflash.api import chat_completions, health, models
from stepflash.api.errors import BodySizeLimit, install_error_handlers
from stepflash.config import Settings
from stepflash.engines.base import Engine
from stepflash.engines.embedded.engine import EmbeddedEngine
from stepflash.serving.catalog import embedded_catalog
from stepflash.serving.chat import ChatService

log = logging.getLogger("stepflash")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The ASGI app. Pass a loaded engine, or the app loads the configured one at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded: Engine
        if engine is not None:
            loaded = engine
        else:
            loaded = await asyncio.to_thread(EmbeddedEngine.load, settings)
        catalog = embedded_catalog(loaded, settings.embedded.served_as)
        for model in catalog.all():
            report = log.warning if model.stand_in_for else log.info
            report("serving %s: %s", model.id, model.note)
        app.state.chat = ChatService(catalog, settings.limits)
        try:
            yield
        finally:
            del app.state.chat
            loaded.close()

    app = FastAPI(
        title="stepflash",
        version=__version__,
        description="Step 3.7 Flash the way the StepFun Open Platform serves it.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    for router in (health.router, models.router, chat_completions.router):
        app.include_router(router)
    return app

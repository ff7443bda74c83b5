"""create_app(settings): wires the pieces together and does nothing else."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from stepflash import __version__
from stepflash.accounts.services import open_account_services
from stepflash.api import account, chat_completions, files, health, messages, models
from stepflash.api.auth import Authenticate
from stepflash.api.body import install_body_schemas
from stepflash.api.errors import BodySizeLimit, install_error_handlers
from stepflash.config import Settings
from stepflash.engines.base import Engine
from stepflash.engines.upstream.transport import new_session
from stepflash.media.prepare import MediaPreparer
from stepflash.protocol.anthropic import CountTokensRequest, MessagesRequest
from stepflash.protocol.openai import ChatCompletionRequest
from stepflash.protocol.signature import load_signer
from stepflash.serving.backends import build_catalog
from stepflash.serving.chat import ChatService

log = logging.getLogger("stepflash")

# The OpenAI and Anthropic APIs, also under StepFun's Step Plan base path (an Anthropic client
# given the base URL `/step_plan` posts to `/step_plan/v1/messages`).
API_PREFIXES = ("/v1", "/step_plan/v1")
GIL_SWITCH_SECONDS = 0.0005
# The cyclic collector's young generation runs after this many net allocations instead of
# Python's 700. A request in flight holds a few hundred container objects (frames, futures,
# dicts), so at 700 the collector ran every few requests and rescanned every live request
# each time. Few of those objects are cyclic garbage (a
# gateway serving 1,500 requests/s for 10 s did not reach 50,000), so little memory waits.
GC_YOUNG_THRESHOLD = 50_000


def create_app(settings: Settings, embedded: Engine | None = None) -> FastAPI:
    """The ASGI app. Pass a loaded embedded engine, or the app loads it at startup if needed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.accounts = await stack.enter_async_context(open_account_services(settings))
            session = await stack.enter_async_context(new_session())
            catalog = await build_catalog(settings, session, embedded)
            engines = catalog.engines()
            for engine in engines:
                await engine.start()
            for model in catalog.all():
                report = log.warning if model.stand_in_for else log.info
                report("serving %s: %s", model.routed_from or model.id, model.note)
            app.state.chat = ChatService(catalog, settings.limits, MediaPreparer(settings.media))
            # Everything built so far lives as long as the process: keep it out of the
            # cyclic collector's scans, which otherwise grow with the app's object graph.
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            # A thread that needs the interpreter while the event loop is busy (the SQLite
            # ledger writer after each fsync) waits up to this long for it: 5 ms by default,
            # which would stretch every group commit, and every request waiting on one.
            sys.setswitchinterval(GIL_SWITCH_SECONDS)
            try:
                yield
            finally:
                del app.state.chat
                for engine in engines:
                    await engine.aclose()

    app = FastAPI(
        title="stepflash",
        version=__version__,
        description="Step 3.7 Flash the way the StepFun Open Platform serves it.",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry hooks look up the global providers on every request
        # (about 6% of a gateway's CPU); they are on only when asked for.
        telemetry=None
        if settings.telemetry
        else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.thinking_signer = load_signer(settings.thinking_signing_key, settings.cache_dir)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(Authenticate)  # outermost: a refused caller costs nothing more
    app.include_router(health.router)
    for prefix in API_PREFIXES:
        app.include_router(models.router, prefix=prefix)
        app.include_router(chat_completions.router, prefix=prefix)
        app.include_router(messages.router, prefix=prefix)
    app.include_router(account.router, prefix="/v1")
    app.include_router(files.router, prefix="/v1")
    install_body_schemas(app, [ChatCompletionRequest, MessagesRequest, CountTokensRequest])
    return app

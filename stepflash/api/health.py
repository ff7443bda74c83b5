"""Liveness and readiness. The only routes that will never require authentication."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Models are loaded and requests will be served."""
    chat = getattr(request.app.state, "chat", None)
    if chat is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    engines = [
        {"backend": f"{engine.kind}/{engine.model_name}", "busy": engine.busy}
        for engine in chat.catalog.engines()
    ]
    return JSONResponse(
        {"status": "ready", "models": [m.id for m in chat.catalog.all()], "engines": engines}
    )

"""GET /v1/models: what is served, by which backend, and which names are stand-ins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from stepflash.api.deps import chat_service
from stepflash.serving.catalog import ServedModel

router = APIRouter(tags=["models"])
CREATED = 1_767_225_600  # 2026-01-01: a fixed, honest "created" for locally served models


def _entry(model: ServedModel) -> dict[str, Any]:
    return {
        "id": model.routed_from or model.id,
        "object": "model",
        "created": CREATED,
        "owned_by": "stepflash",
        "context_length": model.engine.context_length,
        "stepflash": {
            "backend": model.backend,
            "stand_in": model.stand_in_for is not None,
            "stand_in_for": model.stand_in_for,
            "note": model.note,
            "routes_to": model.id if model.routed_from else None,
        },
    }


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_entry(m) for m in chat_service(request).catalog.all()]}


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    return _entry(chat_service(request).catalog.get(model_id))

"""Shared pieces the routers take from the application state."""

from __future__ import annotations

from starlette.requests import Request

from stepflash.serving.catalog import ServedModel
from stepflash.serving.chat import ChatService


def chat_service(request: Request) -> ChatService:
    return request.app.state.chat


def backend_headers(model: ServedModel) -> dict[str, str]:
    """Say plainly which backend answered, and whether it stands in for another model."""
    headers = {"x-stepflash-backend": model.backend}
    if model.stand_in_for:
        headers["x-stepflash-stand-in-for"] = model.stand_in_for
    if model.routed_from:
        headers["x-stepflash-routed-to"] = model.id
    return headers

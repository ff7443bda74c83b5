"""Authentication on every route but health: a pure ASGI middleware, so a refused request
costs no routing, no body parsing and no engine work, and answers in the caller's protocol."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from stepflash.api.errors import error_response
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.gate.auth import Principal, secret_from_headers

OPEN_PATHS = frozenset({"/health", "/ready"})


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        services = getattr(scope["app"].state, "accounts", None)
        headers = dict(scope["headers"])
        try:
            if services is None:
                raise StepflashError(ErrorKind.OVERLOADED, "the server is starting")
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            api_key = headers.get(b"x-api-key", b"").decode("latin-1")
            principal = await services.auth.authenticate(
                secret_from_headers(authorization, api_key)
            )
        except StepflashError as error:
            await error_response(error, scope["path"])(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def principal(request: Request) -> Principal:
    return request.state.principal


def require_admin(request: Request) -> Principal:
    who = principal(request)
    if not who.admin:
        raise StepflashError(ErrorKind.FORBIDDEN, "this route needs an admin key")
    return who

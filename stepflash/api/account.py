"""The account routes: one's own balance, usage and keys; top-ups for admins.

An ordinary key sees and manages only its own account, and the keys it creates are ordinary
keys of that account: a key can never grant more than its creator has. An admin key may name
any account (`?account=`) and create admin keys.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from stepflash.accounts.pricing import format_money, to_micro
from stepflash.accounts.services import AccountServices
from stepflash.accounts.store import USAGE_GROUPS, AccountError, check_account_name
from stepflash.api.auth import principal, require_admin
from stepflash.core.errors import ErrorKind, StepflashError, invalid
from stepflash.gate.auth import Principal

router = APIRouter(tags=["account"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=128)
    account: str | None = Field(None, description="Admins only: another account.")
    admin: bool = Field(False, description="Admins only: an admin key.")


class TopUp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str
    amount: Decimal = Field(description="In the billing currency; negative corrects a mistake.")
    reference: str | None = Field(None, max_length=128, description="Makes the top-up idempotent.")


def _services(request: Request) -> AccountServices:
    return request.app.state.accounts


def _account_for(who: Principal, asked: str | None) -> str:
    """The account a request may act on: its own, or any for an admin."""
    if asked is None or asked == who.account_id:
        return who.account_id
    if not who.admin:
        raise StepflashError(ErrorKind.FORBIDDEN, "a key may only act on its own account")
    return asked


def _wrap(error: AccountError) -> StepflashError:
    return invalid(str(error))


@router.get("/account")
async def get_account(request: Request, account: str | None = None) -> dict[str, Any]:
    """Balance, cumulative top-up, tier and its limits."""
    services = _services(request)
    target = _account_for(principal(request), account)
    totals = await services.store.totals(target)
    if totals is None:
        raise StepflashError(ErrorKind.NOT_FOUND, f"no account {target!r}")
    tiers = services.gate.tiers
    limits = tiers.limits(totals.topup_total)
    return {
        "id": target,
        "object": "account",
        "currency": services.gate.prices.currency,
        "balance": format_money(totals.balance),
        "topup_total": format_money(totals.topup_total),
        "tier": tiers.name(totals.topup_total),
        "limits": {
            "concurrency": limits.concurrency,
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
        },
    }


@router.get("/usage")
async def get_usage(
    request: Request,
    account: str | None = None,
    days: int = Query(30, ge=1, le=3660),
    group_by: str = Query("day,model,key", description="Any of day, model, key."),
) -> dict[str, Any]:
    """Tokens and charges from the ledger."""
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    if not groups or any(g not in USAGE_GROUPS for g in groups):
        raise invalid("group_by takes day, model and/or key", "group_by")
    services = _services(request)
    target = _account_for(principal(request), account)
    since = int(time.time()) - days * 86_400
    rows = await services.store.usage(target, since, groups, limit=10_000)
    data = [{**row, "cost": format_money(row["cost"])} for row in rows]
    return {"object": "list", "currency": services.gate.prices.currency, "data": data}


@router.get("/keys")
async def list_keys(request: Request, account: str | None = None) -> dict[str, Any]:
    """The account's keys by id and prefix; secrets are never stored."""
    target = _account_for(principal(request), account)
    return {"object": "list", "data": await _services(request).store.list_keys(target)}


@router.post("/keys")
async def create_key(request: Request, body: KeyCreate) -> dict[str, Any]:
    """A new key, shown once. Ordinary keys create ordinary keys of their own account."""
    who = principal(request)
    target = _account_for(who, body.account)
    if body.admin and not who.admin:
        raise StepflashError(ErrorKind.FORBIDDEN, "only an admin key may create an admin key")
    try:
        check_account_name(target)
        key = await _services(request).store.create_key(
            target, name=body.name, admin=body.admin, created_by=who.key_id
        )
    except AccountError as error:
        raise _wrap(error) from None
    return {"id": key.id, "object": "api_key", "account": target, "key": key.secret}


@router.delete("/keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    who = principal(request)
    services = _services(request)
    if not await services.store.revoke_key(key_id, None if who.admin else who.account_id):
        raise StepflashError(ErrorKind.NOT_FOUND, f"no key {key_id!r}")
    services.auth.forget_key(key_id)
    return {"id": key_id, "object": "api_key", "revoked": True}


@router.post("/admin/topup")
async def admin_topup(request: Request, body: TopUp) -> dict[str, Any]:
    """Credit an account (admin keys only)."""
    require_admin(request)
    services = _services(request)
    try:
        check_account_name(body.account)
        totals = await services.store.topup(body.account, to_micro(body.amount), body.reference)
    except AccountError as error:
        raise _wrap(error) from None
    services.auth.update_totals(body.account, totals)
    return {
        "account": body.account,
        "balance": format_money(totals.balance),
        "topup_total": format_money(totals.topup_total),
        "tier": services.gate.tiers.name(totals.topup_total),
    }

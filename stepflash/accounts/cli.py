"""`stepflash keys create|list|revoke`, `stepflash topup` and `stepflash usage`.

They work on the database directly (the one in the settings), so the first admin key can be
made before any server runs; a running server sees changes within `accounts.cache_seconds`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from stepflash.accounts.database import DatabaseError, open_database
from stepflash.accounts.pricing import format_money, to_micro
from stepflash.accounts.store import USAGE_GROUPS, AccountError, AccountStore
from stepflash.config import ConfigError, Settings, load_settings
from stepflash.gate.tiers import TierTable

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()
T = TypeVar("T")

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {message}")
    return typer.Exit(code)


def _run(config: Path | None, work: Callable[[AccountStore, Settings], Awaitable[T]]) -> T:
    """Open the database (migrating it), run `work`, close; errors become messages."""
    try:
        settings = load_settings(config)
    except ConfigError as error:
        raise _fail(str(error), 2) from None

    async def main() -> T:
        database = await open_database(settings.database_url)
        try:
            return await work(AccountStore(database, settings.billing.currency), settings)
        finally:
            await database.aclose()

    try:
        return asyncio.run(main())
    except (AccountError, DatabaseError) as error:
        raise _fail(str(error)) from None


def _when(seconds: int | None) -> str:
    return "" if seconds is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


@keys_app.command("create")
def keys_create(
    account: Annotated[
        str, typer.Argument(help="The account the key spends from (created if new).")
    ],
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
    admin: Annotated[bool, typer.Option(help="May use the admin routes and any account.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print it once: it is stored only as a hash."""
    key = _run(config, lambda store, _s: store.create_key(account, name=name, admin=admin))
    if as_json:
        out.print_json(json.dumps({"id": key.id, "account": account, "key": key.secret}))
        return
    console.print(f"created {key.id} for account [bold]{account}[/bold]; it is shown only now:")
    out.print(key.secret, highlight=False)


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List keys by id and prefix (the secrets are not stored)."""
    keys = _run(config, lambda store, _s: store.list_keys(account))
    if as_json:
        out.print_json(json.dumps(keys))
        return
    table = Table("id", "account", "name", "prefix", "admin", "created (UTC)", "revoked (UTC)")
    for key in keys:
        table.add_row(
            key["id"],
            key["account_id"],
            key["name"],
            key["prefix"] + "…",
            "yes" if key["admin"] else "",
            _when(key["created_at"]),
            _when(key["revoked_at"]),
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…), from `keys list`.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key; servers refuse it within accounts.cache_seconds."""
    if not _run(config, lambda store, _s: store.revoke_key(key_id)):
        raise _fail(f"no key {key_id!r}; `stepflash keys list` shows them")
    console.print(f"revoked {key_id}")


def topup(
    account: Annotated[str, typer.Argument(help="The account to credit (created if new).")],
    amount: Annotated[str, typer.Argument(help="In the billing currency, e.g. 100 or 12.50.")],
    reference: Annotated[
        str | None, typer.Option(help="An id that makes the top-up idempotent (e.g. a receipt).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Credit an account's balance; its tier follows its cumulative top-up."""
    try:
        micro = to_micro(Decimal(amount))
    except InvalidOperation:
        raise _fail(f"amount {amount!r} is not a number", 2) from None

    async def work(store: AccountStore, settings: Settings) -> tuple[Any, str]:
        totals = await store.topup(account, micro, reference)
        assert settings.billing.tiers is not None
        return totals, TierTable(settings.billing.tiers).name(totals.topup_total)

    totals, tier = _run(config, work)
    console.print(
        f"{account}: balance {format_money(totals.balance)}, "
        f"topped up {format_money(totals.topup_total)} in all, tier {tier}"
    )


def usage(
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    days: Annotated[int, typer.Option(min=1, max=3660, help="Look back this many days.")] = 30,
    by: Annotated[
        str, typer.Option(help="Group by any of day, model, key (comma-separated).")
    ] = "day,model,key",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tokens and charges from the ledger, by day, model and key."""
    groups = tuple(g.strip() for g in by.split(",") if g.strip())
    if not groups or any(g not in USAGE_GROUPS for g in groups):
        raise _fail(f"--by takes day, model and/or key, not {by!r}", 2)
    since = int(time.time()) - days * 86_400
    rows = _run(config, lambda store, _s: store.usage(account, since, groups))
    if as_json:
        out.print_json(json.dumps([{**r, "cost": format_money(r["cost"])} for r in rows]))
        return
    columns = ([] if account else ["account"]) + list(groups)
    table = Table(title=f"usage, last {days} days (cost in {_currency(config)})")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for heading in _USAGE_NUMBERS.values():
        table.add_column(heading, justify="right")
    table.add_column("cost", justify="right", no_wrap=True)
    for row in rows:
        cells = [str(row[c] or "") for c in columns]
        numbers = (f"{row[n]:,}" for n in _USAGE_NUMBERS)
        table.add_row(*cells, *numbers, format_money(row["cost"]))
    out.print(table)


_USAGE_NUMBERS = {
    "entries": "entries",
    "prompt_tokens": "prompt",
    "cached_tokens": "cached",
    "completion_tokens": "output",
    "web_searches": "searches",
}


def _currency(config: Path | None) -> str:
    return load_settings(config).billing.currency

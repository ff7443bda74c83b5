"""The planner's answer for people: a verdict, the memory split, the commands to run."""

from __future__ import annotations

import shlex

import tomlkit
from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from stepflash.deploy.planner import HF_CACHE_MOUNT, Plan, docker_run_line


def _quote(word: str) -> str:
    return f'"{word}"' if word == HF_CACHE_MOUNT else shlex.quote(word)


def shell_line(argv: list[str], environment: dict[str, str] | None = None) -> str:
    """One copy-pasteable shell command, continued over lines for long flag lists."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (environment or {}).items())
    words = [_quote(word) for word in argv]
    lines, current = [], ([prefix] if prefix else []) + words[:1]
    for word in words[1:]:
        if word.startswith("-") and len(" ".join(current)) > 20:
            lines.append(" ".join(current))
            current = []
        current.append(word)
    lines.append(" ".join(current))
    return " \\\n    ".join(lines)


def backend_toml(plan: Plan) -> str:
    document = tomlkit.document()
    models = tomlkit.aot()
    models.append(tomlkit.item(plan.backend))
    document["models"] = models
    return tomlkit.dumps(document)


def _memory_table(plan: Plan) -> Table:
    data = plan.to_json()
    memory, kv = data["memory_gb"], data["kv_cache"]
    target = plan.target
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row(f"memory per {target.hardware.profile.name}", f"{memory['device']} GB")
    table.add_row(f"weights per device ({plan.layout})", f"{memory['weights_per_device']} GB")
    table.add_row("runtime headroom per device", f"{memory['runtime_reserve_per_device']} GB")
    table.add_row("KV cache room, all devices", f"{memory['kv_cache_total']} GB")
    table.add_row(
        f"KV per token ({target.kv_cache.value}, full-attention layers)",
        f"{kv['full_attention_kib_per_token']} KiB",
    )
    table.add_row("KV per sequence, sliding layers", f"{kv['sliding_mib_per_sequence']} MiB")
    table.add_row(
        f"KV per sequence at {target.context:,} tokens", f"{kv['gb_per_sequence_at_context']} GB"
    )
    table.add_row(
        f"sequences at {target.context:,} tokens", f"{data['max_sequences_at_context']:,}"
    )
    table.add_row(
        f"longest context for {target.concurrency} sequence(s)",
        f"{data['max_context_at_concurrency']:,}",
    )
    return table


def _verdict(plan: Plan) -> str:
    target = plan.target
    what = (
        f"{target.model.name} {target.quantization.value} on {target.hardware.label} "
        f"with {target.engine.value}"
    )
    if plan.fits:
        return f"[bold green]fits[/bold green]: {what}"
    reasons = "\n".join(f"  • {problem}" for problem in plan.problems)
    return f"[bold red]does not fit[/bold red]: {what}\n{reasons}"


def _commands(plan: Plan) -> list[Panel]:
    panels = []
    native = [*plan.command.before, shell_line(plan.command.argv, plan.command.environment)]
    panels.append(Panel(Syntax("\n".join(native), "bash", word_wrap=True), title="run natively"))
    docker = docker_run_line(plan)
    if docker:
        panels.append(Panel(Syntax(shell_line(docker), "bash", word_wrap=True), title="or Docker"))
    panels.append(Panel(Syntax(backend_toml(plan), "toml"), title="stepflash.toml backend entry"))
    return panels


def print_plan(plan: Plan, console: Console) -> None:
    parts: list[object] = [_verdict(plan), _memory_table(plan)]
    parts += [f"[dim]note: {note}[/dim]" for note in plan.notes]
    console.print(Panel(Group(*parts), title="stepflash deploy plan"))  # type: ignore[arg-type]
    if plan.fits:
        for panel in _commands(plan):
            console.print(panel)
        return
    alternative = plan.alternative
    if alternative is None:
        console.print("[yellow]no nearby configuration fits this hardware[/yellow]")
        return
    console.print(f"[bold]nearest that fits[/bold]: change {'; '.join(alternative.changes)}")
    print_plan(alternative.plan, console)

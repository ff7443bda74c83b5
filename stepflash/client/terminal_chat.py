"""`stepflash chat`: a terminal chat against any stepflash (or OpenAI-compatible) server.

Reasoning streams dimmed and apart from the answer. Enter sends; Alt+Enter (or Esc, Enter)
starts a new line, and pasted text keeps its newlines. Ctrl-C stops the answer being
written without leaving; Ctrl-D leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openai
from prompt_toolkit import PromptSession
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console

KEYS = "Enter sends, Alt+Enter for a new line, Ctrl-C stops an answer, Ctrl-D quits."
COMMANDS = "/reset clears the conversation, /effort low|medium|high changes the level, /exit leaves"


@dataclass
class ChatState:
    model: str
    effort: str
    system: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    @bindings.add("enter")
    def _submit(event: Any) -> None:
        event.current_buffer.validate_and_handle()

    return bindings


def _stream_answer(client: openai.OpenAI, state: ChatState, console: Console) -> str:
    """Print one streamed answer; return its text (partial if the user pressed Ctrl-C)."""
    answer: list[str] = []
    in_reasoning = False
    stream = client.chat.completions.create(  # type: ignore[call-overload]
        model=state.model,
        messages=state.messages(),
        stream=True,
        reasoning_effort=state.effort,
        stream_options={"include_usage": True},
    )
    try:
        for chunk in stream:
            for choice in chunk.choices:
                delta = choice.delta.model_dump()
                reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                if reasoning:
                    if not in_reasoning:
                        console.print("thinking: ", style="dim bold", end="")
                        in_reasoning = True
                    console.print(
                        reasoning, style="dim italic", end="", markup=False, highlight=False
                    )
                if delta.get("content"):
                    if in_reasoning:
                        console.print("\n")
                        in_reasoning = False
                    answer.append(delta["content"])
                    console.print(delta["content"], end="", markup=False, highlight=False)
            if chunk.usage:
                console.print(
                    f"\n[dim]{chunk.usage.prompt_tokens} prompt + "
                    f"{chunk.usage.completion_tokens} completion tokens[/dim]",
                    highlight=False,
                )
    except KeyboardInterrupt:
        console.print("\n[yellow]stopped[/yellow]")
    finally:
        stream.close()
    return "".join(answer)


def run_chat(url: str, api_key: str, state: ChatState, console: Console | None = None) -> None:
    console = console or Console()
    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key, max_retries=0)
    session: PromptSession[str] = PromptSession(multiline=True, key_bindings=_key_bindings())
    console.print(f"[bold]stepflash chat[/bold] with {state.model} at {url}, effort {state.effort}")
    console.print(f"[dim]{KEYS} {COMMANDS}[/dim]")
    while True:
        try:
            text = session.prompt("> ").strip()
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            state.history.clear()
            console.print("[dim]conversation cleared[/dim]")
            continue
        if text.startswith("/effort"):
            level = text.removeprefix("/effort").strip()
            if level in ("low", "medium", "high"):
                state.effort = level
                console.print(f"[dim]effort is now {level}[/dim]")
            else:
                console.print("[red]use /effort low, /effort medium or /effort high[/red]")
            continue
        state.history.append({"role": "user", "content": text})
        try:
            answer = _stream_answer(client, state, console)
        except KeyboardInterrupt:
            state.history.pop()
            console.print("\n[yellow]stopped before the answer began[/yellow]")
            continue
        except openai.APIError as error:
            state.history.pop()
            console.print(f"[red]error: {error}[/red]")
            continue
        console.print()
        state.history.append({"role": "assistant", "content": answer})

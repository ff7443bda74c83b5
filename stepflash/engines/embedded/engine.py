"""The embedded engine: a small real model on the CPU through llama.cpp.

Turns a `ChatRequest` into canonical events. Everything that can fail because of the request
(context too long, an unenforceable schema) fails in `stream` before the first event, so the
caller still gets a proper HTTP error; generation itself runs on the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

from llama_cpp import Llama

from stepflash.config import Settings
from stepflash.core.errors import invalid
from stepflash.core.events import Event, Usage
from stepflash.core.request import ChatRequest, MediaKind, Message, Role
from stepflash.dialects.qwen.grammar import grammar_for
from stepflash.dialects.qwen.template import THINK_CLOSE, render_prompt
from stepflash.engines.embedded.generation import CallKey, GenerationJob, GenerationPlan, call_key
from stepflash.engines.embedded.model_store import ProgressCallback, resolve_model
from stepflash.engines.embedded.worker import Worker

log = logging.getLogger(__name__)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def answered_calls(messages: tuple[Message, ...]) -> frozenset[CallKey]:
    """Calls made since the last user message whose results are already in the conversation."""
    last_user = max((i for i, m in enumerate(messages) if m.role is Role.USER), default=-1)
    recent = messages[last_user + 1 :]
    answered_ids = {m.tool_call_id for m in recent if m.role is Role.TOOL}
    return frozenset(
        call_key(call.name, call.arguments)
        for message in recent
        for call in message.tool_calls
        if call.id in answered_ids
    )


def _merge_choice_usage(total: Usage | None, choice: Usage) -> Usage:
    """All choices share one prompt: count it once (as OpenAI does), sum what they generated."""
    if total is None:
        return choice
    return Usage(
        total.prompt_tokens,
        total.completion_tokens + choice.completion_tokens,
        total.cached_tokens,
        total.reasoning_tokens + choice.reasoning_tokens,
    )


class EmbeddedEngine:
    kind = "embedded"
    media: frozenset[MediaKind] = frozenset()  # the embedded models read text only

    def __init__(self, settings: Settings, llama: Llama, model_name: str) -> None:
        self._settings = settings
        self._llama = llama
        self.model_name = model_name
        self._worker: Worker[Llama] = Worker(
            llama,
            settings.embedded.queue_size,
            settings.retry_after_seconds,
            name="stepflash-embedded",
        )

    @classmethod
    def load(cls, settings: Settings, progress: ProgressCallback | None = None) -> EmbeddedEngine:
        """Resolve and verify the model, then load it; slow, so call it before serving."""
        embedded = settings.embedded
        path: Path = resolve_model(embedded.model, settings.cache_dir, progress)
        llama = Llama(
            model_path=str(path),
            n_ctx=embedded.n_ctx,
            n_batch=embedded.n_batch,
            n_threads=embedded.n_threads or os.cpu_count() or 1,
            verbose=False,
        )
        name = path.stem if embedded.model.endswith(".gguf") else path.stem.rsplit("-", 1)[0]
        log.info("embedded model %s loaded from %s (context %d)", name, path, embedded.n_ctx)
        return cls(settings, llama, name)

    @property
    def context_length(self) -> int:
        return self._llama.n_ctx()

    @property
    def busy(self) -> int:
        return self._worker.outstanding

    @property
    def available(self) -> bool:
        return True

    def tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode(), add_bos=True, special=True)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        plans = await asyncio.to_thread(self._plan, request)
        total: Usage | None = None
        for plan in plans:
            async with aclosing(self._worker.run(GenerationJob(plan))) as events:
                async for event in events:
                    if isinstance(event, Usage):
                        total = _merge_choice_usage(total, event)
                        continue
                    yield event
        if total is not None:
            yield total

    def _prompt(self, request: ChatRequest) -> list[int]:
        budget = self._settings.reasoning.budget(request.effort)
        instruction = self._settings.reasoning.instruction if budget > 0 else None
        return self.tokenize(render_prompt(request.messages, request.offered_tools, instruction))

    async def count_prompt_tokens(self, request: ChatRequest) -> int:
        return len(await asyncio.to_thread(self._prompt, request))

    def _plan(self, request: ChatRequest) -> list[GenerationPlan]:
        tools = request.offered_tools
        budget = self._settings.reasoning.budget(request.effort)
        prompt = self._prompt(request)
        max_tokens = self._answer_budget(request, len(prompt))
        grammar = grammar_for(request)
        without_tools = None
        if tools:
            without_tools = self.tokenize(render_prompt(request.messages, ()))
        close = self._llama.tokenize(THINK_CLOSE.encode(), add_bos=False, special=True)
        return [
            GenerationPlan(
                choice=choice,
                prompt_tokens=prompt,
                reasoning_budget=budget,
                max_tokens=max_tokens,
                sampling=request.sampling,
                grammar=grammar,
                tool_names=frozenset(tool.name for tool in tools),
                parallel_tool_calls=request.parallel_tool_calls,
                guard_repeats=not request.tool_choice.forces_call,
                answered_calls=answered_calls(request.messages),
                no_tools_prompt_tokens=without_tools,
                close_tokens=close,
                new_call_id=new_call_id,
            )
            for choice in range(request.n)
        ]

    def _answer_budget(self, request: ChatRequest, prompt_tokens: int) -> int:
        context = self.context_length
        room = context - prompt_tokens
        if room <= 0:
            raise invalid(
                f"the prompt is {prompt_tokens} tokens but this model's context is {context} "
                "tokens; shorten the conversation",
                "messages",
            )
        if request.max_tokens is None:
            return min(self._settings.limits.default_max_tokens, room)
        if request.max_tokens > room:
            raise invalid(
                f"max_tokens is {request.max_tokens} but only {room} tokens are left in this "
                f"model's {context}-token context after the {prompt_tokens}-token prompt; "
                f"lower max_tokens to at most {room}",
                "max_tokens",
            )
        return request.max_tokens

    async def start(self) -> None:
        """Nothing to start: the worker thread runs from construction."""

    async def aclose(self) -> None:
        await asyncio.to_thread(self._worker.close)

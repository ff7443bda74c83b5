"""One choice of one request on llama.cpp: an optional reasoning pass, then the answer.

The embedded models have no native thinking, so reasoning is emulated: the prompt opens a
`<think>` block and the model writes until it closes it or its budget (by effort level) runs
out; then we close the block and let it answer. Both passes continue one token sequence, so
the answer pass reuses the KV cache of the prompt and of the reasoning.

Runs on the worker thread; everything it needs is decided beforehand in a `GenerationPlan`.
"""

from __future__ import annotations

import codecs
import json
import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import llama_cpp
from llama_cpp import Llama, LlamaGrammar

from stepflash.core.events import (
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from stepflash.core.request import Sampling
from stepflash.core.stop import StopMatcher
from stepflash.dialects.qwen.tool_parser import QwenToolCallParser

THINK_END = "</think>"
LLAMA_TOP_K = 40  # llama-cpp-python's own default, kept when the caller sets none
CallKey = tuple[str, str]


def call_key(name: str, arguments: str) -> CallKey:
    """Identity of a call regardless of key order or spacing in its arguments."""
    try:
        canonical = json.dumps(json.loads(arguments or "{}"), sort_keys=True)
    except json.JSONDecodeError:
        canonical = arguments
    return name, canonical


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    choice: int
    prompt_tokens: list[int]
    reasoning_budget: int
    max_tokens: int
    sampling: Sampling
    grammar: str | None
    tool_names: frozenset[str]
    parallel_tool_calls: bool
    guard_repeats: bool
    answered_calls: frozenset[CallKey]
    no_tools_prompt_tokens: list[int] | None
    close_tokens: list[int]
    new_call_id: Callable[[], str]


@dataclass(slots=True)
class _Pass:
    """The outcome of one generation pass."""

    tokens: list[int]
    eog: bool = False
    cancelled: bool = False


class GenerationJob:
    """Callable run by the worker: yields the events of one choice, ending with Finish and Usage."""

    def __init__(self, plan: GenerationPlan) -> None:
        self.plan = plan
        self._generated = 0

    def __call__(self, llama: Llama, cancel: threading.Event) -> Iterator[Event]:
        plan = self.plan
        cached = _cached_prefix(llama, plan.prompt_tokens)
        sequence = list(plan.prompt_tokens)
        reasoning_tokens = 0
        if plan.reasoning_budget > 0:
            budget = min(plan.reasoning_budget, plan.max_tokens)
            reasoning = yield from self._reason(llama, sequence, budget, cancel)
            reasoning_tokens = len(reasoning.tokens)
            if reasoning.cancelled:
                return
            sequence += reasoning.tokens + plan.close_tokens
        yield from self._answer(llama, sequence, cancel)
        yield Usage(len(plan.prompt_tokens), self._generated, cached, reasoning_tokens)

    def _remaining(self) -> int:
        return self.plan.max_tokens - self._generated

    def _reason(
        self, llama: Llama, sequence: list[int], budget: int, cancel: threading.Event
    ) -> Generator[Event, None, _Pass]:
        index = self.plan.choice
        matcher = StopMatcher([THINK_END])
        trailing = ""  # whitespace held back: it is dropped if the block ends right after it
        started = False
        outcome = _Pass([])
        for text in self._tokens(llama, sequence, budget, None, cancel, outcome):
            released = matcher.feed(text)
            if not started:
                released = released.lstrip()
                started = bool(released)
            body = (trailing + released).rstrip()
            trailing = (trailing + released)[len(body) :]
            if body:
                yield ReasoningDelta(body, index)
            if matcher.matched:
                break
        return outcome

    def _answer(
        self, llama: Llama, sequence: list[int], cancel: threading.Event
    ) -> Iterator[Event]:
        plan = self.plan
        if self._remaining() <= 0:
            yield Finish(FinishReason.LENGTH, plan.choice)
            return
        grammar = LlamaGrammar.from_string(plan.grammar, verbose=False) if plan.grammar else None
        answer = _Answer(plan)
        outcome = yield from self._answer_pass(llama, sequence, grammar, answer, cancel)
        if outcome.cancelled:
            return
        if (
            answer.wants_retry_without_tools
            and plan.no_tools_prompt_tokens
            and self._remaining() > 0
        ):
            # The model repeated a call whose result it already has: let it answer in words.
            answer = _Answer(plan, with_tools=False)
            retry = list(plan.no_tools_prompt_tokens)
            outcome = yield from self._answer_pass(llama, retry, None, answer, cancel)
            if outcome.cancelled:
                return
        yield from answer.finish(truncated=not outcome.eog and not answer.stop.matched)

    def _answer_pass(
        self,
        llama: Llama,
        sequence: list[int],
        grammar: LlamaGrammar | None,
        answer: _Answer,
        cancel: threading.Event,
    ) -> Generator[Event, None, _Pass]:
        outcome = _Pass([])
        for text in self._tokens(llama, sequence, self._remaining(), grammar, cancel, outcome):
            yield from answer.feed(text)
            if answer.stop.matched:
                break
        return outcome

    def _tokens(
        self,
        llama: Llama,
        sequence: list[int],
        limit: int,
        grammar: LlamaGrammar | None,
        cancel: threading.Event,
        outcome: _Pass,
    ) -> Iterator[str]:
        """Sample up to `limit` tokens after `sequence`, yielding decoded text as it completes."""
        sampling = self.plan.sampling
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4))
        llama.set_seed((seed + 7919 * self.plan.choice) & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llama._model.vocab
        generator = llama.generate(
            sequence,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=LLAMA_TOP_K if sampling.top_k is None else sampling.top_k,
            grammar=grammar,
        )
        try:
            for token in generator:
                if cancel.is_set():
                    outcome.cancelled = True
                    return
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    outcome.eog = True
                    return
                outcome.tokens.append(token)
                self._generated += 1
                text = decoder.decode(llama.detokenize([token]))
                if text:
                    yield text
                if len(outcome.tokens) >= limit:
                    return
        finally:
            generator.close()


class _Answer:
    """Answer text → stop strings → tool-call parsing → events; guards against repeated calls."""

    def __init__(self, plan: GenerationPlan, with_tools: bool = True) -> None:
        self.plan = plan
        self.stop = StopMatcher(plan.sampling.stop)
        names = plan.tool_names if with_tools else frozenset()
        self._parser = QwenToolCallParser(names, plan.new_call_id, plan.choice) if names else None
        self._started = False
        self._emitted_content = False
        self._emitted_calls = 0
        self._dropped_repeat = False
        self._call_index_map: dict[int, int] = {}
        self._dropping: set[int] = set()
        self._pending_start: dict[int, ToolCallStart] = {}

    @property
    def wants_retry_without_tools(self) -> bool:
        return self._dropped_repeat and not self._emitted_content and not self._emitted_calls

    def feed(self, text: str) -> Iterator[Event]:
        released = self.stop.feed(text)
        if not self._started:
            released = released.lstrip()
            self._started = bool(released)
        yield from self._route(released, final=False, truncated=False)

    def finish(self, truncated: bool) -> Iterator[Event]:
        tail = self.stop.flush()
        truncated = truncated and self.stop.matched is None  # a stop found last is a stop
        yield from self._route(tail, final=True, truncated=truncated)
        reason = FinishReason.STOP
        if self._emitted_calls:
            reason = FinishReason.TOOL_CALLS
        elif truncated:
            reason = FinishReason.LENGTH
        yield Finish(reason, self.plan.choice, self.stop.matched)

    def _route(self, text: str, final: bool, truncated: bool) -> Iterator[Event]:
        if self._parser is None:
            if text:
                self._emitted_content = True
                yield TextDelta(text, self.plan.choice)
            return
        events = self._parser.feed(text) if text else []
        if final:
            events += self._parser.finish(truncated)
        for event in events:
            yield from self._guard(event)

    def _guard(self, event: Event) -> Iterator[Event]:
        """Drop a call identical to one whose result the conversation already holds."""
        match event:
            case TextDelta():
                self._emitted_content = True
                yield event
            case ToolCallStart(call_index=ci):
                self._pending_start[ci] = event
            case ToolCallDelta(call_index=ci, arguments=arguments):
                start = self._pending_start.pop(ci)
                repeated = (
                    self.plan.guard_repeats
                    and call_key(start.name, arguments) in self.plan.answered_calls
                )
                limit_one = not self.plan.parallel_tool_calls and self._emitted_calls >= 1
                if repeated or limit_one:
                    self._dropped_repeat |= repeated
                    self._dropping.add(ci)
                    return
                self._call_index_map[ci] = self._emitted_calls
                self._emitted_calls += 1
                position = self._call_index_map[ci]
                yield ToolCallStart(position, start.id, start.name, start.index)
                yield ToolCallDelta(position, arguments, event.index)
            case ToolCallEnd(call_index=ci):
                if ci in self._dropping:
                    return
                yield ToolCallEnd(self._call_index_map[ci], event.index)


def _cached_prefix(llama: Llama, tokens: list[int]) -> int:
    """How many prompt tokens llama.cpp will reuse from its KV cache instead of recomputing."""
    if llama.n_tokens == 0:
        return 0
    previous = llama._input_ids
    common = 0
    for old, new in zip(previous, tokens, strict=False):
        if old != new:
            break
        common += 1
    return min(common, len(tokens) - 1)

"""The OpenAI Chat Completions protocol as stepflash speaks it *to* an upstream.

SGLang, vLLM, StepFun's API and OpenRouter all speak it, each with quirks: reasoning arrives
as `reasoning` or `reasoning_content`, cached tokens at the top level of `usage` or in
`prompt_tokens_details`, effort top-level or in `chat_template_kwargs`. This module turns a
canonical request into an upstream body and upstream chunks back into canonical events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, assert_never

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
from stepflash.core.request import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ResponseFormatType,
    Role,
    TextPart,
    ToolChoiceMode,
    VideoPart,
)
from stepflash.protocol.openai import tool_call_json


class EffortPassing(StrEnum):
    """Where the upstream reads the reasoning level from."""

    TOP_LEVEL = "top_level"  # `reasoning_effort` (vLLM, StepFun, OpenRouter)
    TEMPLATE_KWARGS = "chat_template_kwargs"  # SGLang's Step template
    BOTH = "both"
    NONE = "none"


def _content_part(part: Part) -> dict[str, Any]:
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text}
        case ImagePart(url=url, detail=detail):
            image = {"url": url} if detail is None else {"url": url, "detail": detail}
            return {"type": "image_url", "image_url": image}
        case VideoPart(url=url):
            return {"type": "video_url", "video_url": {"url": url}}
    assert_never(part)


def _message(message: Message) -> dict[str, Any]:
    """Text-only content goes as a plain string, the form every upstream template reads."""
    content: Any = message.text
    if message.has_media:
        content = [_content_part(part) for part in message.parts]
    encoded: dict[str, Any] = {"role": message.role.value, "content": content}
    if message.role is Role.ASSISTANT:
        if message.tool_calls:
            encoded["tool_calls"] = [tool_call_json(call) for call in message.tool_calls]
        if message.reasoning:
            # The Step template reads earlier reasoning from `reasoning_content`.
            encoded["reasoning_content"] = message.reasoning
    if message.role is Role.TOOL:
        encoded["tool_call_id"] = message.tool_call_id
    return encoded


def _tool_choice(request: ChatRequest) -> Any:
    choice = request.tool_choice
    if choice.mode is ToolChoiceMode.NAMED:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode.value


def _response_format(request: ChatRequest) -> dict[str, Any] | None:
    response_format = request.response_format
    match response_format.type:
        case ResponseFormatType.JSON_OBJECT:
            return {"type": "json_object"}
        case ResponseFormatType.JSON_SCHEMA:
            schema = response_format.schema or {}
            return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    return None


def sampling_fields(request: ChatRequest) -> dict[str, Any]:
    """What chat and raw completion bodies share: streaming, sampling, limits, stops."""
    fields: dict[str, Any] = {
        "stream": request.stream,
        "temperature": request.sampling.temperature,
        "top_p": request.sampling.top_p,
        "n": request.n,
    }
    if request.stream:
        fields["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        fields["max_tokens"] = request.max_tokens
    if request.sampling.top_k is not None:
        fields["top_k"] = request.sampling.top_k  # SGLang, vLLM and llama.cpp read it
    if request.sampling.seed is not None:
        fields["seed"] = request.sampling.seed
    if request.sampling.stop:
        fields["stop"] = list(request.sampling.stop)
    return fields


def encode_request(
    request: ChatRequest, upstream_model: str, effort: EffortPassing
) -> dict[str, Any]:
    """The upstream body: streamed as the caller streams, always with usage, effort where the
    upstream reads it."""
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [_message(message) for message in request.messages],
        **sampling_fields(request),
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
        body["tool_choice"] = _tool_choice(request)
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if (response_format := _response_format(request)) is not None:
        body["response_format"] = response_format
    if effort in (EffortPassing.TOP_LEVEL, EffortPassing.BOTH):
        body["reasoning_effort"] = request.effort.value
    if effort in (EffortPassing.TEMPLATE_KWARGS, EffortPassing.BOTH):
        body["chat_template_kwargs"] = {"reasoning_effort": request.effort.value}
    return body


def _finish_reason(value: str) -> FinishReason:
    try:
        return FinishReason(value)
    except ValueError:
        return FinishReason.STOP  # e.g. "eos", "end_turn" from less strict upstreams


def matched_stop(choice: dict[str, Any]) -> str | None:
    """The stop string that ended a choice: vLLM says `stop_reason`, SGLang `matched_stop`
    (either may be a token id instead, which is no stop *sequence*)."""
    for key in ("matched_stop", "stop_reason"):
        value = choice.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def decode_usage(usage: dict[str, Any]) -> Usage:
    """Read usage wherever this upstream put cached and reasoning tokens."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens") or usage.get("cached_tokens") or 0
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(cached),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def whole_as_chunk(body: dict[str, Any]) -> dict[str, Any]:
    """A whole (non-streamed) answer as one chunk, so one decoder reads both shapes."""
    choices = []
    for choice in body.get("choices") or ():
        delta = dict(choice.get("message") or choice.get("delta") or {})
        if "text" in choice:  # a raw completion
            delta["content"] = choice["text"]
        calls = delta.get("tool_calls") or []
        delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls)]
        choices.append(
            {
                "index": choice.get("index", 0),
                "delta": delta,
                "finish_reason": choice.get("finish_reason") or "stop",
                "matched_stop": matched_stop(choice),
            }
        )
    return {"choices": choices, "usage": body.get("usage")}


@dataclass(slots=True)
class _ChoiceState:
    calls: dict[int, int] = field(default_factory=dict)  # upstream index → our call index
    open_calls: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ChunkDecoder:
    """Turns upstream chunks into events; counts delivered tokens for a stream cut short."""

    choices: dict[int, _ChoiceState] = field(default_factory=dict)
    usage: Usage | None = None
    delivered_chunks: int = 0

    def decode(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        for choice in chunk.get("choices") or ():
            events += self._choice(choice)
        if chunk.get("usage"):
            self.usage = decode_usage(chunk["usage"])
        return events

    def _choice(self, choice: dict[str, Any]) -> list[Event]:
        index = int(choice.get("index") or 0)
        state = self.choices.setdefault(index, _ChoiceState())
        delta = choice.get("delta") or {}
        events: list[Event] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            events.append(ReasoningDelta(reasoning, index))
        if delta.get("content"):
            events.append(TextDelta(delta["content"], index))
        for call in delta.get("tool_calls") or ():
            events += self._tool_call(call, state, index)
        if events:
            self.delivered_chunks += 1
        if choice.get("finish_reason"):
            events += [ToolCallEnd(ci, index) for ci in state.open_calls]
            state.open_calls.clear()
            reason = _finish_reason(choice["finish_reason"])
            events.append(Finish(reason, index, matched_stop(choice)))
        return events

    def _tool_call(self, call: dict[str, Any], state: _ChoiceState, index: int) -> list[Event]:
        upstream_index = int(call.get("index") or 0)
        function = call.get("function") or {}
        events: list[Event] = []
        if upstream_index not in state.calls:
            call_index = len(state.calls)
            state.calls[upstream_index] = call_index
            state.open_calls.append(call_index)
            call_id = call.get("id") or f"call_{index}_{call_index}"
            events.append(ToolCallStart(call_index, call_id, function.get("name") or "", index))
        arguments = function.get("arguments")
        if arguments:
            if not isinstance(arguments, str):  # a few upstreams send an object
                arguments = json.dumps(arguments)
            events.append(ToolCallDelta(state.calls[upstream_index], arguments, index))
        return events

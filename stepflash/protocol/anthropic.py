"""Anthropic Messages on the wire: request models, decoding, SSE and body encoding, errors.

Everything Anthropic-specific lives here: content blocks, `tool_use` / `tool_result` pairing,
thinking blocks and their signatures, `output_config.effort` and `thinking` mapped onto
reasoning levels, the `message_start … message_stop` event order, usage that counts cached
input apart, and the `{"type": "error", ...}` envelope. The rest of stepflash sees only
`ChatRequest` and events.
"""

from __future__ import annotations

import binascii
import json
from base64 import b64decode
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from stepflash.core.completion import Completion
from stepflash.core.errors import ErrorKind, StepflashError, invalid
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
    Effort,
    ImagePart,
    Message,
    Part,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from stepflash.protocol import wire
from stepflash.protocol.signature import ThinkingSigner
from stepflash.protocol.wire import TOOL_NAME_PATTERN, Wire

THINKING_BUDGET_LOW = 4096
"""Budgets below this many tokens ask for low effort; below `THINKING_BUDGET_HIGH`, medium."""
THINKING_BUDGET_HIGH = 16384


class TextBlock(Wire):
    type: Literal["text"]
    text: str


class Base64Source(Wire):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(Wire):
    type: Literal["url"]
    url: str


class ImageBlock(Wire):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


ResultContent = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(Wire):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultContent] | None = None
    is_error: bool | None = None


class ToolUseBlock(Wire):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(Wire):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Wire):
    type: Literal["redacted_thinking"]
    data: str


UserBlock = Annotated[TextBlock | ImageBlock | ToolResultBlock, Field(discriminator="type")]
AssistantBlock = Annotated[
    TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")
]


class UserMessage(Wire):
    role: Literal["user"]
    content: str | list[UserBlock]


class AssistantMessage(Wire):
    role: Literal["assistant"]
    content: str | list[AssistantBlock]


class SystemMessage(Wire):
    """A system message inside `messages`, as recent Claude Code versions send."""

    role: Literal["system"]
    content: str | list[TextBlock]


WireMessage = Annotated[UserMessage | AssistantMessage | SystemMessage, Field(discriminator="role")]


class ToolDefinition(Wire):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class AutoChoice(Wire):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class AnyChoice(Wire):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class NamedChoice(Wire):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class NoneChoice(Wire):
    type: Literal["none"]


WireToolChoice = Annotated[
    AutoChoice | AnyChoice | NamedChoice | NoneChoice, Field(discriminator="type")
]


class ThinkingEnabled(Wire):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)


class ThinkingDisabled(Wire):
    type: Literal["disabled"]


class ThinkingAdaptive(Wire):
    type: Literal["adaptive"]


WireThinking = Annotated[
    ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive, Field(discriminator="type")
]


class OutputConfig(Wire):
    effort: Literal["low", "medium", "high", "max"] | None = None


class MessagesRequest(Wire):
    model: str = Field(min_length=1, max_length=256)
    messages: list[WireMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: WireToolChoice | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None
    thinking: WireThinking | None = None
    output_config: OutputConfig | None = None

    @property
    def shows_thinking(self) -> bool:
        """Step always reasons; with thinking disabled the caller just does not see it."""
        return not isinstance(self.thinking, ThinkingDisabled)


class CountTokensRequest(Wire):
    """`/v1/messages/count_tokens` takes a message request without `max_tokens`."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[WireMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: WireToolChoice | None = None
    thinking: WireThinking | None = None
    output_config: OutputConfig | None = None


# -- decoding ------------------------------------------------------------------------------


def effort_of(thinking: Any, output_config: OutputConfig | None) -> Effort:
    """The documented rule: `output_config.effort` wins (`max` is `high`); else the thinking
    budget picks the level (< 4096 low, < 16384 medium, more high); thinking disabled is low,
    the least reasoning Step can do; with neither, medium (StepFun's default)."""
    if output_config is not None and output_config.effort is not None:
        return Effort.HIGH if output_config.effort == "max" else Effort(output_config.effort)
    match thinking:
        case ThinkingEnabled(budget_tokens=budget):
            if budget < THINKING_BUDGET_LOW:
                return Effort.LOW
            return Effort.MEDIUM if budget < THINKING_BUDGET_HIGH else Effort.HIGH
        case ThinkingDisabled():
            return Effort.LOW
    return Effort.MEDIUM


def _image(block: ImageBlock, where: str) -> ImagePart:
    source = block.source
    if isinstance(source, URLSource):
        return ImagePart(source.url)
    try:
        b64decode(source.data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}.source.data is not valid base64", f"{where}.source.data") from None
    return ImagePart(f"data:{source.media_type};base64,{source.data}")


def _result_parts(block: ToolResultBlock, where: str) -> tuple[list[Part], list[Part]]:
    """A tool result's text, and its images (which go to the model in a user turn after it)."""
    content = block.content
    if content is None:
        texts: list[Part] = []
        images: list[Part] = []
    elif isinstance(content, str):
        texts, images = [TextPart(content)], []
    else:
        texts = [TextPart(item.text) for item in content if isinstance(item, TextBlock)]
        images = [
            _image(item, f"{where}.content[{index}]")
            for index, item in enumerate(content)
            if isinstance(item, ImageBlock)
        ]
    if block.is_error:
        texts.insert(0, TextPart("Error: "))
    return texts, images


class _Decoder:
    """One request's messages, checking tool pairing and thinking signatures as it goes."""

    def __init__(self, signer: ThinkingSigner) -> None:
        self.signer = signer
        self.open_calls: set[str] = set()
        self.messages: list[Message] = []

    def user(self, message: UserMessage, where: str) -> None:
        if isinstance(message.content, str):
            self.messages.append(Message(Role.USER, (TextPart(message.content),)))
            return
        parts: list[Part] = []
        for index, block in enumerate(message.content):
            at = f"{where}.content[{index}]"
            match block:
                case ToolResultBlock():
                    if block.tool_use_id not in self.open_calls:
                        raise invalid(
                            f"{at} is a tool_result for tool_use_id {block.tool_use_id!r}, but "
                            "the previous assistant message has no tool_use with that id",
                            f"{at}.tool_use_id",
                        )
                    self.open_calls.discard(block.tool_use_id)
                    texts, images = _result_parts(block, at)
                    result = Message(Role.TOOL, tuple(texts), tool_call_id=block.tool_use_id)
                    self.messages.append(result)
                    parts += images
                case TextBlock():
                    parts.append(TextPart(block.text))
                case ImageBlock():
                    parts.append(_image(block, at))
        if parts:
            self.messages.append(Message(Role.USER, tuple(parts)))

    def assistant(self, message: AssistantMessage, where: str) -> None:
        self.open_calls.clear()  # results must answer the turn right before them
        if isinstance(message.content, str):
            self.messages.append(Message(Role.ASSISTANT, (TextPart(message.content),)))
            return
        parts: list[Part] = []
        calls: list[ToolCall] = []
        reasoning: list[str] = []
        for index, block in enumerate(message.content):
            match block:
                case ThinkingBlock():
                    if not self.signer.verify(block.thinking, block.signature):
                        raise invalid(
                            f"{where}.content[{index}] has an invalid signature: send thinking "
                            "blocks back exactly as this server returned them",
                            f"{where}.content[{index}].signature",
                        )
                    reasoning.append(block.thinking)
                case TextBlock():
                    parts.append(TextPart(block.text))
                case ToolUseBlock():
                    calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
                    self.open_calls.add(block.id)
        self.messages.append(
            Message(
                Role.ASSISTANT,
                tuple(parts),
                tool_calls=tuple(calls),
                reasoning="".join(reasoning) if reasoning else None,
            )
        )


def _tool_choice(choice: Any) -> tuple[ToolChoice, bool]:
    """The canonical choice and whether calls may run in parallel."""
    parallel = not getattr(choice, "disable_parallel_tool_use", False)
    match choice:
        case AnyChoice():
            return ToolChoice(ToolChoiceMode.REQUIRED), parallel
        case NamedChoice(name=name):
            return ToolChoice(ToolChoiceMode.NAMED, name), parallel
        case NoneChoice():
            return ToolChoice(ToolChoiceMode.NONE), parallel
    return ToolChoice(), parallel


def _system(system: str | list[TextBlock] | None) -> tuple[Message, ...]:
    if system is None:
        return ()
    text = system if isinstance(system, str) else "".join(block.text for block in system)
    return (Message(Role.SYSTEM, (TextPart(text),)),)


def decode(body: MessagesRequest | CountTokensRequest, signer: ThinkingSigner) -> ChatRequest:
    decoder = _Decoder(signer)
    for position, message in enumerate(body.messages):
        where = f"messages[{position}]"
        match message:
            case UserMessage():
                decoder.user(message, where)
            case AssistantMessage():
                decoder.assistant(message, where)
            case SystemMessage(content=content):
                decoder.messages += _system(content)
    choice, parallel = _tool_choice(body.tool_choice)
    tools = tuple(
        Tool(tool.name, tool.description or "", tool.input_schema) for tool in body.tools or ()
    )
    sampling = Sampling()
    max_tokens = None
    stream = False
    if isinstance(body, MessagesRequest):
        max_tokens, stream = body.max_tokens, bool(body.stream)
        sampling = wire.sampling(
            body.temperature, body.top_p, top_k=body.top_k, stop=tuple(body.stop_sequences or ())
        )
    return ChatRequest(
        model=body.model,
        messages=_system(body.system) + tuple(decoder.messages),
        max_tokens=max_tokens,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        effort=effort_of(body.thinking, body.output_config),
        sampling=sampling,
        stream=stream,
    )


# -- encoding ------------------------------------------------------------------------------

_STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}


def stop_reason(finish: FinishReason, stop_sequence: str | None) -> str:
    return "stop_sequence" if stop_sequence else _STOP_REASONS[finish]


def encode_usage(usage: Usage) -> dict[str, int]:
    """Anthropic counts cached input apart: `input_tokens` excludes the cache reads."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    }


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object `tool_use.input` must be."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


@dataclass(slots=True)
class _OpenBlock:
    index: int
    kind: Literal["thinking", "text", "tool_use"]
    text: list[str]


class MessagesEncoder:
    """Encodes one response: ordered SSE events for a stream, or a body for a completion."""

    def __init__(self, body: MessagesRequest, message_id: str, signer: ThinkingSigner) -> None:
        self._id = message_id
        self._model = body.model
        self._signer = signer
        self._show_thinking = body.shows_thinking
        self._block: _OpenBlock | None = None
        self._blocks = 0
        self._finish = FinishReason.STOP
        self._stop_sequence: str | None = None
        self._usage = Usage(0, 0)

    def _message(self, content: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": encode_usage(usage),
        }

    def _open(
        self, kind: Literal["thinking", "text", "tool_use"], block: dict[str, Any]
    ) -> list[tuple[str, dict[str, Any]]]:
        events = self._close()
        self._block = _OpenBlock(self._blocks, kind, [])
        self._blocks += 1
        start = {"type": "content_block_start", "index": self._block.index, "content_block": block}
        return [*events, ("content_block_start", start)]

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        block, self._block = self._block, None
        if block is None:
            return []
        events = []
        if block.kind == "thinking":
            signature = self._signer.sign("".join(block.text))
            delta = {"type": "signature_delta", "signature": signature}
            events.append(self._delta(block.index, delta))
        stop = {"type": "content_block_stop", "index": block.index}
        return [*events, ("content_block_stop", stop)]

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": index,
            "delta": delta,
        }

    def _in(self, kind: Literal["thinking", "text"]) -> list[tuple[str, dict[str, Any]]]:
        if self._block is not None and self._block.kind == kind:
            return []
        empty = {"type": "thinking", "thinking": "", "signature": ""}
        return self._open(kind, empty if kind == "thinking" else {"type": "text", "text": ""})

    def events(self, event: Event) -> list[tuple[str, dict[str, Any]]]:
        """The SSE events (name, data) for one canonical event, in order."""
        match event:
            case ReasoningDelta(text=text) if self._show_thinking and text:
                events = self._in("thinking")
                assert self._block is not None
                self._block.text.append(text)
                return [
                    *events,
                    self._delta(self._block.index, {"type": "thinking_delta", "thinking": text}),
                ]
            case TextDelta(text=text) if text:
                events = self._in("text")
                assert self._block is not None
                return [
                    *events,
                    self._delta(self._block.index, {"type": "text_delta", "text": text}),
                ]
            case ToolCallStart(id=call_id, name=name):
                block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
                return self._open("tool_use", block)
            case ToolCallDelta(arguments=arguments) if self._block is not None:
                delta = {"type": "input_json_delta", "partial_json": arguments}
                return [self._delta(self._block.index, delta)]
            case ToolCallEnd():
                return self._close()
            case Finish(reason=reason, stop_sequence=stop_sequence):
                self._finish, self._stop_sequence = reason, stop_sequence
            case Usage():
                self._usage = event
        return []

    async def stream(
        self, events: AsyncIterator[Event | None]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The whole event sequence; a None from `events` (silence) becomes a `ping`."""
        start = {"type": "message_start", "message": self._message([], Usage(0, 0))}
        yield "message_start", start
        async for event in events:
            if event is None:
                yield "ping", {"type": "ping"}
                continue
            for item in self.events(event):
                yield item
        for item in self._close():
            yield item
        delta = {
            "stop_reason": stop_reason(self._finish, self._stop_sequence),
            "stop_sequence": self._stop_sequence,
        }
        usage = encode_usage(self._usage)
        yield "message_delta", {"type": "message_delta", "delta": delta, "usage": usage}
        yield "message_stop", {"type": "message_stop"}

    def body(self, completion: Completion) -> dict[str, Any]:
        choice = completion.choice(0)
        content: list[dict[str, Any]] = []
        if choice.reasoning and self._show_thinking:
            signature = self._signer.sign(choice.reasoning)
            content.append(
                {"type": "thinking", "thinking": choice.reasoning, "signature": signature}
            )
        if choice.content:
            content.append({"type": "text", "text": choice.content})
        for call in choice.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": tool_input(call.arguments),
                }
            )
        message = self._message(content, completion.usage or Usage(0, 0))
        message["stop_reason"] = stop_reason(choice.finish_reason, choice.stop_sequence)
        message["stop_sequence"] = choice.stop_sequence
        return message


# -- errors --------------------------------------------------------------------------------

_ERROR_TYPES: dict[ErrorKind, str] = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.UNSUPPORTED_CONTENT: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.INSUFFICIENT_BALANCE: "billing_error",
    ErrorKind.FORBIDDEN: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.PAYLOAD_TOO_LARGE: "request_too_large",
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.UPSTREAM: "api_error",
    ErrorKind.UPSTREAM_TIMEOUT: "api_error",
    ErrorKind.INTERNAL: "api_error",
}


def error_body(error: StepflashError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES[error.kind], "message": error.message}}

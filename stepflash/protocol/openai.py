"""OpenAI Chat Completions on the wire: request models, decoding, encoding, errors.

Everything OpenAI-specific (field names, `reasoning` vs `reasoning_content`, chunk shapes,
the error envelope, StepFun's extras such as top-level `cached_tokens`) lives here and
nowhere else. The rest of stepflash sees only `ChatRequest` and events.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import Field

from stepflash.core.completion import Completion
from stepflash.core.errors import ErrorKind, StepflashError
from stepflash.core.events import (
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from stepflash.core.request import (
    ChatRequest,
    Effort,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    ResponseFormatType,
    Role,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    VideoPart,
)
from stepflash.protocol.wire import TOOL_NAME_PATTERN, Wire, sampling


class TextContent(Wire):
    type: Literal["text"]
    text: str


class ImageURL(Wire):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(Wire):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(Wire):
    url: str


class VideoContent(Wire):
    type: Literal["video_url"]
    video_url: VideoURL


UserContent = Annotated[TextContent | ImageContent | VideoContent, Field(discriminator="type")]


class SystemMessage(Wire):
    role: Literal["system", "developer"]
    content: str | list[TextContent]
    name: str | None = None


class UserMessage(Wire):
    role: Literal["user"]
    content: str | list[UserContent]
    name: str | None = None


class FunctionCall(Wire):
    name: str
    arguments: str


class WireToolCall(Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(Wire):
    role: Literal["assistant"]
    content: str | list[TextContent] | None = None
    tool_calls: list[WireToolCall] | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    name: str | None = None


class ToolMessage(Wire):
    role: Literal["tool"]
    content: str | list[TextContent]
    tool_call_id: str


WireMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDefinition(Wire):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(Wire):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Wire):
    name: str


class NamedToolChoice(Wire):
    type: Literal["function"]
    function: NamedFunction


class TextFormat(Wire):
    type: Literal["text"]


class JsonObjectFormat(Wire):
    type: Literal["json_object"]


class JsonSchemaSpec(Wire):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(Wire):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


WireResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class StreamOptions(Wire):
    include_usage: bool = False


class ChatCompletionRequest(Wire):
    model: str = Field(min_length=1, max_length=256)
    messages: list[WireMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: WireResponseFormat | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    reasoning_format: Literal["general", "deepseek-style"] | None = None

    @property
    def reasoning_field(self) -> str:
        """Where reasoning goes: StepFun's `general` uses `reasoning`, deepseek-style the other."""
        return "reasoning_content" if self.reasoning_format == "deepseek-style" else "reasoning"


# -- decoding ------------------------------------------------------------------------------


def _parts(content: str | list[Any] | None) -> tuple[Part, ...]:
    """Content parts in order; whether the model takes images or video is checked later."""
    if content is None:
        return ()
    if isinstance(content, str):
        return (TextPart(content),)
    parts: list[Part] = []
    for part in content:
        match part:
            case TextContent():
                parts.append(TextPart(part.text))
            case ImageContent(image_url=image):
                detail = None if image.detail in (None, "auto") else image.detail
                parts.append(ImagePart(image.url, detail))
            case VideoContent(video_url=video):
                parts.append(VideoPart(video.url))
    return tuple(parts)


def _decode_message(message: Any) -> Message:
    match message:
        case SystemMessage():
            return Message(Role.SYSTEM, _parts(message.content), name=message.name)
        case UserMessage():
            return Message(Role.USER, _parts(message.content), name=message.name)
        case AssistantMessage():
            calls = tuple(
                ToolCall(call.id, call.function.name, call.function.arguments)
                for call in message.tool_calls or ()
            )
            return Message(
                Role.ASSISTANT,
                _parts(message.content),
                tool_calls=calls,
                reasoning=message.reasoning or message.reasoning_content,
            )
        case ToolMessage():
            return Message(Role.TOOL, _parts(message.content), tool_call_id=message.tool_call_id)
    raise AssertionError(f"unhandled message type {type(message).__name__}")


def _decode_tool_choice(choice: str | NamedToolChoice | None) -> ToolChoice:
    if choice is None:
        return ToolChoice()
    if isinstance(choice, NamedToolChoice):
        return ToolChoice(ToolChoiceMode.NAMED, choice.function.name)
    return ToolChoice(ToolChoiceMode(choice))


def _decode_response_format(response_format: Any) -> ResponseFormat:
    match response_format:
        case JsonObjectFormat():
            return ResponseFormat(ResponseFormatType.JSON_OBJECT)
        case JsonSchemaFormat():
            return ResponseFormat(
                ResponseFormatType.JSON_SCHEMA, response_format.json_schema.schema_
            )
    return ResponseFormat()


def decode(body: ChatCompletionRequest) -> ChatRequest:
    stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
    tools = tuple(
        Tool(
            tool.function.name,
            tool.function.description or "",
            tool.function.parameters or {"type": "object", "properties": {}},
        )
        for tool in body.tools or ()
    )
    return ChatRequest(
        model=body.model,
        messages=tuple(_decode_message(message) for message in body.messages),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        n=body.n or 1,
        tools=tools,
        tool_choice=_decode_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        response_format=_decode_response_format(body.response_format),
        effort=Effort(body.reasoning_effort or "medium"),
        stream=bool(body.stream),
        sampling=sampling(body.temperature, body.top_p, seed=body.seed, stop=tuple(stop)),
    )


# -- encoding ------------------------------------------------------------------------------


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    """A finished call as OpenAI writes it in a message."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def encode_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object plus StepFun's top-level `cached_tokens`."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChatCompletionEncoder:
    """Encodes one response: chunks for a stream, or a body for an accumulated completion."""

    def __init__(self, body: ChatCompletionRequest, completion_id: str) -> None:
        self._id = completion_id
        self._model = body.model
        self._created = int(time.time())
        self._reasoning_field = body.reasoning_field
        self._include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self._started: set[int] = set()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            **extra,
        }

    def _delta(
        self, index: int, delta: dict[str, Any], finish: str | None = None
    ) -> dict[str, Any]:
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", **delta}
        return self._chunk(
            [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]
        )

    def chunk(self, event: Event) -> dict[str, Any] | None:
        """The chunk for one event, or None when the event has no wire form."""
        match event:
            case ReasoningDelta(text=text, index=index):
                return self._delta(index, {self._reasoning_field: text})
            case TextDelta(text=text, index=index):
                return self._delta(index, {"content": text})
            case ToolCallStart(call_index=ci, id=call_id, name=name, index=index):
                call = {
                    "index": ci,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                return self._delta(index, {"tool_calls": [call]})
            case ToolCallDelta(call_index=ci, arguments=arguments, index=index):
                return self._delta(
                    index, {"tool_calls": [{"index": ci, "function": {"arguments": arguments}}]}
                )
            case Finish(reason=reason, index=index):
                return self._delta(index, {}, finish=reason.value)
            case Usage() if self._include_usage:
                return self._chunk([], usage=encode_usage(event))
        return None

    async def chunks(self, events: AsyncIterator[Event]) -> AsyncIterator[dict[str, Any]]:
        async for event in events:
            chunk = self.chunk(event)
            if chunk is not None:
                yield chunk

    def body(self, completion: Completion) -> dict[str, Any]:
        choices = []
        for choice in completion.ordered_choices:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": choice.content if choice.content or not choice.tool_calls else None,
            }
            if choice.reasoning:
                message[self._reasoning_field] = choice.reasoning
            if choice.tool_calls:
                message["tool_calls"] = [tool_call_json(call) for call in choice.tool_calls]
            choices.append(
                {
                    "index": choice.index,
                    "message": message,
                    "finish_reason": choice.finish_reason.value,
                    "logprobs": None,
                }
            )
        usage = completion.usage or Usage(0, 0)
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "usage": encode_usage(usage),
        }


# -- errors --------------------------------------------------------------------------------

_ERROR_TYPES: dict[ErrorKind, tuple[str, str]] = {
    ErrorKind.INVALID_REQUEST: ("invalid_request_error", "request_params_invalid"),
    ErrorKind.UNSUPPORTED_CONTENT: ("invalid_request_error", "unsupported_content_type"),
    ErrorKind.AUTHENTICATION: ("authentication_error", "invalid_api_key"),
    ErrorKind.INSUFFICIENT_BALANCE: ("insufficient_quota", "insufficient_balance"),
    ErrorKind.FORBIDDEN: ("permission_error", "forbidden"),
    ErrorKind.NOT_FOUND: ("invalid_request_error", "not_found"),
    ErrorKind.PAYLOAD_TOO_LARGE: ("invalid_request_error", "request_too_large"),
    ErrorKind.RATE_LIMITED: ("rate_limit_error", "rate_limit_exceeded"),
    ErrorKind.OVERLOADED: ("server_error", "engine_overloaded"),
    ErrorKind.UPSTREAM: ("server_error", "upstream_error"),
    ErrorKind.UPSTREAM_TIMEOUT: ("server_error", "upstream_timeout"),
    ErrorKind.INTERNAL: ("server_error", "internal_error"),
}


def error_body(error: StepflashError) -> dict[str, Any]:
    error_type, default_code = _ERROR_TYPES[error.kind]
    return {
        "error": {
            "message": error.message,
            "type": error_type,
            "param": error.param,
            "code": error.code or default_code,
        }
    }

"""The canonical chat request: what every protocol decodes into and every engine consumes.

Protocols (OpenAI, Anthropic) differ in spelling; the meaning is the same. Keeping one
request type means engines, limits and billing are written once, whatever the caller spoke.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Effort(StrEnum):
    """Reasoning level. Step 3.7 reads it from the system turn; emulated on other models."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class MediaKind(StrEnum):
    """What a non-text part carries; engines declare which kinds they accept."""

    IMAGE = "image"
    VIDEO = "video"


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image by reference: an http(s) URL, a `data:image/...;base64,` URL or `stepfile://`.

    `detail` is `low` or `high` when the caller chose one, else None (the model's default).
    Once stepflash has fetched and checked it (`stepflash.media.prepare`), `url` is a data
    URL of the validated bytes, `detail` is decided and `tokens` is its prompt cost.
    """

    url: str
    detail: str | None = None
    tokens: int | None = None
    kind = MediaKind.IMAGE


@dataclass(frozen=True, slots=True)
class VideoPart:
    """A video by reference; prepared like an image (a data URL of checked bytes, `tokens`)."""

    url: str
    tokens: int | None = None
    kind = MediaKind.VIDEO


MediaPart = ImagePart | VideoPart
Part = TextPart | MediaPart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the assistant made; `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None

    @property
    def text(self) -> str:
        """All text parts joined: what a text-only template writes for this message."""
        return "".join(part.text for part in self.parts if isinstance(part, TextPart))

    @property
    def has_media(self) -> bool:
        return any(not isinstance(part, TextPart) for part in self.parts)


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoiceMode(StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str | None = None

    @property
    def forces_call(self) -> bool:
        return self.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED)


class ResponseFormatType(StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    type: ResponseFormatType = ResponseFormatType.TEXT
    schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float = 0.5
    top_p: float = 0.9
    top_k: int | None = None  # None: the engine's own default
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat request, protocol-free. `max_tokens` counts reasoning and answer together."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    n: int = 1
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True
    response_format: ResponseFormat = ResponseFormat()
    effort: Effort = Effort.MEDIUM
    sampling: Sampling = Sampling()
    # Whether the caller consumes events as they come. The events are the same either way;
    # an upstream engine may fetch a whole answer (cheaper than 64 chunks) when it is False.
    stream: bool = True

    @property
    def has_media(self) -> bool:
        return any(message.has_media for message in self.messages)

    def media_tokens(self, kind: MediaKind | None = None) -> int:
        """Prompt tokens of the prepared media parts (of one kind, or all)."""
        return sum(
            part.tokens or 0
            for message in self.messages
            for part in message.parts
            if not isinstance(part, TextPart) and kind in (None, part.kind)
        )

    def text_only(self) -> ChatRequest:
        """The same request with media parts left out: what a text tokenizer can count."""
        messages = tuple(
            replace(m, parts=tuple(p for p in m.parts if isinstance(p, TextPart)))
            if m.has_media
            else m
            for m in self.messages
        )
        return replace(self, messages=messages)

    def tool(self, name: str) -> Tool | None:
        return next((tool for tool in self.tools if tool.name == name), None)

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        """Tools the model may call in this turn (none when the caller said `none`)."""
        if self.tool_choice.mode is ToolChoiceMode.NONE:
            return ()
        if self.tool_choice.mode is ToolChoiceMode.NAMED:
            return tuple(tool for tool in self.tools if tool.name == self.tool_choice.name)
        return self.tools

"""Checks on a canonical request that hold whatever protocol it arrived in."""

from __future__ import annotations

from stepflash.config import LimitSettings
from stepflash.core.errors import ErrorKind, StepflashError, invalid
from stepflash.core.request import ChatRequest, MediaKind, Role, TextPart, ToolChoiceMode

_MEDIA_NAMES = {MediaKind.IMAGE: "an image", MediaKind.VIDEO: "a video"}


def validate(
    request: ChatRequest, limits: LimitSettings, media: frozenset[MediaKind] = frozenset()
) -> None:
    """Raise a 400 that says what to fix, or return if the request can be served.

    `media` is what the serving engine accepts besides text.
    """
    if not request.messages:
        raise invalid("messages must contain at least one message", "messages")
    if len(request.messages) > limits.max_messages:
        raise invalid(f"at most {limits.max_messages} messages are allowed", "messages")
    if not 1 <= request.n <= limits.max_n:
        raise invalid(f"n must be between 1 and {limits.max_n}", "n")
    if len(request.tools) > limits.max_tools:
        raise invalid(f"at most {limits.max_tools} tools are allowed", "tools")
    names = [tool.name for tool in request.tools]
    if len(set(names)) != len(names):
        raise invalid("tool names must be unique", "tools")
    _validate_tool_choice(request)
    _validate_stop(request, limits)
    _validate_tool_results(request)
    _validate_media(request, limits, media)
    if all(message.role is Role.SYSTEM for message in request.messages):
        raise invalid("messages must contain at least one non-system message", "messages")


def _validate_tool_choice(request: ChatRequest) -> None:
    choice = request.tool_choice
    if choice.mode is ToolChoiceMode.REQUIRED and not request.tools:
        raise invalid("tool_choice is 'required' but no tools were given", "tool_choice")
    if choice.mode is ToolChoiceMode.NAMED and request.tool(choice.name or "") is None:
        raise invalid(
            f"tool_choice names {choice.name!r}, which is not among the tools", "tool_choice"
        )


def _validate_stop(request: ChatRequest, limits: LimitSettings) -> None:
    stop = request.sampling.stop
    if len(stop) > limits.max_stop_sequences:
        raise invalid(f"at most {limits.max_stop_sequences} stop sequences are allowed", "stop")
    if any(not s or len(s) > limits.max_stop_length for s in stop):
        raise invalid(f"stop sequences must be 1 to {limits.max_stop_length} characters", "stop")


def _validate_tool_results(request: ChatRequest) -> None:
    """Every tool result must answer a call made earlier in the conversation, exactly once."""
    open_calls: set[str] = set()
    for position, message in enumerate(request.messages):
        if message.role is Role.ASSISTANT:
            open_calls |= {call.id for call in message.tool_calls}
        elif message.role is Role.TOOL:
            if message.tool_call_id not in open_calls:
                raise invalid(
                    f"messages[{position}] is a tool result for tool_call_id "
                    f"{message.tool_call_id!r}, but no earlier assistant message made that call",
                    f"messages[{position}].tool_call_id",
                )
            open_calls.discard(message.tool_call_id)


def _validate_media(
    request: ChatRequest, limits: LimitSettings, accepted: frozenset[MediaKind]
) -> None:
    """Media the model cannot see is refused, never silently dropped (StepFun does the same)."""
    count = 0
    for position, message in enumerate(request.messages):
        for index, part in enumerate(message.parts):
            if isinstance(part, TextPart):
                continue
            param = f"messages[{position}].content[{index}]"
            if part.kind not in accepted:
                kinds = ["text", *(f"{kind.value}s" for kind in sorted(accepted))]
                takes = " and ".join(kinds) if len(kinds) < 3 else "text, images and videos"
                raise StepflashError(
                    ErrorKind.UNSUPPORTED_CONTENT,
                    f"{param} is {_MEDIA_NAMES[part.kind]}, but {request.model} takes {takes} "
                    f"only; send text or choose a model that accepts {part.kind.value}s",
                    param=param,
                    code="unsupported_content_type",
                )
            count += 1
            if count > limits.max_media_parts:
                raise invalid(
                    f"at most {limits.max_media_parts} images and videos are allowed per request",
                    param,
                )

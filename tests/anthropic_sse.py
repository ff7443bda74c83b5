"""A strict checker for Anthropic Messages streams: framing, event order, block kinds, usage.

It rebuilds the message from the events, so a test can compare it with the non-streamed
answer; any event out of its documented place fails the assertion that names it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

DELTA_KINDS = {
    "thinking": {"thinking_delta", "signature_delta"},
    "text": {"text_delta"},
    "tool_use": {"input_json_delta"},
}
USAGE_KEYS = {
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
}


def parse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; every frame is `event: X` then `data: {...}` with type X."""
    assert text.endswith("\n\n"), "the stream must end on a frame boundary"
    events = []
    for block in text.split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2, f"bad frame {block!r}"
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name, f"event {name} carries data of type {data['type']}"
        events.append((name, data))
    return events


def check_message_events(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Assert the documented order and return the rebuilt message (or raise on an error event).

    message_start → (content_block_start → deltas of the block's kind → content_block_stop)*
    → message_delta → message_stop, with pings allowed anywhere after message_start.
    """
    assert events and events[0][0] == "message_start", "a stream opens with message_start"
    message = events[0][1]["message"]
    assert message["content"] == [] and message["usage"]["output_tokens"] == 0
    content: list[dict[str, Any]] = []
    open_block: dict[str, Any] | None = None
    signed = False
    state = "blocks"
    for name, data in events[1:]:
        assert state != "stopped", f"{name} after message_stop"
        if name == "ping":
            continue
        if name == "error":
            assert data["error"]["type"] and data["error"]["message"]
            raise StreamError(data["error"], content)
        assert state == "blocks" or name == "message_stop", f"{name} after message_delta"
        if name == "content_block_start":
            assert open_block is None, "blocks do not nest or overlap"
            assert data["index"] == len(content), "block indices count up from 0"
            open_block = {**data["content_block"], "_json": ""}
            signed = False
            content.append(open_block)
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == len(content) - 1
            delta = data["delta"]
            assert delta["type"] in DELTA_KINDS[open_block["type"]], (
                f"{delta['type']} inside a {open_block['type']} block"
            )
            assert not signed, "the signature is the thinking block's last delta"
            match delta["type"]:
                case "thinking_delta":
                    open_block["thinking"] += delta["thinking"]
                case "signature_delta":
                    open_block["signature"], signed = delta["signature"], True
                case "text_delta":
                    open_block["text"] += delta["text"]
                case "input_json_delta":
                    open_block["_json"] += delta["partial_json"]
        elif name == "content_block_stop":
            assert open_block is not None and data["index"] == len(content) - 1
            if open_block["type"] == "thinking":
                assert signed, "a thinking block is signed before it stops"
            if open_block["type"] == "tool_use":
                open_block["input"] = json.loads(open_block["_json"] or "{}")
                assert isinstance(open_block["input"], dict)
            open_block = None
        elif name == "message_delta":
            assert open_block is None, "every block stops before message_delta"
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["stop_sequence"] = data["delta"]["stop_sequence"]
            assert message["stop_reason"] in {"end_turn", "tool_use", "max_tokens", "stop_sequence"}
            assert (message["stop_reason"] == "stop_sequence") == bool(message["stop_sequence"])
            assert set(data["usage"]) >= USAGE_KEYS, "message_delta carries the whole usage"
            message["usage"] = data["usage"]
            state = "delta"
        elif name == "message_stop":
            assert state == "delta", "message_delta comes before message_stop"
            state = "stopped"
        else:
            raise AssertionError(f"unknown event {name}")
    assert state == "stopped", "a successful stream ends with message_stop"
    for block in content:
        block.pop("_json")
    message["content"] = content
    return message


class StreamError(AssertionError):
    """The stream ended with an `error` event; carries the error and the blocks so far."""

    def __init__(self, error: dict[str, Any], content: list[dict[str, Any]]) -> None:
        super().__init__(f"stream error: {error}")
        self.error = error
        self.content = content


def stream_message(base: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a streaming request and return the checked, rebuilt message."""
    response = httpx.post(
        f"{base}/v1/messages",
        json={**body, "stream": True},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return check_message_events(parse_events(response.text))

"""Bad input gets a 4xx in OpenAI's error envelope that says what to fix, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer

USER = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "step-3.7-flash", "messages": USER, "max_tokens": 4, **fields}


# (case id, request body or raw bytes, status, error code, text the message must contain)
CASES: list[tuple[str, Any, int, str, str]] = [
    (
        "malformed-json",
        b'{"model": "step-3.7-flash", "messages": [',
        400,
        "request_params_invalid",
        "not valid JSON",
    ),
    ("body-not-object", b"[1, 2, 3]", 400, "request_params_invalid", "invalid"),
    ("missing-model", {"messages": USER}, 400, "request_params_invalid", "model"),
    ("missing-messages", {"model": "step-3.7-flash"}, 400, "request_params_invalid", "messages"),
    ("empty-messages", body(messages=[]), 400, "request_params_invalid", "messages"),
    ("unknown-model", body(model="gpt-9"), 404, "model_not_found", "gpt-9"),
    ("n-too-large", body(n=6), 400, "request_params_invalid", "n must be between 1 and 5"),
    ("n-zero", body(n=0), 400, "request_params_invalid", "n"),
    ("n-string", body(n="2"), 400, "request_params_invalid", "n"),
    (
        "max-tokens-beyond-context",
        body(max_tokens=10_000_000),
        400,
        "request_params_invalid",
        "lower max_tokens",
    ),
    ("max-tokens-negative", body(max_tokens=-1), 400, "request_params_invalid", "max_tokens"),
    ("temperature-too-high", body(temperature=3), 400, "request_params_invalid", "temperature"),
    ("top-p-zero", body(top_p=0), 400, "request_params_invalid", "top_p"),
    ("stream-not-bool", body(stream="yes"), 400, "request_params_invalid", "stream"),
    (
        "bad-role",
        body(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "request_params_invalid",
        "messages",
    ),
    (
        "content-wrong-type",
        body(messages=[{"role": "user", "content": 5}]),
        400,
        "request_params_invalid",
        "content",
    ),
    (
        "only-system",
        body(messages=[{"role": "system", "content": "x"}]),
        400,
        "request_params_invalid",
        "non-system",
    ),
    (
        "tool-result-without-call",
        body(messages=[*USER, {"role": "tool", "tool_call_id": "call_x", "content": "r"}]),
        400,
        "request_params_invalid",
        "no earlier assistant message made that call",
    ),
    (
        "tool-name-invalid",
        body(tools=[{"type": "function", "function": {"name": "bad name!"}}]),
        400,
        "request_params_invalid",
        "tools.0.function.name",
    ),
    (
        "too-many-tools",
        body(tools=[{"type": "function", "function": {"name": f"t{i}"}} for i in range(129)]),
        400,
        "request_params_invalid",
        "at most 128 tools",
    ),
    ("duplicate-tools", body(tools=[TOOL, TOOL]), 400, "request_params_invalid", "unique"),
    (
        "required-without-tools",
        body(tool_choice="required"),
        400,
        "request_params_invalid",
        "no tools",
    ),
    (
        "named-unknown-tool",
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}),
        400,
        "request_params_invalid",
        "not among the tools",
    ),
    (
        "bad-effort",
        body(reasoning_effort="extreme"),
        400,
        "request_params_invalid",
        "reasoning_effort",
    ),
    (
        "bad-reasoning-format",
        body(reasoning_format="xml"),
        400,
        "request_params_invalid",
        "reasoning_format",
    ),
    (
        "bad-response-format",
        body(response_format={"type": "yaml"}),
        400,
        "request_params_invalid",
        "response_format",
    ),
    (
        "unenforceable-schema",
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "frobnicate"}},
            }
        ),
        400,
        "request_params_invalid",
        "cannot enforce",
    ),
    ("empty-stop", body(stop=[""]), 400, "request_params_invalid", "stop"),
    (
        "image-to-text-model",
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ],
                }
            ]
        ),
        400,
        "unsupported_content_type",
        "text only",
    ),
    (
        "oversized-body",
        body(messages=[{"role": "user", "content": "x" * (9 * 1024 * 1024)}]),
        413,
        "request_too_large",
        "exceeds the limit",
    ),
]


@pytest.mark.parametrize(
    ("request_body", "status", "code", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_a_clear_4xx(
    tiny_server: LiveServer, request_body: Any, status: int, code: str, fragment: str
) -> None:
    if isinstance(request_body, bytes):
        response = httpx.post(
            f"{tiny_server.api}/chat/completions",
            content=request_body,
            headers={"content-type": "application/json"},
            timeout=60,
        )
    else:
        response = httpx.post(f"{tiny_server.api}/chat/completions", json=request_body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert fragment in error["message"] or fragment == error["param"], error


def test_sdk_raises_typed_errors(tiny_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=tiny_server.api, api_key="k", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="step-3.7-flash", messages=USER, n=9)  # type: ignore[arg-type]
    assert raised.value.body["param"] == "n"


def test_unknown_route_is_a_json_404(tiny_server: LiveServer) -> None:
    response = httpx.get(f"{tiny_server.api}/nothing-here", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"

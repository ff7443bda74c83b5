"""The completions backend: stepflash renders the Step prompt and parses raw Step output."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.media_files import image_bytes
from tests.sse import check_chat_chunks, parse_sse
from tests.upstreams import (
    RAW_MALFORMED_CALL,
    RAW_TOOL_CALL,
    RAW_TRUNCATED,
    RawScript,
    ScriptedUpstream,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream("llama.cpp").start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def reset(raw_upstream: ScriptedUpstream) -> None:
    raw_upstream.raw, raw_upstream.mode = RawScript(), "ok"
    raw_upstream.requests.clear()


@pytest.fixture(scope="module")
def gateway(session_tmp: Path, raw_upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    config = session_tmp / "completions.toml"
    config.write_text(f"""
[[models]]
name = "step-3.7-flash"
backend = "completions"
replicas = ["{raw_upstream.url}"]
upstream_model = "step-3.7-flash-gguf"

[[models]]
name = "step-3.7-flash-vision"
backend = "completions"
replicas = ["{raw_upstream.url}"]
media = ["image"]
""")
    server = start_server(session_tmp, None, config=config)
    yield server
    stop_server(server)


@pytest.fixture
def client(gateway: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.api, api_key="k", _strict_response_validation=True, max_retries=0
    )


def test_prompt_is_rendered_in_step_format(
    client: openai.OpenAI, raw_upstream: ScriptedUpstream
) -> None:
    completion = client.chat.completions.create(
        model="step-3.7-flash",
        reasoning_effort="high",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    prompt = raw_upstream.requests[-1]["prompt"]
    assert prompt.startswith("<|im_start|>system\nReasoning: high\n\nBe brief.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n")
    message = completion.choices[0].message.model_dump()
    assert message["reasoning"] == "A greeting; answer kindly."
    assert message["content"] == "Hello! How can I help?"
    assert completion.usage.prompt_tokens_details.cached_tokens == 1024


def test_raw_xml_tool_call_becomes_a_typed_call(
    client: openai.OpenAI, raw_upstream: ScriptedUpstream
) -> None:
    raw_upstream.raw = RawScript(RAW_TOOL_CALL)
    completion = client.chat.completions.create(
        model="step-3.7-flash",
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris for 3 days?"}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
    prompt = raw_upstream.requests[-1]["prompt"]
    assert "# Tools" in prompt and '"name": "get_weather"' in prompt


def test_malformed_call_of_a_declared_tool_is_repaired(
    client: openai.OpenAI, raw_upstream: ScriptedUpstream
) -> None:
    raw_upstream.raw = RawScript(RAW_MALFORMED_CALL, chunk_chars=1)
    completion = client.chat.completions.create(
        model="step-3.7-flash", tools=TOOLS, messages=[{"role": "user", "content": "Oslo?"}]
    )
    call = completion.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}


def test_truncated_output_is_not_turned_into_a_call(
    gateway: LiveServer, raw_upstream: ScriptedUpstream
) -> None:
    raw_upstream.raw = RawScript(RAW_TRUNCATED, finish="length")
    body = {
        "model": "step-3.7-flash",
        "tools": TOOLS,
        "stream": True,
        "messages": [{"role": "user", "content": "Weather?"}],
    }
    response = httpx.post(f"{gateway.api}/chat/completions", json=body, timeout=30)
    chunks = check_chat_chunks(parse_sse(response.text))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    whole = httpx.post(
        f"{gateway.api}/chat/completions", json={**body, "stream": False}, timeout=30
    ).json()
    assert whole["choices"][0]["finish_reason"] == "length"
    assert not whole["choices"][0]["message"].get("tool_calls")


def test_tool_results_go_back_in_step_format(
    client: openai.OpenAI, raw_upstream: ScriptedUpstream
) -> None:
    client.chat.completions.create(
        model="step-3.7-flash",
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Paris", "days": 2}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        ],
    )
    prompt = raw_upstream.requests[-1]["prompt"]
    assert (
        "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>"
    ) in prompt
    assert (
        "<|im_start|>tool_response\n<tool_response>18C, sunny</tool_response><|im_end|>" in prompt
    )


PIXEL_PNG = base64.b64encode(image_bytes("PNG", 16, 16)).decode()


def image_question(url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in "},
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "?"},
            ],
        }
    ]


def test_images_are_placeholders_in_the_prompt_and_sent_inline(
    client: openai.OpenAI, raw_upstream: ScriptedUpstream
) -> None:
    completion = client.chat.completions.create(
        model="step-3.7-flash-vision",
        messages=image_question(f"data:image/png;base64,{PIXEL_PNG}"),
    )
    assert completion.choices[0].message.content == "Hello! How can I help?"
    prompt = raw_upstream.requests[-1]["prompt"]
    assert prompt["multimodal_data"] == [PIXEL_PNG]
    assert "<|im_start|>user\nWhat is in <im_patch>?<|im_end|>\n" in prompt["prompt_string"]


def test_images_to_a_text_only_backend_are_refused_by_name(
    client: openai.OpenAI, raw_upstream: ScriptedUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="step-3.7-flash",
            messages=image_question(f"data:image/png;base64,{PIXEL_PNG}"),
        )
    error = caught.value.body
    assert (error["code"], error["param"]) == (
        "unsupported_content_type",
        "messages[0].content[1]",
    )
    assert "takes text only" in error["message"]
    assert not raw_upstream.requests

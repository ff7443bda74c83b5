"""The official `openai` SDK, validating strictly, against a live server with the tiny model."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import LiveServer
from tests.sse import collect_stream

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(tiny_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=tiny_server.api, api_key="test", _strict_response_validation=True, max_retries=0
    )


def test_models_lists_stand_ins_honestly(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    step = models["step-3.7-flash"].model_dump()
    assert step["stepflash"]["stand_in"] is True
    assert step["stepflash"]["backend"].startswith("embedded/smollm2")
    native = [m for m in models.values() if not m.model_dump()["stepflash"]["stand_in"]]
    assert [m.id for m in native] == ["smollm2-135m-instruct-q4_1"]


def test_non_streaming_answer_with_usage_and_backend_header(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="step-3.7-flash",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=16,
        reasoning_effort="low",
    )
    assert raw.headers["x-stepflash-backend"] == "embedded/smollm2-135m-instruct-q4_1"
    assert raw.headers["x-stepflash-stand-in-for"] == "step-3.7-flash"
    completion = raw.parse()
    assert completion.model == "step-3.7-flash"
    choice = completion.choices[0]
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 16
    assert usage.model_dump()["cached_tokens"] == usage.prompt_tokens_details.cached_tokens


@pytest.mark.parametrize(
    ("reasoning_format", "field", "other"),
    [
        (None, "reasoning", "reasoning_content"),
        ("deepseek-style", "reasoning_content", "reasoning"),
    ],
)
def test_reasoning_streams_in_the_field_asked_for(
    client: openai.OpenAI, reasoning_format: str | None, field: str, other: str
) -> None:
    extra = {"reasoning_format": reasoning_format} if reasoning_format else {}
    stream = client.chat.completions.create(
        model="step-3.7-flash",
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=80,
        temperature=0,
        reasoning_effort="high",
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    reasoning, content, usage = "", "", None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            assert delta.get(other) is None
            reasoning += delta.get(field) or ""
            content += delta.get("content") or ""
    assert reasoning.strip(), "high effort must produce a reasoning pass"
    assert "<think>" not in content and "</think>" not in content
    assert usage is not None
    reasoning_tokens = usage.completion_tokens_details.reasoning_tokens
    assert 0 < reasoning_tokens <= 48 < usage.completion_tokens + 48


def test_low_effort_skips_reasoning(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="step-3.7-flash",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        reasoning_effort="low",
    )
    message = completion.choices[0].message.model_dump()
    assert not message.get("reasoning")
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


def test_forced_tool_call_round_trip(client: openai.OpenAI) -> None:
    messages: list[dict] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = client.chat.completions.create(
        model="step-3.7-flash",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=60,
        reasoning_effort="low",
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees C and sunny"},
    ]
    second = client.chat.completions.create(
        model="step-3.7-flash",
        messages=messages,
        tools=[WEATHER_TOOL],
        max_tokens=40,
        reasoning_effort="low",
        temperature=0,
    )
    answer = second.choices[0]
    # The repeat guard: the same call again, after its result, is never returned.
    for repeated in answer.message.tool_calls or []:
        assert (repeated.function.name, json.loads(repeated.function.arguments)) != (
            "get_weather",
            arguments,
        )
    assert answer.message.content or answer.message.tool_calls


def test_named_tool_choice_streams_a_call(tiny_server: LiveServer) -> None:
    body = {
        "model": "step-3.7-flash",
        "messages": [{"role": "user", "content": "Weather in Oslo in fahrenheit"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 60,
        "reasoning_effort": "low",
        "stream": True,
    }
    chunks = collect_stream(tiny_server.api, body)
    calls = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    arguments = "".join(tc["function"].get("arguments", "") for tc in calls)
    assert "city" in json.loads(arguments)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model="step-3.7-flash",
        messages=[{"role": "user", "content": "Describe a fictional person as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
        max_tokens=120,
        reasoning_effort="low",
        temperature=0,
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content), schema)


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="step-3.7-flash",
        messages=[
            {"role": "user", "content": 'Reply with exactly this JSON: {"greeting": "hello"}'}
        ],
        response_format={"type": "json_object"},
        max_tokens=80,
        reasoning_effort="low",
        temperature=0,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_streaming_and_non_streaming_agree_for_a_seed(client: openai.OpenAI) -> None:
    request = {
        "model": "step-3.7-flash",
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": 40,
        "seed": 1234,
        "temperature": 0.9,
        "reasoning_effort": "medium",
    }
    whole = client.chat.completions.create(**request)
    stream = client.chat.completions.create(**request, stream=True)
    streamed_content, streamed_reasoning = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            streamed_content += choice.delta.content or ""
            streamed_reasoning += choice.delta.model_dump().get("reasoning") or ""
    message = whole.choices[0].message.model_dump()
    assert streamed_content == message["content"]
    assert streamed_reasoning == (message.get("reasoning") or "")


def test_cached_tokens_on_a_repeated_long_prefix(client: openai.OpenAI) -> None:
    long_system = " ".join(f"Rule {i}: answer politely about topic number {i}." for i in range(60))

    def ask(question: str):
        return client.chat.completions.create(
            model="step-3.7-flash",
            messages=[
                {"role": "system", "content": long_system},
                {"role": "user", "content": question},
            ],
            max_tokens=4,
            reasoning_effort="low",
        )

    ask("First question?")
    second = ask("Second question?")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 300
    assert cached == second.usage.model_dump()["cached_tokens"]
    assert cached < second.usage.prompt_tokens


def test_n_choices_and_stop_sequences(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="step-3.7-flash",
        messages=[{"role": "user", "content": "Count from 1 to 10."}],
        n=2,
        max_tokens=60,
        reasoning_effort="low",
        stop=["5.", "9."],
        temperature=0,
    )
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert choice.message.content.startswith("1.")
        assert "5." not in choice.message.content and "9." not in choice.message.content
        assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens < 2 * 60


def test_stream_include_usage_ends_with_usage_chunk(tiny_server: LiveServer) -> None:
    body = {
        "model": "step-3.7-flash",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 8,
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = collect_stream(tiny_server.api, body)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_unknown_fields_are_ignored(tiny_server: LiveServer) -> None:
    response = httpx.post(
        f"{tiny_server.api}/chat/completions",
        json={
            "model": "step-3.7-flash",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "reasoning_effort": "low",
            "frequency_penalty_x": 3,
            "user": "u1",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text

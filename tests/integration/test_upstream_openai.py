"""stepflash in front of scripted SGLang/vLLM stand-ins: passthrough, failover, affinity."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import LiveServer, free_port, start_server, stop_server
from tests.media_files import image_bytes, video_bytes
from tests.sse import check_chat_chunks, collect_stream, parse_sse
from tests.upstreams import WEATHER_CALL, Script, ScriptedUpstream

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            },
        },
    }
]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, ScriptedUpstream]]:
    servers = {
        "sglang": ScriptedUpstream("sglang").start(),
        "vllm": ScriptedUpstream("vllm").start(),
        "a": ScriptedUpstream("sglang").start(),
        "b": ScriptedUpstream("sglang").start(),
        "flaky": ScriptedUpstream("sglang").start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(autouse=True)
def reset(upstreams: dict[str, ScriptedUpstream]) -> None:
    for server in upstreams.values():
        server.mode, server.delay, server.script = "ok", 0.0, Script()
        server.requests.clear()


@pytest.fixture(scope="module")
def gateway(session_tmp: Path, upstreams: dict[str, ScriptedUpstream]) -> Iterator[LiveServer]:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here: connection refused
    config = session_tmp / "upstreams.toml"
    config.write_text(f"""
[[models]]
name = "step-3.7-flash"
aliases = ["stepfun/step-3.7-flash"]
backend = "openai"
replicas = ["{upstreams["sglang"].url}"]
upstream_model = "stepfun-ai/Step-3.7-Flash"
api_key_env = "TEST_UPSTREAM_KEY"

[[models]]
name = "step-3.7-flash-vllm"
backend = "openai"
replicas = ["{upstreams["vllm"].url}"]
effort = "top_level"

[[models]]
name = "failover"
backend = "openai"
replicas = ["{dead}", "{upstreams["flaky"].url}", "{upstreams["a"].url}"]
read_timeout = 1.0
cooldown_seconds = 0.5
health_path = ""

[[models]]
name = "pair"
backend = "openai"
replicas = ["{upstreams["a"].url}", "{upstreams["b"].url}"]

[[models]]
name = "step-3.5-flash"
backend = "openai"
replicas = ["{upstreams["vllm"].url}"]
media = []

[[models]]
name = "all-dead"
backend = "openai"
replicas = ["{dead}"]
cooldown_seconds = 30

[step_plan]
candidates = ["all-dead", "step-3.7-flash-vllm"]
""")
    server = start_server(session_tmp, None, {"TEST_UPSTREAM_KEY": "sk-upstream"}, config)
    yield server
    stop_server(server)


@pytest.fixture
def client(gateway: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.api, api_key="k", _strict_response_validation=True, max_retries=0
    )


def ask(model: str = "step-3.7-flash", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


def test_sglang_passthrough_with_effort_usage_and_key(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        **ask(reasoning_effort="high", max_tokens=100)
    )
    assert raw.headers["x-stepflash-backend"] == "openai/stepfun-ai/Step-3.7-Flash"
    assert "x-stepflash-stand-in-for" not in raw.headers
    completion = raw.parse()
    message = completion.choices[0].message.model_dump()
    assert message["reasoning"] == "The user greets me. I should greet back briefly."
    assert message["content"] == "Hello! How can I help?"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (812, 23)
    assert usage.prompt_tokens_details.cached_tokens == 768 == usage.model_dump()["cached_tokens"]
    assert usage.completion_tokens_details.reasoning_tokens == 9
    sent = upstreams["sglang"].requests[-1]
    assert sent["model"] == "stepfun-ai/Step-3.7-Flash"
    assert sent["reasoning_effort"] == "high"
    assert sent["chat_template_kwargs"] == {"reasoning_effort": "high"}
    assert sent["stream"] is False, "a caller that does not stream gets a whole upstream answer"
    assert sent["max_tokens"] == 100


def test_vllm_reasoning_field_is_returned_deepseek_style(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    completion = client.chat.completions.create(
        **ask("step-3.7-flash-vllm"), extra_body={"reasoning_format": "deepseek-style"}
    )
    message = completion.choices[0].message.model_dump()
    assert message["reasoning_content"].startswith("The user greets me")
    assert "reasoning" not in message or message["reasoning"] is None
    assert "chat_template_kwargs" not in upstreams["vllm"].requests[-1]
    assert completion.usage.prompt_tokens_details.cached_tokens == 768


def test_streamed_tool_call_round_trip(
    gateway: LiveServer, client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    upstreams["sglang"].script = WEATHER_CALL
    chunks = collect_stream(gateway.api, ask(tools=TOOLS, stream=True))
    sent = upstreams["sglang"].requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    calls = [
        c for chunk in chunks for ch in chunk["choices"] for c in ch["delta"].get("tool_calls", [])
    ]
    assert calls[0]["id"] == "call_up_0" and calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(c["function"].get("arguments", "") for c in calls)
    assert json.loads(arguments) == {"city": "Paris", "unit": "c"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    completion = client.chat.completions.create(**ask(tools=TOOLS))
    call = completion.choices[0].message.tool_calls[0]
    follow_up = [
        {"role": "user", "content": "Weather in Paris?"},
        completion.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C"},
    ]
    upstreams["sglang"].script = Script()
    client.chat.completions.create(model="step-3.7-flash", messages=follow_up, tools=TOOLS)
    sent = upstreams["sglang"].requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[1]["reasoning_content"] == "I need the weather for Paris."
    assert sent[2] == {"role": "tool", "content": "18C", "tool_call_id": call.id}


def test_failover_past_refused_and_500_replicas(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    upstreams["flaky"].mode = "error500"
    for _ in range(3):  # whatever the affinity order, the dead and the 500 replicas are skipped
        completion = client.chat.completions.create(**ask("failover"))
        assert completion.choices[0].message.content == "Hello! How can I help?"
    assert upstreams["a"].requests


def test_failover_past_a_stalled_replica(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    time.sleep(0.6)  # let earlier benches expire
    upstreams["flaky"].mode = "stall"
    completion = client.chat.completions.create(**ask("failover"))
    assert completion.choices[0].message.content == "Hello! How can I help?"


def test_cut_stream_ends_with_usage_and_an_error(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream]
) -> None:
    upstreams["sglang"].mode = "cut"
    response = httpx.post(
        f"{gateway.api}/chat/completions",
        timeout=30,
        json=ask(stream=True, stream_options={"include_usage": True}),
    )
    frames = parse_sse(response.text)
    assert frames[-1] != "[DONE]"
    assert "failed mid-stream" in frames[-1]["error"]["message"]
    usage = frames[-2]["usage"]
    assert usage["completion_tokens"] == 2, "the two delivered chunks are accounted"
    assert len(upstreams["sglang"].requests) == 1, "no retry after tokens were sent"


def test_upstream_4xx_is_passed_on_not_retried(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    upstreams["sglang"].mode = "error400"
    with pytest.raises(openai.BadRequestError, match="too large for this engine"):
        client.chat.completions.create(**ask())
    assert len(upstreams["sglang"].requests) == 1


def test_no_replica_left_is_a_503_with_retry_after(gateway: LiveServer) -> None:
    response = httpx.post(f"{gateway.api}/chat/completions", json=ask("all-dead"), timeout=30)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "no replica could serve" in response.json()["error"]["message"]


def test_client_disconnect_cancels_the_upstream(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream]
) -> None:
    upstreams["sglang"].delay = 0.5
    with httpx.stream(
        "POST", f"{gateway.api}/chat/completions", json=ask(stream=True), timeout=30
    ) as response:
        lines = response.iter_lines()
        while "reasoning" not in next(lines):
            pass
    deadline = time.monotonic() + 10
    while upstreams["sglang"].cancelled == 0:
        assert time.monotonic() < deadline, "the upstream request was not cancelled"
        time.sleep(0.05)


def test_prefix_affinity_keeps_a_conversation_on_one_replica(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    def conversation(topic: int, turn: int) -> list[dict]:
        system = {"role": "system", "content": f"Long shared instructions for topic {topic}. " * 80}
        return [system, {"role": "user", "content": f"question {turn}"}]

    for turn in range(4):
        client.chat.completions.create(model="pair", messages=conversation(0, turn))
    counts = [len(upstreams[name].requests) for name in ("a", "b")]
    assert sorted(counts) == [0, 4], "one prefix, one replica"
    for topic in range(1, 13):
        client.chat.completions.create(model="pair", messages=conversation(topic, 0))
    assert all(len(upstreams[name].requests) > 0 for name in ("a", "b")), "prefixes spread"


def test_step_plan_routes_to_the_first_available_candidate(gateway: LiveServer) -> None:
    httpx.post(f"{gateway.api}/chat/completions", json=ask("all-dead"), timeout=30)  # bench it
    client = openai.OpenAI(
        base_url=f"{gateway.url}/step_plan/v1",
        api_key="k",
        max_retries=0,
        _strict_response_validation=True,
    )
    raw = client.chat.completions.with_raw_response.create(**ask("step-router-v1"))
    assert raw.headers["x-stepflash-routed-to"] == "step-3.7-flash-vllm"
    assert raw.parse().model == "step-router-v1"
    listed = {m.id: m.model_dump() for m in client.models.list()}
    assert listed["step-router-v1"]["stepflash"]["routes_to"] == "step-3.7-flash-vllm"


def test_sse_order_is_strict_for_every_upstream_flavour(gateway: LiveServer) -> None:
    for model in ("step-3.7-flash", "step-3.7-flash-vllm", "stepfun/step-3.7-flash"):
        response = httpx.post(
            f"{gateway.api}/chat/completions",
            timeout=30,
            json=ask(model, stream=True, stream_options={"include_usage": True}),
        )
        chunks = check_chat_chunks(parse_sse(response.text))
        assert chunks[-1]["usage"]["prompt_tokens"] == 812


def test_image_and_video_parts_reach_the_upstream_in_order(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    video = base64.b64encode(video_bytes("mp4")).decode()
    image = base64.b64encode(image_bytes("PNG", 64, 48)).decode()
    content = [
        {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{video}"}},
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{image}", "detail": "low"},
        },
        {"type": "text", "text": "What happens here?"},
    ]
    client.chat.completions.create(
        model="step-3.7-flash", messages=[{"role": "user", "content": content}]
    )
    sent = upstreams["sglang"].requests[-1]["messages"][0]["content"]
    assert sent == content


def test_media_to_a_text_only_upstream_model_is_a_400(
    client: openai.OpenAI, upstreams: dict[str, ScriptedUpstream]
) -> None:
    content = [
        {"type": "text", "text": "Describe"},
        {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="step-3.5-flash", messages=[{"role": "user", "content": content}]
        )
    assert caught.value.body["code"] == "unsupported_content_type"
    assert caught.value.body["param"] == "messages[0].content[1]"
    assert "is a video" in caught.value.body["message"]
    assert not upstreams["vllm"].requests

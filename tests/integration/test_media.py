"""Images and videos end to end: fetched safely, checked, counted, delivered as bytes.

A live stepflash sits in front of a scripted SGLang upstream (openai backend) and a scripted
llama.cpp server (completions backend); two media hosts on 127.0.0.1 serve real files: one
is allow-listed in the configuration, the other (the "victim") is not, so any URL that
reaches it through the guard would be a real SSRF hole.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from PIL import Image

from stepflash.media.tokens import GLOBAL_VIEW_TOKENS, image_tokens
from tests.conftest import LiveServer, start_server, stop_server
from tests.media_files import IMAGE_TYPES, VIDEO_TYPES, image_bytes, video_bytes
from tests.media_host import MediaHost
from tests.upstreams import ScriptedUpstream

MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_VIDEO_SECONDS = 3


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, MediaHost]]:
    servers = {"allowed": MediaHost().start(), "victim": MediaHost().start()}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, ScriptedUpstream]]:
    servers = {"sglang": ScriptedUpstream("sglang").start(), "raw": ScriptedUpstream().start()}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(autouse=True)
def reset(upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]) -> None:
    for upstream in upstreams.values():
        upstream.requests.clear()
    hosts["victim"].hits.clear()


@pytest.fixture(scope="module")
def gateway(
    session_tmp: Path, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> Iterator[LiveServer]:
    config = session_tmp / "media.toml"
    config.write_text(f"""
[media]
max_image_bytes = {MAX_IMAGE_BYTES}
max_video_seconds = {MAX_VIDEO_SECONDS}
max_video_pixels = 1000000
fetch_allow = ["127.0.0.1:{hosts["allowed"].port}"]
fetch_timeout_seconds = 5

[[models]]
name = "step-3.7-flash"
backend = "openai"
replicas = ["{upstreams["sglang"].url}"]

[[models]]
name = "step-3.7-flash-raw"
backend = "completions"
replicas = ["{upstreams["raw"].url}"]
media = ["image"]
""")
    server = start_server(session_tmp, None, config=config)
    yield server
    stop_server(server)


def openai_client(gateway: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.api, api_key="unused", max_retries=0, _strict_response_validation=True
    )


def anthropic_client(gateway: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gateway.url, api_key="unused", max_retries=0, _strict_response_validation=True
    )


def data_url(media_type: str, body: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(body).decode()}"


def ask_openai(
    gateway: LiveServer, parts: list[dict[str, Any]], model: str = "step-3.7-flash"
) -> Any:
    """Send parts plus a question; return the raw response (headers and parsed body)."""
    content = [*parts, {"type": "text", "text": "What is this?"}]
    return openai_client(gateway).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}]
    )


def image_part(url: str, detail: str | None = None) -> dict[str, Any]:
    image = {"url": url} if detail is None else {"url": url, "detail": detail}
    return {"type": "image_url", "image_url": image}


def sent_media(upstream: ScriptedUpstream) -> list[dict[str, Any]]:
    content = upstream.requests[-1]["messages"][0]["content"]
    return [part for part in content if part["type"] != "text"]


def decoded(url: str) -> tuple[str, bytes]:
    header, _, payload = url.partition(",")
    assert header.endswith(";base64")
    return header[5:-7], base64.b64decode(payload)


# -- every format reaches the upstream as the exact bytes, with its token count -------------


@pytest.mark.parametrize("image_format", list(IMAGE_TYPES))
@pytest.mark.parametrize("source", ["data", "url"])
def test_images_reach_the_upstream_byte_for_byte(
    gateway: LiveServer,
    upstreams: dict[str, ScriptedUpstream],
    hosts: dict[str, MediaHost],
    image_format: str,
    source: str,
) -> None:
    body, media_type = image_bytes(image_format, 1000, 500), IMAGE_TYPES[image_format]
    if source == "data":
        url = data_url(media_type, body)
    else:
        url = hosts["allowed"].add(f"picture.{image_format.lower()}", body, media_type)
    response = ask_openai(gateway, [image_part(url)])
    assert response.parse().choices[0].message.content
    (part,) = sent_media(upstreams["sglang"])
    assert part["image_url"]["detail"] == "high"  # step-3.7-flash's default
    assert decoded(part["image_url"]["url"]) == (media_type, body)
    assert response.headers["x-stepflash-image-tokens"] == str(image_tokens(1000, 500)) == "337"


@pytest.mark.parametrize("container", list(VIDEO_TYPES))
@pytest.mark.parametrize("source", ["data", "url"])
def test_videos_reach_the_upstream_byte_for_byte(
    gateway: LiveServer,
    upstreams: dict[str, ScriptedUpstream],
    hosts: dict[str, MediaHost],
    container: str,
    source: str,
) -> None:
    body, media_type = video_bytes(container, seconds=2.5), VIDEO_TYPES[container]
    if source == "data":
        url = data_url(media_type, body)
    else:
        url = hosts["allowed"].add(f"clip.{container}", body, media_type)
    response = ask_openai(gateway, [{"type": "video_url", "video_url": {"url": url}}])
    (part,) = sent_media(upstreams["sglang"])
    assert decoded(part["video_url"]["url"]) == (media_type, body)
    # 2.5 s sampled at 1 frame per second: 3 frames, each one global view.
    assert response.headers["x-stepflash-video-tokens"] == str(3 * GLOBAL_VIEW_TOKENS)


def test_anthropic_image_blocks_take_the_same_path(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> None:
    png, webp = image_bytes("PNG", 600, 1200), image_bytes("WEBP", 728, 728)
    url = hosts["allowed"].add("portrait.webp", webp, "image/webp")
    content = [
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": base64.b64encode(png).decode(),
            },
        },
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "text", "text": "Compare them."},
    ]
    response = anthropic_client(gateway).messages.with_raw_response.create(
        model="step-3.7-flash", max_tokens=64, messages=[{"role": "user", "content": content}]
    )
    assert response.parse().stop_reason == "end_turn"
    sent = sent_media(upstreams["sglang"])
    assert [decoded(part["image_url"]["url"]) for part in sent] == [
        ("image/png", png),
        ("image/webp", webp),
    ]
    assert response.headers["x-stepflash-image-tokens"] == str(422 + 171)


def test_a_large_image_is_scaled_to_what_the_model_sees(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> None:
    body = image_bytes("JPEG", 4032, 3024)
    response = ask_openai(gateway, [image_part(data_url("image/jpeg", body))])
    (part,) = sent_media(upstreams["sglang"])
    media_type, sent = decoded(part["image_url"]["url"])
    assert media_type == "image/jpeg"
    assert Image.open(io.BytesIO(sent)).size == (3024, 2268)
    assert response.headers["x-stepflash-image-tokens"] == "2665"


def test_low_detail_is_the_flat_figure_and_a_smaller_image(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream]
) -> None:
    body = image_bytes("PNG", 1024, 1024)
    response = ask_openai(gateway, [image_part(data_url("image/png", body), "low")])
    (part,) = sent_media(upstreams["sglang"])
    assert part["image_url"]["detail"] == "low"
    assert Image.open(io.BytesIO(decoded(part["image_url"]["url"])[1])).size == (728, 728)
    assert response.headers["x-stepflash-image-tokens"] == "400"


SIZES = [(728, 728, 171), (1000, 500, 337), (700, 400, 337), (1024, 1024, 504),
         (600, 1200, 422), (3000, 600, 669), (2000, 300, 752), (3024, 3024, 3164)]  # fmt: skip


@pytest.mark.parametrize(("width", "height", "tokens"), SIZES)
def test_count_tokens_adds_the_image_geometry(
    gateway: LiveServer, width: int, height: int, tokens: int
) -> None:
    client = anthropic_client(gateway)
    png = base64.b64encode(image_bytes("PNG", width, height)).decode()
    question = {"type": "text", "text": "What is this?"}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    with_image = client.messages.count_tokens(
        model="step-3.7-flash", messages=[{"role": "user", "content": [image, question]}]
    )
    text_only = client.messages.count_tokens(
        model="step-3.7-flash", messages=[{"role": "user", "content": [question]}]
    )
    assert with_image.input_tokens - text_only.input_tokens == tokens == image_tokens(width, height)


def test_the_raw_backend_gets_inline_bytes_and_counts_the_geometry(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> None:
    body = image_bytes("PNG", 1024, 1024)
    url = hosts["allowed"].add("square.png", body, "image/png")
    ask_openai(gateway, [image_part(url)], model="step-3.7-flash-raw")
    prompt = upstreams["raw"].requests[-1]["prompt"]
    assert prompt["prompt_string"].count("<im_patch>") == 1
    assert [base64.b64decode(data) for data in prompt["multimodal_data"]] == [body]
    client = anthropic_client(gateway)
    question = {"type": "text", "text": "What is this?"}
    image = {"type": "image", "source": {"type": "url", "url": url}}
    counts = [
        client.messages.count_tokens(
            model="step-3.7-flash-raw", messages=[{"role": "user", "content": content}]
        ).input_tokens
        for content in ([image, question], [question])
    ]
    assert counts[0] - counts[1] == 504

"""Images and videos end to end: fetched safely, checked, counted, delivered as bytes.

A live stepflash sits in front of a scripted SGLang upstream (openai backend) and a scripted
llama.cpp server (completions backend); two media hosts on 127.0.0.1 serve real files: one
is allow-listed in the configuration, the other (the "victim") is not, so any URL that
reaches it through the guard would be a real SSRF hole.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from PIL import Image

from stepflash.media.tokens import GLOBAL_VIEW_TOKENS, image_tokens
from tests.conftest import LiveServer, start_server, stop_server
from tests.media_files import (
    IMAGE_TYPES,
    VIDEO_TYPES,
    animated_gif,
    image_bytes,
    picture,
    png_bomb,
    video_bytes,
)
from tests.media_host import MediaHost
from tests.upstreams import ScriptedUpstream

MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_VIDEO_SECONDS = 3
MAX_PARTS = 4


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


def write_config(
    session_tmp: Path, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> Path:
    config = session_tmp / "media.toml"
    config.write_text(f"""
[limits]
max_media_parts = {MAX_PARTS}

[media]
max_image_bytes = {MAX_IMAGE_BYTES}
max_video_seconds = {MAX_VIDEO_SECONDS}
max_video_pixels = 1000000
fetch_allow = ["127.0.0.1:{hosts["allowed"].port}"]
fetch_timeout_seconds = 2

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
    return config


@pytest.fixture(scope="module")
def gateway(
    session_tmp: Path, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> Iterator[LiveServer]:
    server = start_server(session_tmp, None, config=write_config(session_tmp, upstreams, hosts))
    yield server
    stop_server(server)


@pytest.fixture
def fresh_gateway(
    session_tmp: Path, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> Iterator[LiveServer]:
    """A gateway of its own, so its peak memory is this test's alone."""
    server = start_server(session_tmp, None, config=write_config(session_tmp, upstreams, hosts))
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


def ask_anthropic(gateway: LiveServer, source: dict[str, Any]) -> Any:
    content = [{"type": "image", "source": source}, {"type": "text", "text": "What is this?"}]
    return anthropic_client(gateway).messages.with_raw_response.create(
        model="step-3.7-flash", max_tokens=64, messages=[{"role": "user", "content": content}]
    )


@pytest.mark.parametrize("image_format", list(IMAGE_TYPES))
@pytest.mark.parametrize("source", ["data", "url"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_images_reach_the_upstream_byte_for_byte(
    gateway: LiveServer,
    upstreams: dict[str, ScriptedUpstream],
    hosts: dict[str, MediaHost],
    image_format: str,
    source: str,
    protocol: str,
) -> None:
    body, media_type = image_bytes(image_format, 1000, 500), IMAGE_TYPES[image_format]
    url = hosts["allowed"].add(f"picture.{image_format.lower()}", body, media_type)
    if protocol == "openai":
        response = ask_openai(
            gateway, [image_part(url if source == "url" else data_url(media_type, body))]
        )
        assert response.parse().choices[0].message.content
    else:
        encoded = base64.b64encode(body).decode()
        block = (
            {"type": "url", "url": url}
            if source == "url"
            else {"type": "base64", "media_type": media_type, "data": encoded}
        )
        response = ask_anthropic(gateway, block)
        assert response.parse().stop_reason == "end_turn"
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


def test_images_are_counted_and_bounded_per_request(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream]
) -> None:
    """Several images across messages: each prepared in place, their tokens summed."""
    png, webp = image_bytes("PNG", 600, 1200), image_bytes("WEBP", 728, 728)
    first = [image_part(data_url("image/png", png)), image_part(data_url("image/webp", webp))]
    messages = [
        {"role": "user", "content": [*first, {"type": "text", "text": "Remember these."}]},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": [image_part(data_url("image/png", png))]},
    ]
    response = openai_client(gateway).chat.completions.with_raw_response.create(
        model="step-3.7-flash", messages=messages
    )
    assert response.headers["x-stepflash-image-tokens"] == str(422 + 171 + 422)
    sent = upstreams["sglang"].requests[-1]["messages"]
    assert [decoded(part["image_url"]["url"])[1] for part in sent[0]["content"][:2]] == [png, webp]
    assert decoded(sent[2]["content"][0]["image_url"]["url"])[1] == png
    with pytest.raises(openai.BadRequestError) as caught:
        ask_openai(gateway, [image_part(data_url("image/png", png))] * (MAX_PARTS + 1))
    assert f"at most {MAX_PARTS} images and videos" in caught.value.body["message"]


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


# -- the SSRF guard ------------------------------------------------------------------------

REFUSED = "fetches only public addresses"


def hostile_urls(hosts: dict[str, MediaHost]) -> list[tuple[str, str]]:
    """(URL, what the refusal says). Loopback spellings aim at the victim's real port."""
    v = hosts["victim"].port
    allowed = hosts["allowed"]
    loopback = [
        f"http://127.0.0.1:{v}/files/x.png",
        f"http://localhost:{v}/files/x.png",  # a name that resolves to loopback
        f"http://LOCALHOST:{v}/files/x.png",
        f"http://127.1:{v}/files/x.png",
        f"http://2130706433:{v}/files/x.png",  # decimal
        f"http://0x7f000001:{v}/files/x.png",  # hex
        f"http://0177.0.0.1:{v}/files/x.png",  # octal
        f"http://0x7f.0.0.1:{v}/files/x.png",
        f"http://127.000.000.001:{v}/files/x.png",
        f"http://0.0.0.0:{v}/files/x.png",
        f"http://0:{v}/files/x.png",
        f"http://[::1]:{v}/files/x.png",
        f"http://[::]:{v}/files/x.png",
        f"http://[::ffff:127.0.0.1]:{v}/files/x.png",  # IPv4-mapped
        f"http://[::ffff:7f00:1]:{v}/files/x.png",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{v}/files/x.png",
        f"http://[64:ff9b::127.0.0.1]:{v}/files/x.png",  # NAT64
        f"http://[2002:7f00:1::]:{v}/files/x.png",  # 6to4
    ]
    elsewhere = [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://100.100.100.200/latest/meta-data/",
        "http://168.63.129.16/metadata/instance",
        "http://10.0.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://192.168.0.1/a.png",
        "http://100.64.0.1/a.png",
        "http://224.0.0.1/a.png",
        "http://255.255.255.255/a.png",
        "http://[fe80::1]/a.png",
        "http://[fc00::1]/a.png",
        "https://240.0.0.1/a.png",
    ]
    redirects = [
        # A public-looking (allow-listed) server that redirects inward.
        (allowed.redirect_to(f"http://127.0.0.1:{v}/files/x.png"), REFUSED),
        (allowed.redirect_to(f"http://localhost:{v}/files/x.png"), REFUSED),
        (allowed.redirect_to("http://169.254.169.254/latest/meta-data/"), REFUSED),
        (allowed.redirect_to("http://10.1.2.3/a.png"), REFUSED),
        (allowed.redirect_to("file:///etc/passwd"), "only http and https"),
        (f"{allowed.url}/loop/0", "redirected more than 3 times"),
    ]
    others = [
        ("file:///etc/passwd", "must be http"),
        (f"gopher://127.0.0.1:{v}/", "must be http"),
        (f"http://user:secret@127.0.0.1:{allowed.port}/files/ok.png", "credentials"),
        ("http://[::1/files/x.png", "not valid"),
        ("http://a..b/x.png", "not valid"),
    ]
    return [(url, REFUSED) for url in loopback + elsewhere] + redirects + others


def test_hostile_urls_are_refused_and_never_reached(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> None:
    hosts["victim"].add("x.png", image_bytes("PNG", 64, 64), "image/png")
    table = hostile_urls(hosts)
    assert len(table) >= 25
    wrong = []
    for url, says in table:
        try:
            ask_openai(gateway, [image_part(url)])
            wrong.append((url, "was accepted"))
        except openai.BadRequestError as error:
            message = error.body["message"]
            if says not in message or error.body["param"] != "messages[0].content[0]":
                wrong.append((url, message))
    assert not wrong
    assert hosts["victim"].hits == [], "a refused URL reached the victim"
    assert not upstreams["sglang"].requests


def test_redirects_between_allowed_addresses_are_followed(
    gateway: LiveServer, upstreams: dict[str, ScriptedUpstream], hosts: dict[str, MediaHost]
) -> None:
    body = image_bytes("PNG", 64, 64)
    target = hosts["allowed"].add("moved.png", body, "image/png")
    ask_openai(gateway, [image_part(hosts["allowed"].redirect_to(target))])
    (part,) = sent_media(upstreams["sglang"])
    assert decoded(part["image_url"]["url"]) == ("image/png", body)


# -- hostile and broken files ----------------------------------------------------------------


def noise_png(width: int, height: int) -> bytes:
    """Random pixels: PNG cannot compress them, so the file is about 3 bytes a pixel."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


def other_format(image_format: str) -> bytes:
    out = io.BytesIO()
    picture(64, 64).save(out, image_format)
    return out.getvalue()


def hostile_files(hosts: dict[str, MediaHost]) -> list[tuple[str, dict[str, Any], str, str]]:
    """(name, content part, error code, what the message says)."""
    png, jpeg = image_bytes("PNG", 400, 300), image_bytes("JPEG", 400, 300)
    mp4, mkv = video_bytes("mp4"), video_bytes("mkv")
    bad, unsupported = "request_params_invalid", "unsupported_content_type"
    allowed = hosts["allowed"]

    def image(media_type: str, body: bytes) -> dict[str, Any]:
        return image_part(data_url(media_type, body))

    def video(media_type: str, body: bytes) -> dict[str, Any]:
        return {"type": "video_url", "video_url": {"url": data_url(media_type, body)}}

    return [
        ("decompression bomb", image("image/png", png_bomb()), bad, "decompression bomb"),
        ("too many pixels", image("image/png", png_bomb(8000)), bad, "the limit is 50,000,000"),
        ("truncated PNG", image("image/png", png[: len(png) // 2]), bad, "truncated"),
        ("truncated JPEG", image("image/jpeg", jpeg[: len(jpeg) // 2]), bad, "truncated"),
        ("animated GIF", image("image/gif", animated_gif()), unsupported, "animated"),
        ("PDF as PNG", image("image/png", b"%PDF-1.7\n" + os.urandom(512)), unsupported, "not a"),
        ("JPEG labelled PNG", image("image/png", jpeg), unsupported, "declared image/png"),
        ("TIFF labelled PNG", image("image/png", other_format("TIFF")), unsupported, "not a"),
        ("BMP", image("image/bmp", other_format("BMP")), unsupported, "image/bmp is not"),
        ("1x1 pixel", image("image/png", image_bytes("PNG", 1, 1)), bad, "at least 10 px"),
        ("aspect ratio", image("image/png", image_bytes("PNG", 2000, 10)), bad, "aspect ratio"),
        ("over the byte limit", image("image/png", noise_png(1000, 1000)), bad, "limit of"),
        ("not base64", image_part("data:image/png;base64,@@@@"), bad, "not valid base64"),
        ("not a base64 data URL", image_part("data:image/png,rawtext"), bad, "must be base64"),
        ("stepfile, no such file", image_part("stepfile://file-abc123"), bad, "no file"),
        (
            "over the byte limit, by URL",
            image_part(allowed.add("noise.png", noise_png(1000, 1000), "image/png")),
            bad,
            "the limit is",
        ),
        (
            "a web page, by URL",
            image_part(allowed.add("page.html", b"<html></html>", "text/html")),
            bad,
            "sent text/html",
        ),
        ("missing, by URL", image_part(f"{allowed.url}/files/gone.png"), bad, "404"),
        ("too slow, by URL", image_part(f"{allowed.url}/slow"), bad, "longer than 2 s"),
        ("gzip bomb, by URL", image_part(f"{allowed.url}/gzip-bomb"), bad, "gzip-encoded"),
        ("truncated MP4", video("video/mp4", mp4[: len(mp4) // 2]), unsupported, "not a"),
        ("MKV labelled MP4", video("video/mp4", mkv), unsupported, "declared video/mp4"),
        ("PNG labelled MP4", video("video/mp4", png), unsupported, "send MP4, MOV or MKV"),
        ("AVI", video("video/x-msvideo", mp4), unsupported, "is not supported"),
        ("too long", video("video/mp4", video_bytes(seconds=4)), bad, "at most 3 s"),
        ("big frames", video("video/mp4", video_bytes(width=1280, height=800)), bad, "frames"),
    ]


def peak_rss_bytes(server: LiveServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def test_hostile_files_are_refused_with_bounded_memory(
    fresh_gateway: LiveServer,
    upstreams: dict[str, ScriptedUpstream],
    hosts: dict[str, MediaHost],
    record_property: Any,
) -> None:
    before = peak_rss_bytes(fresh_gateway)
    wrong = []
    table = hostile_files(hosts)
    for name, part, code, says in table:
        try:
            ask_openai(fresh_gateway, [part])
            wrong.append((name, "was accepted"))
        except openai.BadRequestError as error:
            body = error.body
            if (body["code"], body["param"]) != (code, "messages[0].content[0]") or (
                says not in body["message"]
            ):
                wrong.append((name, body["code"], body["message"]))
    assert not wrong
    assert not upstreams["sglang"].requests
    after = peak_rss_bytes(fresh_gateway)
    record_property("server peak RSS, MiB", round(after / 2**20, 1))
    record_property("growth while refusing hostile files, MiB", round((after - before) / 2**20, 1))
    # The bomb alone would take 900 MB decoded; checked files must cost far less.
    assert after - before < 200 * 2**20, f"peak RSS grew {(after - before) / 2**20:.0f} MiB"

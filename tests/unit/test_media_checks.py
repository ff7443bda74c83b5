"""Image and video checks on real files, without a server."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from stepflash.media.images import ImageLimits, check_image
from stepflash.media.rejection import MediaRejected
from stepflash.media.videos import VideoLimits, check_video
from tests.media_files import image_bytes, video_bytes

LIMITS = ImageLimits(max_pixels=50_000_000, min_side=10, max_aspect_ratio=25)
VIDEO_LIMITS = VideoLimits(max_seconds=300, max_pixels=3840 * 2160)


def test_small_images_are_sent_as_they_came() -> None:
    body = image_bytes("WEBP", 640, 480)
    checked = check_image(body, "image/webp", LIMITS, 3024)
    assert (checked.media_type, checked.width, checked.height) == ("image/webp", 640, 480)
    assert checked.data is body


@pytest.mark.parametrize(
    ("image_format", "sent_as"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP"), ("GIF", "PNG")],
)
def test_large_images_are_scaled_down_in_a_format_the_model_reads(
    image_format: str, sent_as: str
) -> None:
    checked = check_image(image_bytes(image_format, 2000, 1000), None, LIMITS, 728)
    sent = Image.open(io.BytesIO(checked.data))
    assert (sent.format, sent.size) == (sent_as, (728, 364))
    assert (checked.width, checked.height) == (728, 364)


def test_the_common_jpeg_aliases_are_accepted() -> None:
    body = image_bytes("JPEG", 64, 64)
    for alias in ("image/jpg", "image/jpeg", "image/pjpeg"):
        assert check_image(body, alias, LIMITS, 3024).media_type == "image/jpeg"


def test_a_bound_is_a_plain_refusal_and_a_format_is_unsupported() -> None:
    with pytest.raises(MediaRejected) as small:
        check_image(image_bytes("PNG", 5, 50), None, LIMITS, 3024)
    assert not small.value.unsupported
    with pytest.raises(MediaRejected) as svg:
        check_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", LIMITS, 3024)
    assert svg.value.unsupported


@pytest.mark.parametrize(
    ("container", "declared", "media_type"),
    [
        ("mp4", None, "video/mp4"),
        ("mov", "video/quicktime", "video/quicktime"),
        ("mkv", None, "video/x-matroska"),
        ("mkv", "video/webm", "video/webm"),
    ],
)
def test_videos_are_probed_for_size_and_duration(
    container: str, declared: str | None, media_type: str
) -> None:
    checked = check_video(video_bytes(container, 1.5, 320, 240), declared, VIDEO_LIMITS)
    assert (checked.media_type, checked.width, checked.height) == (media_type, 320, 240)
    assert checked.seconds == pytest.approx(1.5, abs=0.15)

"""Check a video's bytes with FFmpeg (PyAV): container, duration, resolution, decodability.

The container is probed from the bytes; MP4/MOV and Matroska (MKV, WebM) are accepted, and a
declared type from the other family is refused as mislabeled. Every packet is demuxed (cheap:
nothing is decoded) so a cut-off file is caught, and the first frame is decoded so a file
whose codec data is broken is caught too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av

from stepflash.media.rejection import MediaRejected

_FAMILIES = {
    "mov,mp4,m4a,3gp,3g2,mj2": (
        "video/mp4",
        frozenset({"video/mp4", "video/quicktime", "video/x-m4v"}),
    ),
    "matroska,webm": (
        "video/x-matroska",
        frozenset({"video/x-matroska", "video/matroska", "video/mkv", "video/webm"}),
    ),
}
_KNOWN_TYPES = frozenset().union(*(types for _, types in _FAMILIES.values()))
_NAMES = "MP4, MOV or MKV"


@dataclass(frozen=True, slots=True)
class VideoLimits:
    max_seconds: float
    max_pixels: int


@dataclass(frozen=True, slots=True)
class CheckedVideo:
    media_type: str
    width: int
    height: int
    seconds: float


def _declared(media_type: str | None) -> str | None:
    if media_type is not None and media_type not in _KNOWN_TYPES:
        raise MediaRejected(f"{media_type} is not supported; send {_NAMES}", unsupported=True)
    return media_type


def _open(data: bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as error:
        raise MediaRejected(
            f"the bytes are not a readable {_NAMES} video", unsupported=True
        ) from error


def _seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    raise MediaRejected("its duration cannot be determined")


def _read_through(container: av.container.InputContainer, stream: av.VideoStream) -> None:
    """Demux every packet and decode the first frame; a broken file fails here."""
    decoded = False
    try:
        for packet in container.demux(stream):
            if not decoded and packet.size:
                decoded = bool(packet.decode())
    except (av.FFmpegError, ValueError) as error:
        raise MediaRejected(f"the video is corrupt or truncated ({error})") from error
    if not decoded:
        raise MediaRejected("the video has no decodable frame")


def check_video(data: bytes, declared_type: str | None, limits: VideoLimits) -> CheckedVideo:
    """Validate `data` as a video; raises MediaRejected with what is wrong."""
    declared = _declared(declared_type)
    with _open(data) as container:
        family = _FAMILIES.get(container.format.name)
        if family is None:
            raise MediaRejected(
                f"it is {container.format.long_name}; send {_NAMES}", unsupported=True
            )
        media_type, types = family
        if declared is not None and declared not in types:
            raise MediaRejected(
                f"it is declared {declared} but the bytes are {media_type}", unsupported=True
            )
        if not container.streams.video:
            raise MediaRejected("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise MediaRejected(
                f"its frames are {width}x{height}; the limit is {limits.max_pixels:,} pixels"
            )
        seconds = _seconds(container, stream)
        if seconds > limits.max_seconds:
            raise MediaRejected(
                f"it is {seconds:.1f} s long; videos may be at most {limits.max_seconds:g} s"
            )
        _read_through(container, stream)
    return CheckedVideo(declared or media_type, width, height, seconds)

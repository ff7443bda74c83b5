"""The media stage of a chat request: every image and video fetched, checked and counted.

After `prepare`, each media part holds a data URL of bytes stepflash has validated (scaled
down when larger than the model looks at), its decided detail and its prompt tokens, so
engines never fetch a user's URL and count_tokens and usage agree on what media costs.
Parts are prepared concurrently; decoding runs off the event loop, a few at a time, which
bounds the memory that large images can take. A `stepfile://{file_id}` URL reads the caller's
own uploaded file, whose bytes then pass the same checks as any other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, TypeVar

from stepflash.config import MediaSettings
from stepflash.core.errors import ErrorKind, StepflashError, invalid
from stepflash.core.request import ChatRequest, ImagePart, MediaPart, TextPart, VideoPart
from stepflash.media.address_policy import AddressPolicy
from stepflash.media.fetch import FetchFailed, MediaFetcher
from stepflash.media.images import ImageLimits, check_image
from stepflash.media.rejection import MediaRejected
from stepflash.media.tokens import GLOBAL_SIDE, MAX_SIDE, image_tokens, video_tokens
from stepflash.media.videos import VideoLimits, check_video

T = TypeVar("T")

STEPFILE = "stepfile://"


class FileReader(Protocol):
    """The caller's own uploaded files, which `stepfile://{file_id}` URLs name."""

    async def read(self, file_id: str, max_bytes: int) -> bytes | None:
        """The file's bytes, or None when the caller has no such file (another account's
        file included); raises MediaRejected when it is over `max_bytes`."""
        ...


def _decode_data_url(url: str, max_bytes: int) -> tuple[bytes, str | None, str]:
    """(bytes, declared media type, base64 text) of a `data:<type>;base64,<data>` URL."""
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise MediaRejected("data: URLs must be base64: data:<type>;base64,<data>")
    if len(payload) // 4 * 3 > max_bytes:
        raise MediaRejected(f"it is over the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise MediaRejected("its data: URL is not valid base64") from error
    media_type = header[5 : -len(";base64")].split(";", 1)[0].strip().lower()
    return data, media_type or None, payload


async def _stored(file_id: str, max_bytes: int, files: FileReader | None) -> bytes:
    """A `stepfile://` URL's bytes. A missing file and another account's are refused alike."""
    data = None if files is None else await files.read(file_id, max_bytes)
    if data is None:
        raise MediaRejected(f"there is no file {file_id!r} among your uploaded files")
    return data


def _data_url(media_type: str, data: bytes, payload: str | None) -> str:
    """`data` as a data URL, reusing its base64 text when it arrived as one."""
    encoded = payload if payload is not None else base64.b64encode(data).decode()
    return f"data:{media_type};base64,{encoded}"


class MediaPreparer:
    def __init__(self, settings: MediaSettings, fetcher: MediaFetcher | None = None) -> None:
        self._settings = settings
        self._fetcher = fetcher or MediaFetcher(
            AddressPolicy.from_lists(settings.fetch_allow, settings.fetch_deny),
            settings.fetch_timeout_seconds,
            settings.fetch_max_redirects,
        )
        self._decoding = asyncio.Semaphore(settings.decode_workers)
        self._image_limits = ImageLimits(
            settings.max_image_pixels, settings.min_image_side, settings.max_aspect_ratio
        )
        self._video_limits = VideoLimits(settings.max_video_seconds, settings.max_video_pixels)

    async def prepare(
        self, request: ChatRequest, default_detail: str, files: FileReader | None = None
    ) -> ChatRequest:
        """The request with every media part prepared; a refused part raises a 400.
        `files` resolves `stepfile://` URLs for the caller; without it they are refused."""
        if not request.has_media:
            return request
        places = [
            (position, index, part)
            for position, message in enumerate(request.messages)
            for index, part in enumerate(message.parts)
            if not isinstance(part, TextPart)
        ]
        tasks = [
            asyncio.ensure_future(
                self._prepare_part(
                    part, f"messages[{position}].content[{index}]", default_detail, files
                )
            )
            for position, index, part in places
        ]
        try:
            prepared = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        messages = [list(message.parts) for message in request.messages]
        for (position, index, _), part in zip(places, prepared, strict=True):
            messages[position][index] = part
        return replace(
            request,
            messages=tuple(
                replace(message, parts=tuple(parts)) if message.has_media else message
                for message, parts in zip(request.messages, messages, strict=True)
            ),
        )

    async def _prepare_part(
        self, part: MediaPart, param: str, default_detail: str, files: FileReader | None
    ) -> MediaPart:
        what = "image" if isinstance(part, ImagePart) else "video"
        try:
            if isinstance(part, ImagePart):
                return await self._image(part, part.detail or default_detail, files)
            return await self._video(part, files)
        except FetchFailed as error:
            raise invalid(f"the {what} at {param} could not be fetched: {error}", param) from None
        except MediaRejected as error:
            message = f"the {what} at {param} was refused: {error}"
            if error.unsupported:
                raise StepflashError(
                    ErrorKind.UNSUPPORTED_CONTENT,
                    message,
                    param=param,
                    code="unsupported_content_type",
                ) from None
            raise invalid(message, param) from None

    async def _load(
        self, url: str, kind: str, max_bytes: int, files: FileReader | None
    ) -> tuple[bytes | str, str | None]:
        """A remote URL's or a stored file's bytes, or a data URL as is (decoded off the loop,
        with the check). A stored file's bytes decide its type, as a data URL's do."""
        scheme = url[:12].lower()
        if scheme.startswith("data:"):
            return url, None
        if scheme.startswith(("http://", "https://")):
            fetched = await self._fetcher.fetch(url, max_bytes, (f"{kind}/",))
            return fetched.data, fetched.content_type
        if scheme.startswith(STEPFILE):
            return await _stored(url[len(STEPFILE) :], max_bytes, files), None
        raise MediaRejected("its URL must be http(s)://, data: or stepfile://")

    async def _checked(
        self,
        kind: str,
        url: str,
        max_bytes: int,
        check: Callable[[bytes, str | None], T],
        files: FileReader | None,
    ) -> tuple[T, bytes, str | None]:
        """(check's result, the bytes, the base64 text when they came as a data URL)."""
        source, declared = await self._load(url, kind, max_bytes, files)

        def run() -> tuple[T, bytes, str | None]:
            if isinstance(source, str):
                data, declared_type, payload = _decode_data_url(source, max_bytes)
                return check(data, declared_type), data, payload
            return check(source, declared), source, None

        async with self._decoding:
            return await asyncio.to_thread(run)

    async def _image(self, part: ImagePart, detail: str, files: FileReader | None) -> ImagePart:
        settings = self._settings
        long_side = GLOBAL_SIDE if detail == "low" else MAX_SIDE
        checked, data, payload = await self._checked(
            "image",
            part.url,
            settings.max_image_bytes,
            lambda data, declared: check_image(data, declared, self._image_limits, long_side),
            files,
        )
        tokens = (
            settings.low_detail_tokens
            if detail == "low"
            else image_tokens(checked.width, checked.height)
        )
        unchanged = checked.data is data
        url = _data_url(checked.media_type, checked.data, payload if unchanged else None)
        return ImagePart(url, detail, tokens)

    async def _video(self, part: VideoPart, files: FileReader | None) -> VideoPart:
        settings = self._settings
        checked, data, payload = await self._checked(
            "video",
            part.url,
            settings.max_video_bytes,
            lambda data, declared: check_video(data, declared, self._video_limits),
            files,
        )
        tokens = video_tokens(
            checked.seconds, settings.video_frames_per_second, settings.video_max_frames
        )
        return VideoPart(_data_url(checked.media_type, data, payload), tokens)

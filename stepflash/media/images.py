"""Check an image's bytes and prepare what the engine receives.

The bytes decide the format, not the label: Pillow identifies JPEG, PNG, WebP or GIF, and a
part whose declared type disagrees is refused. Dimensions are read from the header and
bounded before any pixel is decoded, so a decompression bomb costs nothing; the image is
then decoded once (JPEG at reduced scale) so a truncated or corrupt file is caught here,
not by the engine. Images larger than the model ever looks at are scaled down first.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from stepflash.media.rejection import MediaRejected

_MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
_NAMES = "JPEG, PNG, WebP or static GIF"


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_pixels: int
    min_side: int
    max_aspect_ratio: float


@dataclass(frozen=True, slots=True)
class CheckedImage:
    media_type: str
    width: int  # of `data`, after any scaling down
    height: int
    data: bytes


def _declared(media_type: str | None) -> str | None:
    if media_type is None:
        return None
    media_type = _ALIASES.get(media_type, media_type)
    if media_type not in _MEDIA_TYPES.values():
        raise MediaRejected(f"{media_type} is not supported; send {_NAMES}", unsupported=True)
    return media_type


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=tuple(_MEDIA_TYPES))
    except Image.DecompressionBombError as error:  # Pillow's own bound, above ours
        raise MediaRejected(
            f"it declares more than {limits.max_pixels:,} pixels (a decompression bomb?)"
        ) from error
    except Exception as error:  # Pillow raises many types for unreadable headers
        raise MediaRejected(f"the bytes are not a {_NAMES} image", unsupported=True) from error


def _check_geometry(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise MediaRejected(
            f"it is {width}x{height} pixels; the limit is {limits.max_pixels:,} pixels"
        )
    if min(width, height) < limits.min_side:
        raise MediaRejected(
            f"it is {width}x{height} pixels; each side must be at least {limits.min_side} px"
        )
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise MediaRejected(
            f"its aspect ratio ({width}x{height}) exceeds {limits.max_aspect_ratio:g}:1"
        )


def _decode(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Decode every byte (catching truncation); JPEG decodes straight at the reduced size."""
    if image.format == "JPEG":
        image.draft("RGB", size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as error:  # truncated data, bad checksums, broken streams
        raise MediaRejected(f"the image is corrupt or truncated ({error})") from error
    return image


def _scaled(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = long_side / max(width, height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def _encode(image: Image.Image, size: tuple[int, int], media_type: str) -> bytes:
    image = image.resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.convert("RGB").save(out, "JPEG", quality=90)
    elif media_type == "image/webp":
        image.save(out, "WEBP", quality=90)
    else:  # PNG, and static GIF as PNG (no palette loss)
        image.save(out, "PNG")
    return out.getvalue()


def check_image(
    data: bytes, declared_type: str | None, limits: ImageLimits, long_side: int
) -> CheckedImage:
    """Validate `data` and return what to send: the original bytes, or, when its longer side
    exceeds `long_side`, a re-encoding scaled down to it. Raises MediaRejected."""
    declared = _declared(declared_type)
    with _open(data, limits) as image:
        actual = _MEDIA_TYPES[image.format or ""]
        if declared is not None and declared != actual:
            raise MediaRejected(
                f"it is declared {declared} but the bytes are {actual}", unsupported=True
            )
        if getattr(image, "n_frames", 1) > 1:
            raise MediaRejected(
                "animated images are not supported; send a single frame", unsupported=True
            )
        _check_geometry(image, limits)
        width, height = image.size
        if max(width, height) <= long_side:
            _decode(image, (max(1, width // 8), max(1, height // 8)))
            return CheckedImage(actual, width, height, data)
        size = _scaled(width, height, long_side)
        encoded = _encode(_decode(image, size), size, actual)
    media_type = "image/png" if actual == "image/gif" else actual
    return CheckedImage(media_type, size[0], size[1], encoded)

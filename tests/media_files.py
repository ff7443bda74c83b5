"""Real media files made on the spot: images with Pillow, videos with PyAV (FFmpeg).

Pictures are gradients with a little structure, so every codec has real work to do and
the files stay small; hostile files are made the way an attacker would make them.
"""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import av
from PIL import Image, ImageChops, ImageDraw

IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
VIDEO_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime", "mkv": "video/x-matroska"}


def picture(width: int, height: int) -> Image.Image:
    """A smooth RGB gradient with diagonal stripes."""
    red = Image.linear_gradient("L").rotate(90).resize((width, height))
    green = Image.linear_gradient("L").resize((width, height))
    blue = Image.new("L", (width, height))
    draw = ImageDraw.Draw(blue)
    for start in range(-height, width, 32):
        draw.line([(start, 0), (start + height, height)], fill=200, width=8)
    return Image.merge("RGB", (red, green, blue))


def image_bytes(image_format: str, width: int, height: int) -> bytes:
    out = io.BytesIO()
    picture(width, height).save(out, image_format)
    return out.getvalue()


def animated_gif(width: int = 64, height: int = 64) -> bytes:
    frames = [picture(width, height), picture(width, height).rotate(90)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels, all zero: kilobytes that decode to gigabytes."""
    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def video_bytes(
    container: str = "mp4", seconds: float = 2.0, width: int = 160, height: int = 120, fps: int = 10
) -> bytes:
    """A short H.264 video with moving content, in an mp4, mov or mkv container."""
    out = io.BytesIO()
    with av.open(out, mode="w", format={"mkv": "matroska"}.get(container, container)) as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        base = picture(width, height)
        for index in range(round(seconds * fps)):
            frame = av.VideoFrame.from_image(ImageChops.offset(base, index * 4, 0))
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    return out.getvalue()

"""Photos in whatever form the app holds them, as the bytes of an image file to upload.

The service decodes JPEG, PNG, WebP, ... itself, so bytes and files are sent as they are (no
re-encoding: the same file gives the same bytes, which is what makes enrollment idempotent).
PIL images and numpy arrays are encoded as PNG (lossless); PIL is imported only for those, so
neither PIL nor numpy is a dependency of the client.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any, Union

__all__ = ["Photo", "photo_file"]

# bytes, a path, a binary file object, a PIL.Image.Image or a numpy array (H, W[, 3|4]) uint8.
Photo = Union[bytes, bytearray, memoryview, str, os.PathLike, IO[bytes], Any]  # noqa: UP007

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def _media_type(data: bytes) -> str:
    for magic, media in _MAGIC:
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _encode_png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def photo_file(photo: Photo, name: str = "photo") -> tuple[str, bytes, str]:
    """``(filename, bytes, media type)`` of ``photo``, as httpx's ``files=`` wants it."""
    if isinstance(photo, bytes | bytearray | memoryview):
        data = bytes(photo)
    elif isinstance(photo, str | os.PathLike):
        path = Path(photo)
        data = path.read_bytes()
        return path.name, data, _media_type(data[:16])
    elif hasattr(photo, "read"):
        data = photo.read()
        if not isinstance(data, bytes):
            raise TypeError("a file object given as a photo must be opened in binary mode")
    elif hasattr(photo, "save") and hasattr(photo, "mode"):  # PIL.Image.Image
        return f"{name}.png", _encode_png(photo), "image/png"
    elif hasattr(photo, "__array_interface__"):  # numpy array, (H, W) or (H, W, 3|4) uint8
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover - depends on the app's packages
            raise ImportError("sending a numpy array needs Pillow (pip install pillow)") from exc
        return f"{name}.png", _encode_png(Image.fromarray(photo)), "image/png"
    else:
        raise TypeError(
            f"cannot send a {type(photo).__name__} as a photo: give bytes, a path, a binary "
            "file, a PIL image or a numpy array"
        )
    return name, data, _media_type(data[:16])

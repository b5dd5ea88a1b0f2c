"""Decode uploaded image bytes into an upright RGB ``uint8`` array, safely.

Everything the HTTP layer receives from a client goes through :func:`decode_image` (raw bytes)
or :func:`decode_base64_image` (JSON bodies). Hostile input is expected, so:

* Only a small allow-list of Pillow plugins is ever consulted (:data:`ALLOWED_FORMATS`), so
  uploads never reach plugins such as EPS (which shells out to Ghostscript) or exotic parsers.
* The pixel count is read from the header and checked against ``max_pixels`` *before* the
  pixel data is decoded or any pixel buffer is allocated (decompression bombs). Pillow's own
  :class:`~PIL.Image.DecompressionBombError` (and its warning, if a warnings filter turns it into
  an error) is reported as :class:`ImageTooLarge`. Process-wide Pillow settings
  (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) are never modified here.
* Every failure is an :class:`ImageError` (a ``ValueError``) with a stable ``code`` string; no raw
  ``OSError``/``SyntaxError``/``struct.error``/... from Pillow escapes. ``MemoryError`` is the one
  exception deliberately passed through: it describes the process, not the upload.

The returned array is the upright view: the EXIF Orientation tag (1-8) is applied, alpha is
composited over white, and greyscale/palette/CMYK/YCbCr/LAB/HSV/16-bit/float images are converted
to 8-bit RGB (high-bit-depth data is rescaled, not clipped).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "Admit",
    "DecodeRefused",
    "DecodedImage",
    "EmptyImage",
    "ImageError",
    "ImageTooLarge",
    "InvalidBase64",
    "NotAnImage",
    "TruncatedImage",
    "UnsupportedImage",
    "decode_base64_image",
    "decode_image",
    "decode_reduced",
    "decoded_pixels",
    "image_sha256",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000

# Pillow plugin names that uploads may be parsed with. (Camera/phone JPEGs in the multi-picture
# format come back as MPO images: the JPEG plugin's factory produces them; the first picture is
# decoded.)
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

_EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------------------------- errors


class ImageError(ValueError):
    """Base class: the uploaded bytes are not a usable image. ``code`` is machine-readable."""

    code: ClassVar[str] = "invalid_image"


class EmptyImage(ImageError):
    """Zero bytes were uploaded."""

    code: ClassVar[str] = "empty_image"


class NotAnImage(ImageError):
    """The bytes are not an image in any supported format (or its header is unreadable)."""

    code: ClassVar[str] = "not_an_image"


class TruncatedImage(ImageError):
    """The header was understood but the pixel data is cut short or corrupt."""

    code: ClassVar[str] = "truncated_image"


class ImageTooLarge(ImageError):
    """The header declares more pixels than allowed (checked before decoding)."""

    code: ClassVar[str] = "image_too_large"


class UnsupportedImage(ImageError):
    """A readable image that cannot be turned into RGB (zero size, unknown pixel mode, ...)."""

    code: ClassVar[str] = "unsupported_image"


class InvalidBase64(ImageError):
    """A JSON image field is not valid base64 (or not a base64 ``data:`` URL)."""

    code: ClassVar[str] = "invalid_base64"


# ------------------------------------------------------------------------------------ public API


def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of the uploaded bytes (the key that makes enrolment idempotent)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB photo, possibly decoded at a reduced size.

    ``width`` x ``height`` is the full upright size the client sent; ``image`` may be
    smaller (a JPEG decoded with its DCT scaling, ``decode_reduced``): multiply its pixel
    coordinates by ``scale`` to answer in the client's.
    """

    image: np.ndarray
    width: int
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from ``image`` pixels to the client's photo."""
        return self.width / self.image.shape[1], self.height / self.image.shape[0]


# Chooses, from the upright (width, height), by how much a photo may be reduced: 1, 2, 4 or 8.
Reduction = Callable[[int, int], int]
# Told the number of pixels about to be decoded (after any reduction), before their buffer is
# allocated; may refuse by raising ``DecodeRefused`` (a memory budget across requests).
Admit = Callable[[int], None]


class DecodeRefused(Exception):
    """Raised by an ``Admit`` callback; passed through ``decode_reduced`` untouched."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image into an upright ``(H, W, 3)`` ``uint8`` RGB, C-contiguous array.

    Raises an :class:`ImageError` subclass for every kind of bad input. ``max_pixels`` bounds
    ``width * height`` (EXIF rotation does not change the count); it is checked from the header
    before the pixel data is decoded. Limits above Pillow's hard limit
    (``2 * PIL.Image.MAX_IMAGE_PIXELS``) cannot be honoured: such images also get
    :class:`ImageTooLarge`.
    """
    return decode_reduced(data, max_pixels).image


def decode_reduced(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduction: Reduction | None = None,
    admit: Admit | None = None,
) -> DecodedImage:
    """:func:`decode_image`, but a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size.

    ``reduction(width, height)`` says by how much the caller can do with less (the face
    detector shrinks a 12-megapixel photo anyway); libjpeg then skips the high frequencies
    instead of decoding every pixel, several times faster, and the full-size photo is never
    in memory. Other formats are decoded whole. Checks and errors as in ``decode_image``.
    ``admit`` is told the pixel count to be decoded, after the checks and before decoding.
    """
    with _opened(data, max_pixels, reduction) as (im, width, height):
        if admit is not None:
            admit(im.size[0] * im.size[1])  # draft() has set the reduced size
        _load(im)
        orientation = _orientation(im)  # other formats (TIFF) have it only once loaded
        rgb = _to_rgb(im)

    rgb = _apply_orientation(rgb, orientation)
    full_w, full_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return DecodedImage(np.ascontiguousarray(rgb, dtype=np.uint8), full_w, full_h)


def decoded_pixels(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, reduction: Reduction | None = None
) -> int:
    """How many pixels ``decode_reduced(data, max_pixels, reduction)`` would decode, from the
    header alone, with the same checks and errors: a memory budget can be taken before the
    decoding is handed to another process."""
    with _opened(data, max_pixels, reduction) as (im, _, _):
        return im.size[0] * im.size[1]


@contextmanager
def _opened(
    data: bytes, max_pixels: int, reduction: Reduction | None
) -> Iterator[tuple[Image.Image, int, int]]:
    """The upload's header parsed and checked, its reduced decode set (``_reduce``), with its
    full stored width and height. Whatever the body does to the image is under the same
    error mapping: image errors and refusals pass, anything else Pillow raises is a
    ``TruncatedImage``."""
    data = _checked_bytes(data, max_pixels)
    try:
        with _open(data) as im:
            width, height = _reduce(im, max_pixels, reduction)
            yield im, width, height
    except (ImageError, DecodeRefused):
        raise
    except MemoryError:
        raise
    except Exception as e:  # pragma: no cover - defensive: anything Pillow did not expect
        raise TruncatedImage(f"the image could not be decoded: {_describe(e)}") from e


def _checked_bytes(data: bytes, max_pixels: int) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, not {type(data).__name__}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    data = bytes(data)
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by some other code in this process; not by us
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated uploads "
            "will be decoded with missing pixels instead of being rejected"
        )
    return data


def _reduce(im: Image.Image, max_pixels: int, reduction: Reduction | None) -> tuple[int, int]:
    """Check an opened image's size and set its reduced decode (JPEG ``draft``); returns the
    full (stored, not upright) width and height."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise UnsupportedImage(f"the image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,}"
        )
    if reduction is not None and im.format in ("JPEG", "MPO"):
        # A JPEG's EXIF is parsed with its header, so the upright size is known here.
        turned = _orientation(im) in (5, 6, 7, 8)
        factor = reduction(*((height, width) if turned else (width, height)))
        if factor > 1:
            # draft() picks the largest DCT scale that still gives at least this size.
            im.draft("RGB", (-(-width // factor), -(-height // factor)))
    return width, height


def decode_base64_image(text: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a base64 image (standard or URL-safe alphabet, padding optional, whitespace
    ignored, optionally a ``data:image/...;base64,`` URL) with :func:`decode_image`."""
    return decode_image(b64decode_image(text), max_pixels=max_pixels)


def b64decode_image(text: str | bytes) -> bytes:
    """The raw bytes of a base64 image field; raises :class:`InvalidBase64` when malformed."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as e:
            raise InvalidBase64("base64 text must be ASCII") from e
    if not isinstance(text, str):
        raise InvalidBase64(f"expected a base64 string, got {type(text).__name__}")

    text = text.strip()
    if text[:5].lower() == "data:":
        header, sep, payload = text.partition(",")
        if not sep:
            raise InvalidBase64("malformed data: URL (no ',' before the payload)")
        if not header.lower().rstrip().endswith(";base64"):
            raise InvalidBase64("data: URLs must be base64-encoded (';base64,')")
        text = payload

    cleaned = re.sub(r"\s+", "", text)
    if not cleaned:
        raise EmptyImage("the image is empty (no base64 data)")
    if not cleaned.isascii():
        raise InvalidBase64("base64 text contains non-ASCII characters")
    # Accept both alphabets: '-'/'_' (URL-safe) map onto '+'/'/'.
    cleaned = cleaned.translate(_URLSAFE_TO_STD)
    body = cleaned.rstrip("=")
    if "=" in body:
        raise InvalidBase64("base64 padding '=' may only appear at the end")
    if len(body) % 4 == 1:
        raise InvalidBase64("base64 text has an impossible length (truncated?)")
    padded = body + "=" * (-len(body) % 4)
    if len(cleaned) > len(padded):
        raise InvalidBase64("base64 text has too much '=' padding")
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidBase64(f"invalid base64: {e}") from e
    if not raw:
        raise EmptyImage("the image is empty (0 bytes after base64 decoding)")
    return raw


_URLSAFE_TO_STD = str.maketrans("-_", "+/")


# ------------------------------------------------------------------------------------- internals


def _describe(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _open(data: bytes) -> Image.Image:
    """``Image.open`` restricted to the allowed plugins; only the header is parsed here."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own limit (never lower than ours by default). The warning only arrives as an
        # exception when a warnings filter escalates it.
        raise ImageTooLarge(f"the image is too large: {e}") from e
    except UnidentifiedImageError as e:
        raise NotAnImage(
            "not a recognised image (supported formats: JPEG, PNG, WebP, BMP, GIF, TIFF)"
        ) from e
    except MemoryError:
        raise
    except Exception as e:
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            # libwebp parses the whole container when the file is opened, so a cut-short
            # WebP fails here rather than in load().
            raise TruncatedImage(f"WebP data is truncated or corrupt: {_describe(e)}") from e
        raise NotAnImage(f"the image header could not be parsed: {_describe(e)}") from e


def _load(im: Image.Image) -> None:
    """Decode the pixel data (first frame), mapping every decoder failure to TruncatedImage."""
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"the image is too large: {e}") from e
    except MemoryError:
        raise
    except Exception as e:
        raise TruncatedImage(f"the image data is truncated or corrupt: {_describe(e)}") from e


def _orientation(im: Image.Image) -> int:
    """EXIF Orientation (1-8); 1 when absent, unreadable or out of range (hostile EXIF)."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except MemoryError:
        raise
    except Exception:
        return 1
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return 1
    value = int(value)
    return value if 1 <= value <= 8 else 1


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """The upright view of ``a`` (H, W, C) stored with EXIF ``orientation`` (same as Pillow's
    ``ImageOps.exif_transpose``)."""
    if orientation == 2:  # mirrored horizontally
        return a[:, ::-1]
    if orientation == 3:  # rotated 180
        return a[::-1, ::-1]
    if orientation == 4:  # mirrored vertically
        return a[::-1]
    if orientation == 5:  # transpose (mirror about the main diagonal)
        return a.transpose(1, 0, 2)
    if orientation == 6:  # needs 90 degrees clockwise
        return np.rot90(a, -1)
    if orientation == 7:  # transverse (mirror about the anti-diagonal)
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:  # needs 90 degrees counter-clockwise
        return np.rot90(a, 1)
    return a


_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_PLAIN_RGB_MODES = {"RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_UINT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _to_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a loaded image of any supported mode."""
    mode = im.mode
    has_key_transparency = im.info.get("transparency") is not None

    try:
        if mode in _ALPHA_MODES or (has_key_transparency and mode in {"P", "L", "1", "RGB"}):
            return np.asarray(_over_white(im))
        if mode == "RGB":
            return np.asarray(im)
        if mode in _PLAIN_RGB_MODES or mode == "P":
            return np.asarray(im.convert("RGB"))
        if mode in {"L", "1"}:
            return _grey_to_rgb(np.asarray(im.convert("L")))
        if mode in _UINT16_MODES:
            return _grey_to_rgb(_uint16_to_uint8(np.asarray(im)))
        if mode == "I":
            return _grey_to_rgb(_int32_to_uint8(np.asarray(im)))
        if mode == "F":
            return _grey_to_rgb(_float_to_uint8(np.asarray(im)))
    except (ImageError, DecodeRefused):
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise UnsupportedImage(
            f"could not convert the image (mode {mode!r}) to RGB: {_describe(e)}"
        ) from e
    raise UnsupportedImage(f"unsupported pixel mode {mode!r}")


def _over_white(im: Image.Image) -> Image.Image:
    """Composite an image with alpha (or a transparent palette/colour key) over white."""
    if im.mode == "La":  # premultiplied; Pillow only converts it to LA directly
        im = im.convert("LA")
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _uint16_to_uint8(a: np.ndarray) -> np.ndarray:
    """Full-range 16-bit -> 8-bit with rounding: ``round(v * 255 / 65535)`` (k * 257 -> k)."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _int32_to_uint8(a: np.ndarray) -> np.ndarray:
    """Mode ``I`` (int32). Pillow uses it for 16-bit greyscale (values 0..65535), which is the
    overwhelmingly common source, so that range is scaled as 16-bit; anything else (negative
    or wider values) is stretched linearly from its min..max."""
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 65535:
        return _uint16_to_uint8(a)
    return _stretch(a.astype(np.float64), float(lo), float(hi))


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    """Mode ``F`` (float32): [0, 1] is scaled by 255; [0, 255] is taken as 8-bit; [0, 65535] as
    16-bit; otherwise min..max is stretched. NaN becomes 0, infinities clip to the finite range."""
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if lo >= 0.0 and hi <= 1.0:
        return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if lo >= 0.0 and hi <= 65535.0:
        return np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return _stretch(a, lo, hi)


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)

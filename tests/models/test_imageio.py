"""models/imageio.py: bytes -> upright RGB uint8, with typed errors for hostile uploads.

Every test image is built here with Pillow/NumPy; nothing is read from committed files
(except the optional real photo from the ``shared_data`` fixture).
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from models import imageio
from models.imageio import (
    EmptyImage,
    ImageError,
    ImageTooLarge,
    InvalidBase64,
    NotAnImage,
    TruncatedImage,
    UnsupportedImage,
    decode_base64_image,
    decode_image,
    image_sha256,
)

# ----------------------------------------------------------------------------------- builders


def encode(image: Image.Image | np.ndarray, fmt: str, **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo_like(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth gradient with some noise: compresses like a photo (a real entropy-coded body)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2)
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def quadrants(h: int = 48, w: int = 64) -> tuple[np.ndarray, dict[str, tuple[int, int, int]]]:
    """Four solid-colour quadrants; returns the image and the colour expected at each centre."""
    colours = {
        "tl": (220, 30, 40),
        "tr": (30, 200, 60),
        "bl": (40, 60, 210),
        "br": (240, 230, 50),
    }
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = colours["tl"]
    a[: h // 2, w // 2 :] = colours["tr"]
    a[h // 2 :, : w // 2] = colours["bl"]
    a[h // 2 :, w // 2 :] = colours["br"]
    return a, colours


QUADRANT_CENTRES = {"tl": (0.25, 0.25), "tr": (0.25, 0.75), "bl": (0.75, 0.25), "br": (0.75, 0.75)}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def crafted_png(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR (correct CRC) claiming ``width x height`` RGB, and a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def zero_width_bmp() -> bytes:
    data = bytearray(encode(np.zeros((4, 4, 3), np.uint8), "BMP"))
    data[18:22] = struct.pack("<i", 0)  # BITMAPINFOHEADER biWidth
    return bytes(data)


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


def assert_rgb_contract(out: np.ndarray, shape: tuple[int, int] | None = None) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3
    assert out.flags["C_CONTIGUOUS"]
    if shape is not None:
        assert out.shape[:2] == shape


# --------------------------------------------------------------------------------- bad inputs

BAD_INPUTS = {
    "empty": (lambda: b"", EmptyImage),
    "text": (lambda: b"hello, this is definitely not an image\n" * 20, NotAnImage),
    "random-bytes": (lambda: np.random.default_rng(1).bytes(4096), NotAnImage),
    "jpeg-cut-at-50%": (
        lambda: truncated(encode(photo_like(), "JPEG", quality=90)),
        TruncatedImage,
    ),
    "png-cut-at-50%": (lambda: truncated(encode(photo_like(), "PNG")), TruncatedImage),
    "webp-cut-at-50%": (lambda: truncated(encode(photo_like(), "WEBP")), TruncatedImage),
    "bmp-cut-at-50%": (lambda: truncated(encode(photo_like(), "BMP")), TruncatedImage),
    "png-ihdr-50000x50000": (lambda: crafted_png(50_000, 50_000), ImageTooLarge),
    "png-ihdr-8000x6000": (lambda: crafted_png(8_000, 6_000), ImageTooLarge),  # > our 40M only
    "png-zero-width": (lambda: crafted_png(0, 10), (UnsupportedImage, NotAnImage)),
    "png-zero-height": (lambda: crafted_png(10, 0), (UnsupportedImage, NotAnImage)),
    "bmp-zero-width": (zero_width_bmp, (UnsupportedImage, NotAnImage)),
    # A real image in a format outside the allow-list is refused, not parsed.
    "ppm-not-allowed": (lambda: encode(photo_like(8, 8), "PPM"), NotAnImage),
    "eps-not-allowed": (
        lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        NotAnImage,
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_typed_error(name):
    make, expected = BAD_INPUTS[name]
    data = make()
    with pytest.raises(expected) as info:
        decode_image(data)
    err = info.value
    assert isinstance(err, ImageError) and isinstance(err, ValueError)
    assert err.code == type(err).code
    assert str(err)  # a human-readable message


@pytest.mark.parametrize(
    "cls, code",
    [
        (EmptyImage, "empty_image"),
        (NotAnImage, "not_an_image"),
        (TruncatedImage, "truncated_image"),
        (ImageTooLarge, "image_too_large"),
        (UnsupportedImage, "unsupported_image"),
        (InvalidBase64, "invalid_base64"),
    ],
)
def test_error_codes(cls, code):
    assert issubclass(cls, ImageError) and issubclass(cls, ValueError)
    assert cls.code == code


def test_decode_rejects_non_bytes_and_bad_limit():
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decode_image(encode(photo_like(8, 8), "PNG"), max_pixels=0)


def test_accepts_bytearray_and_memoryview():
    data = encode(photo_like(8, 8), "PNG")
    expected = decode_image(data)
    np.testing.assert_array_equal(decode_image(bytearray(data)), expected)
    np.testing.assert_array_equal(decode_image(memoryview(data)), expected)


# ------------------------------------------------------------------ decompression bombs / limits


@pytest.fixture
def load_spy(monkeypatch):
    """Records every pixel-data decode (ImageFile.load) so tests can assert none happened."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_huge_header_rejected_before_decoding(load_spy):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLarge):
        decode_image(crafted_png(50_000, 50_000))
    # Even a caller limit above Pillow's hard limit gets our typed error, not Pillow's.
    with pytest.raises(ImageTooLarge):
        decode_image(crafted_png(50_000, 50_000), max_pixels=10**12)
    assert load_spy == []
    assert before == Image.MAX_IMAGE_PIXELS  # process-wide Pillow state untouched


def test_our_limit_is_checked_from_header_before_decoding(load_spy):
    with pytest.raises(ImageTooLarge, match="48,000,000"):
        decode_image(crafted_png(8_000, 6_000))  # under Pillow's limit, over ours
    data = encode(photo_like(20, 20), "PNG")
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=399)
    assert load_spy == []
    assert decode_image(data, max_pixels=400).shape == (20, 20, 3)  # the limit is inclusive
    assert load_spy and set(load_spy) == {(20, 20)}


def test_pillow_bomb_warning_escalated_to_error_is_still_typed():
    # 10000x10000 = 1e8 pixels: above Pillow's warning threshold (~8.9e7), below its error one.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge):
            decode_image(crafted_png(10_000, 10_000), max_pixels=200_000_000)


def test_exif_rotation_does_not_change_pixel_count():
    data = encode(photo_like(10, 20), "JPEG", exif=_exif(6))
    assert decode_image(data, max_pixels=200).shape == (20, 10, 3)
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=199)


def test_truncated_images_are_not_silently_loaded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for fmt in ("JPEG", "PNG", "GIF", "TIFF"):
        with pytest.raises(TruncatedImage):
            decode_image(truncated(encode(photo_like(), fmt), 0.7))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ------------------------------------------------------------------------------- formats/modes


@pytest.mark.parametrize(
    "fmt, kwargs, tol",
    [
        ("JPEG", {"quality": 95}, 12),
        ("PNG", {}, 0),
        ("WEBP", {"quality": 90}, 16),
        ("WEBP", {"lossless": True}, 0),
        ("BMP", {}, 0),
        ("GIF", {}, 0),
        ("TIFF", {}, 0),
    ],
    ids=["jpeg", "png", "webp", "webp-lossless", "bmp", "gif", "tiff"],
)
def test_format_round_trip(fmt, kwargs, tol):
    original, colours = quadrants()
    out = decode_image(encode(original, fmt, **kwargs))
    assert_rgb_contract(out, original.shape[:2])
    h, w = original.shape[:2]
    for corner, (fy, fx) in QUADRANT_CENTRES.items():
        got = out[int(h * fy), int(w * fx)].astype(int)
        assert np.abs(got - colours[corner]).max() <= tol, (corner, got, colours[corner])
    if tol == 0:
        np.testing.assert_array_equal(out, original)


def test_animated_gif_and_webp_give_first_frame():
    first, _ = quadrants()
    second = 255 - first
    frames = [Image.fromarray(first), Image.fromarray(second)]
    for fmt, extra in (("GIF", {}), ("WEBP", {"lossless": True})):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, **extra)
        np.testing.assert_array_equal(decode_image(buf.getvalue()), first)


def test_multi_picture_jpeg_gives_first_picture():
    first, _ = quadrants()
    buf = io.BytesIO()
    Image.fromarray(first).save(
        buf, "MPO", save_all=True, append_images=[Image.fromarray(255 - first)], quality=95
    )
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    assert np.abs(decode_image(buf.getvalue()).astype(int) - first).mean() < 3


def test_greyscale_gives_three_equal_channels():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    out = decode_image(encode(Image.fromarray(ramp, "L"), "PNG"))
    assert_rgb_contract(out, (4, 256))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], ramp)


def test_bilevel_image():
    bits = np.zeros((8, 8), dtype=bool)
    bits[:, 4:] = True
    out = decode_image(encode(Image.fromarray(bits), "PNG"))
    np.testing.assert_array_equal(out[:, :4], 0)
    np.testing.assert_array_equal(out[:, 4:], 255)


def test_palette_without_transparency():
    original, _ = quadrants()
    pal = Image.fromarray(original).quantize(colors=4)
    data = encode(pal, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(decode_image(data), original)


def test_palette_with_transparency_is_composited_over_white():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.paste(1, (4, 0, 8, 8))
    data = encode(pal, "PNG", transparency=0)  # index 0 (black) is fully transparent
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = decode_image(data)
    np.testing.assert_array_equal(out[:, :4], 255)  # white, not the black palette entry
    assert (out[:, 4:] == (200, 10, 10)).all()


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[1] = (0, 0, 255, 255)  # opaque blue stays blue
    rgba[2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    rgba[3] = (17, 99, 180, 0)  # arbitrary hidden colour -> white
    for fmt in ("PNG", "WEBP", "TIFF"):
        kwargs = {"lossless": True} if fmt == "WEBP" else {}
        out = decode_image(encode(Image.fromarray(rgba, "RGBA"), fmt, **kwargs))
        np.testing.assert_array_equal(out[0], 255)
        np.testing.assert_array_equal(out[1], np.tile([0, 0, 255], (4, 1)))
        assert np.all(np.abs(out[2].astype(int) - 127) <= 1)
        np.testing.assert_array_equal(out[3], 255)


def test_greyscale_alpha_is_composited_over_white():
    la = np.zeros((2, 4, 2), dtype=np.uint8)
    la[0] = (50, 255)
    la[1] = (50, 0)
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_array_equal(out[0], 50)
    np.testing.assert_array_equal(out[1], 255)


def test_greyscale_colour_key_transparency():
    grey = np.full((2, 4), 50, dtype=np.uint8)
    grey[1] = 7
    out = decode_image(encode(Image.fromarray(grey, "L"), "PNG", transparency=7))
    np.testing.assert_array_equal(out[0], 50)
    np.testing.assert_array_equal(out[1], 255)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt):
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[:8] = (255, 0, 0, 0)  # cyan
    cmyk[8:] = (0, 0, 0, 255)  # black
    data = encode(Image.fromarray(cmyk, "CMYK"), fmt)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    tol = 6 if fmt == "JPEG" else 0
    assert np.abs(out[2, 2].astype(int) - (0, 255, 255)).max() <= tol
    assert np.abs(out[12, 12].astype(int) - (0, 0, 0)).max() <= tol


@pytest.mark.parametrize("mode", ["YCbCr", "LAB"])
def test_other_colour_spaces(mode):
    original, colours = quadrants()
    data = encode(Image.fromarray(original).convert(mode), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    out = decode_image(data)
    assert_rgb_contract(out, original.shape[:2])
    h, w = original.shape[:2]
    for corner, (fy, fx) in QUADRANT_CENTRES.items():
        got = out[int(h * fy), int(w * fx)].astype(int)
        assert np.abs(got - colours[corner]).max() <= 6, (corner, got)


def _ramp16() -> np.ndarray:
    return np.tile((np.arange(256, dtype=np.uint32) * 257).astype(np.uint16), (3, 1))


@pytest.mark.parametrize(
    "fmt, dtype, mode",
    [("PNG", "<u2", "I;16"), ("TIFF", "<u2", "I;16"), ("TIFF", ">u2", "I;16B")],
)
def test_16bit_ramp_maps_to_8bit_ramp(fmt, dtype, mode):
    ramp = _ramp16().astype(dtype)
    data = encode(Image.fromarray(ramp), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    out = decode_image(data)
    expected = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_16bit_values_are_scaled_not_clipped():
    values = np.array([[0, 300, 1000, 40000, 65535]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(out[0, :, 0], np.rint(values[0] / 257.0).astype(np.uint8))
    assert out[0, 3, 0] == 156  # 40000/65535*255, not clipped to 255


def test_32bit_int_and_float_modes():
    ints = _ramp16().astype(np.int32)
    data = encode(Image.fromarray(ints, "I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    np.testing.assert_array_equal(decode_image(data)[0, :, 0], np.arange(256))

    floats = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (3, 1))
    data = encode(Image.fromarray(floats, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    np.testing.assert_array_equal(decode_image(data)[0, :, 0], np.arange(256))

    wild = np.array([[-5.0, np.nan, 1e6, np.inf]], dtype=np.float32)
    out = decode_image(encode(Image.fromarray(wild, "F"), "TIFF"))
    assert_rgb_contract(out, (1, 4))
    assert out[0, 0, 0] == 0 and out[0, 2, 0] == 255


# -------------------------------------------------------------------------- EXIF orientation


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# How to *store* an upright image so that a viewer honouring EXIF Orientation=n shows it upright
# (the inverse of the display transform; Pillow's exif_transpose applies the display transform).
STORE_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # display: 90 degrees clockwise (ROTATE_270)
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # display: 90 degrees counter-clockwise (ROTATE_90)
}


def asymmetric_image(h: int = 30, w: int = 40) -> np.ndarray:
    """Distinct markers in three corners: every one of the 8 orientations looks different."""
    a = np.full((h, w, 3), 40, dtype=np.uint8)
    a[:8, :8] = (255, 0, 0)  # top-left: red square
    a[:6, -6:] = (0, 255, 0)  # top-right: green
    a[-4:, :4] = (0, 0, 255)  # bottom-left: blue
    return a


def stored_with_orientation(upright: np.ndarray, orientation: int) -> Image.Image:
    image = Image.fromarray(upright)
    if STORE_AS[orientation] is not None:
        image = image.transpose(STORE_AS[orientation])
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_exif_orientation_all_eight(fmt, orientation):
    upright = asymmetric_image()
    stored = stored_with_orientation(upright, orientation)
    kwargs = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    if fmt == "TIFF":
        kwargs["tiffinfo"] = {0x0112: orientation}
    else:
        kwargs["exif"] = _exif(orientation)
    data = encode(stored, fmt, **kwargs)

    out = decode_image(data)
    assert_rgb_contract(out, upright.shape[:2])
    # Independent check against Pillow's own EXIF handling.
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    if fmt == "JPEG":
        assert np.abs(out.astype(int) - upright).mean() < 3
        assert np.abs(out.astype(int) - reference).max() == 0
    else:
        np.testing.assert_array_equal(out, upright)
        np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize("bad_value", [0, 9, 65535])
def test_out_of_range_orientation_is_ignored(bad_value):
    upright = asymmetric_image()
    out = decode_image(encode(upright, "PNG", exif=_exif(bad_value)))
    np.testing.assert_array_equal(out, upright)


def test_garbage_exif_block_is_ignored():
    upright = asymmetric_image()
    data = encode(upright, "PNG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage")
    np.testing.assert_array_equal(decode_image(data), upright)


def test_rotated_astronaut_jpeg_comes_back_upright(astronaut):
    stored = np.rot90(astronaut)  # counter-clockwise; a viewer must turn it clockwise: tag 6
    data = encode(stored, "JPEG", quality=95, exif=_exif(6))
    out = decode_image(data)
    assert_rgb_contract(out, astronaut.shape[:2])
    diff_upright = np.abs(out.astype(int) - astronaut).mean()
    diff_stored = np.abs(out.astype(int) - stored).mean()
    assert diff_upright < 4, diff_upright
    assert diff_stored > 20, diff_stored  # the image really was rotated


def test_real_rgba_png(shared_data):
    path = shared_data / "people" / "misc" / "32bit.png"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data = path.read_bytes()
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        rgba = np.asarray(im)
    out = decode_image(data)
    assert_rgb_contract(out, rgba.shape[:2])
    alpha = rgba[..., 3:].astype(int)
    expected = (rgba[..., :3].astype(int) * alpha + 255 * (255 - alpha) + 127) // 255
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_real_jpeg_photo(shared_data):
    path = shared_data / "people" / "misc" / "obama-240p.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    out = decode_image(path.read_bytes())
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(out, expected)


# ----------------------------------------------------------------------------------- base64


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    # A PNG whose base64 text needs padding and uses '+' or '/' (so URL-safe text differs).
    for seed in range(100):
        data = encode(photo_like(13, 11, seed=seed), "PNG")
        std = base64.b64encode(data).decode()
        if std.endswith("=") and ("+" in std or "/" in std):
            return data
    raise AssertionError("no suitable PNG found")


def test_base64_variants_all_decode(png_bytes):
    expected = decode_image(png_bytes)
    std = base64.b64encode(png_bytes).decode()
    url = base64.urlsafe_b64encode(png_bytes).decode()
    assert std != url
    variants = [
        std,
        url,
        url.rstrip("="),
        f"data:image/png;base64,{std}",
        f"DATA:image/png;BASE64,{url.rstrip('=')}",
        "\n".join(std[i : i + 76] for i in range(0, len(std), 76)),  # MIME line breaks
        f"  {std}\n",
    ]
    for text in variants:
        np.testing.assert_array_equal(decode_base64_image(text), expected)
    np.testing.assert_array_equal(decode_base64_image(std.encode()), expected)  # bytes too


@pytest.mark.parametrize(
    "text",
    [
        "not base64 at all!!",
        "abcde",  # impossible length
        "ab=c",  # padding in the middle
        "QUJD====",  # too much padding
        "data:image/png,iVBORw0KGgo=",  # data URL that is not base64
        "data:image/png;base64",  # no comma
        "iVBORw0KGgo\u00e9",  # non-ASCII
    ],
)
def test_bad_base64(text):
    with pytest.raises(InvalidBase64) as info:
        decode_base64_image(text)
    assert info.value.code == "invalid_base64"


def test_base64_of_nothing_or_not_an_image():
    with pytest.raises(EmptyImage):
        decode_base64_image("")
    with pytest.raises(EmptyImage):
        decode_base64_image("data:image/png;base64,")
    with pytest.raises(NotAnImage):
        decode_base64_image(base64.b64encode(b"just some text, not pixels").decode())


def test_base64_respects_pixel_limit(png_bytes):
    with pytest.raises(ImageTooLarge):
        decode_base64_image(base64.b64encode(png_bytes).decode(), max_pixels=100)


def test_image_sha256():
    data = b"\x89PNG some bytes"
    assert image_sha256(data) == hashlib.sha256(data).hexdigest()
    assert len(image_sha256(b"")) == 64


# -------------------------------------------------------------------------------- robustness


def _seed_encodings() -> list[bytes]:
    small = photo_like(24, 32, seed=7)
    rgba = np.dstack([small, np.full(small.shape[:2], 128, np.uint8)])
    return [
        encode(small, "JPEG", quality=80),
        encode(small, "JPEG", quality=80, exif=_exif(6)),
        encode(small, "PNG"),
        encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        encode(Image.fromarray(small).quantize(16), "PNG", transparency=0),
        encode(small, "WEBP"),
        encode(small, "BMP"),
        encode(small, "GIF"),
        encode(small, "TIFF"),
    ]


SEEDS = _seed_encodings()
FUZZ_LIMIT = 2_000_000  # keeps corrupted headers from asking for big (allowed) buffers


def _decode_or_typed_error(data: bytes) -> None:
    try:
        out = decode_image(data, max_pixels=FUZZ_LIMIT)
    except ImageError as e:
        assert isinstance(e.code, str) and e.code
        return
    assert_rgb_contract(out)
    assert out.shape[0] * out.shape[1] <= FUZZ_LIMIT


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_image_errors(data):
    _decode_or_typed_error(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    flips=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)), max_size=12
    ),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
    header_bias=st.booleans(),
)
def test_mutated_encodings_only_raise_image_errors(seed, flips, cut, header_bias):
    data = bytearray(SEEDS[seed])
    for where, bit in flips:
        # Half the time aim at the first 64 bytes, where the headers and sizes live.
        span = min(64, len(data)) if header_bias else len(data)
        data[int(where * span)] ^= 1 << bit
    if cut is not None:
        data = data[: int(len(data) * cut)]
    _decode_or_typed_error(bytes(data))


def test_module_does_not_touch_global_pillow_settings():
    state = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for make, _ in BAD_INPUTS.values():
        with pytest.raises(ImageError):
            decode_image(make())
    decode_image(SEEDS[0])
    assert state == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert not hasattr(imageio, "MAX_IMAGE_PIXELS")

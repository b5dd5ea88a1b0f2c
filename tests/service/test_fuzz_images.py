"""Hypothesis throws random bytes and mutated real photos at the decoder and at POST /enroll.

Seeds: a real photo (scikit-image's astronaut, downscaled) written as baseline and progressive
JPEG (one with an EXIF orientation), and as RGB, RGBA, palette and 16-bit PNG. Mutations flip,
overwrite, insert, delete, duplicate and splice bytes, truncate, and patch the width/height
fields of the headers (the decompression-bomb path). Properties:

* ``decode_image`` returns an upright ``(h, w, 3)`` uint8 array within the pixel limit, or raises
  an ``ImageError``: never any other exception;
* ``POST /enroll`` answers 201/200 or a documented 4xx in the one error shape: never a 500,
  and the service still enrolls a good photo afterwards (the fuzzed legs use the fake pipeline:
  the decoder is the real one); one more leg runs the real detector, aligner and embedder on
  decodable odd shapes (1 px wide, very flat, tiny, noise or the photo squashed).

Bounded: fixed example counts, no deadline per example, pytest-timeout per test. Case counts
are printed (``-s``) for the closing note.
"""

from __future__ import annotations

import io
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.imageio import ImageError, decode_image
from tests.service.conftest import fake_photo

DECODE_EXAMPLES = 600
ENROLL_EXAMPLES = 250
BATCH_EXAMPLES = 60
REAL_PIPELINE_EXAMPLES = 40
MAX_PIXELS = 2_000_000
STATS: Counter[str] = Counter()
ENROLL_STATUSES = {200, 201, 400, 413, 415, 422}


def _encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    from skimage import data

    photo = Image.fromarray(np.ascontiguousarray(data.astronaut())).resize((96, 96))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    grey16 = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)  # mode I;16
    return {
        "jpeg": _encode(photo, "JPEG", quality=85),
        "jpeg-progressive-exif": _encode(photo, "JPEG", quality=70, progressive=True,
                                         exif=exif.tobytes()),
        "png-rgb": _encode(photo, "PNG"),
        "png-rgba": _encode(photo.convert("RGBA"), "PNG"),
        "png-palette": _encode(photo.convert("P"), "PNG"),
        "png-16bit-grey": _encode(grey16, "PNG"),
    }


SEEDS = _seeds()
SEED_NAMES = sorted(SEEDS)


def _patch_dimensions(data: bytes, width: int, height: int) -> bytes:
    """Write a claimed size into the header (PNG IHDR, JPEG SOF0/SOF2), pixels unchanged."""
    out = bytearray(data)
    if out.startswith(b"\x89PNG") and len(out) >= 24:
        out[16:24] = struct.pack(">II", width, height)
        return bytes(out)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = out.find(marker)
        if at >= 0 and at + 9 <= len(out):
            out[at + 5:at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
            break
    return bytes(out)


@st.composite
def mutated_photos(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(
            ["flip", "set", "insert", "delete", "duplicate", "splice", "truncate", "size"]))
        n = len(data)
        at = draw(st.integers(0, max(0, n - 1)))
        if kind == "flip" and n:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and n:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xD8, 0xD9]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 256))]
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 512))]
        elif kind == "splice":
            other = SEEDS[draw(st.sampled_from(SEED_NAMES))]
            cut = draw(st.integers(0, len(other)))
            data = data[:at] + bytearray(other[cut:])
        elif kind == "truncate":
            data = data[:at]
        else:
            big = st.integers(0, 70_000)
            data = bytearray(_patch_dimensions(bytes(data), draw(big), draw(big)))
    return bytes(data)


any_bytes = st.one_of(st.binary(max_size=4096), mutated_photos())


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print("\nimage fuzz cases: " + ", ".join(f"{k}={v}" for k, v in sorted(STATS.items())))


@pytest.mark.timeout(300)
@settings(max_examples=DECODE_EXAMPLES, deadline=None, derandomize=True)
@given(data=any_bytes)
def test_the_decoder_returns_an_image_or_an_image_error(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageError as exc:
        STATS[f"decode:{exc.code}"] += 1
        return
    STATS["decode:ok"] += 1
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.flags.c_contiguous and 0 < image.shape[0] * image.shape[1] <= MAX_PIXELS


@pytest.fixture(scope="module")
def enroll_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from service.api.app import create_app
    from service.config import Settings
    from tests.service.conftest import FakePipeline, wait_ready

    app = create_app(
        Settings(data_dir=tmp_path_factory.mktemp("fuzz"), max_image_pixels=MAX_PIXELS),
        pipeline_factory=lambda s: FakePipeline(),
    )
    with TestClient(app, raise_server_exceptions=True) as client:
        wait_ready(client)
        yield client


def _check_enroll(client: TestClient, data: bytes, subject: str, tag: str) -> None:
    r = client.post("/enroll", data={"subject_id": subject},
                    files={"image": ("upload", data, "application/octet-stream")})
    STATS[f"{tag}:{r.status_code}"] += 1
    assert r.status_code in ENROLL_STATUSES, r.text
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]


@pytest.mark.timeout(300)
@settings(max_examples=ENROLL_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes)
def test_enroll_never_fails_on_bad_images(enroll_client: TestClient, data: bytes) -> None:
    _check_enroll(enroll_client, data, "fuzzed", "enroll")


@pytest.mark.timeout(300)
@settings(max_examples=BATCH_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes)
def test_a_bad_image_in_a_batch_never_stops_the_good_one(
    enroll_client: TestClient, data: bytes
) -> None:
    """Whatever the fuzzed photo is, the good photo beside it is enrolled and the fuzzed one
    gets an outcome of its own (stored, or rejected with a code and a message)."""
    r = enroll_client.post("/enroll", data={"subject_id": "fuzzed-batch"}, files=[
        ("images", ("upload", data, "application/octet-stream")),
        ("images", ("p.png", fake_photo(4243), "image/png"))])
    STATS[f"batch:{r.status_code}"] += 1
    assert r.status_code in {200, 201}, r.text
    fuzzed, good = r.json()["images"]
    assert good["status"] in {"enrolled", "already_enrolled"} and good["face_id"]
    if fuzzed["status"] == "rejected":
        STATS[f"batch:{fuzzed['error']['code']}"] += 1
        assert fuzzed["error"]["code"] and fuzzed["error"]["message"] and not fuzzed["face_id"]
    else:
        assert fuzzed["face_id"]


def test_the_service_still_works_after_the_fuzzing(enroll_client: TestClient) -> None:
    assert enroll_client.get("/readyz").status_code == 200
    r = enroll_client.post("/enroll", data={"subject_id": "after-fuzz"},
                           files={"image": ("p.png", fake_photo(4242), "image/png")})
    assert r.status_code == 201, r.text


@st.composite
def odd_shapes(draw: st.DrawFn) -> bytes:
    """Decodable images of shapes a detector may not expect, from noise or the real photo."""
    w = draw(st.sampled_from([1, 2, 7, 31, 80, 150, 400, 3000]))
    h = draw(st.sampled_from([1, 2, 7, 31, 80, 150, 400]))
    if draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    else:
        image = Image.open(io.BytesIO(SEEDS["jpeg"])).convert("RGB").resize((w, h))
    return _encode(image, draw(st.sampled_from(["JPEG", "PNG"])))


@pytest.fixture(scope="module")
def real_client(face_pipeline: Any, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[TestClient]:
    from service.api.app import create_app
    from service.config import Settings
    from tests.service.conftest import wait_ready

    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("fuzz-real"),
                              max_image_pixels=MAX_PIXELS, inference_threads=1),
                     pipeline_factory=lambda s: face_pipeline)
    with TestClient(app, raise_server_exceptions=True) as client:
        wait_ready(client)
        yield client


@pytest.mark.slow
@pytest.mark.timeout(300)
@settings(max_examples=REAL_PIPELINE_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=odd_shapes())
def test_the_real_pipeline_survives_odd_shapes(
    real_client: TestClient, data: bytes
) -> None:
    _check_enroll(real_client, data, "fuzzed", "enroll-real")

"""SCRFD honours the request settings of the MMOD path: ``min_face_px``, ``upsample``,
``max_side``, the reduced JPEG decode, and ``face_crop``.

The detector is the tiny random-weight SCRFD of ``tests/onnx_nets.py`` in its ``bright``
form: a bright 32x32 square on the 32-pixel grid of its *input canvas* is one face, whose
box is that square and whose points are ArcFace's template scaled into it. So a square of
``32 / scale`` photo pixels is found exactly when the photo is scanned at ``scale``, and the
box and points it reports in photo pixels say whether the mapping back is right.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
pytest.importorskip("onnxruntime")

from models.backends.geometry import ARCFACE, ARCFACE_TEMPLATE_112, DLIB, face_width
from models.backends.onnx_file import add_model
from models.backends.scrfd import SCRFD_MIN_FACE_PX, load_scrfd, scan_scale
from models.faces import Box
from models.imageio import decode_image, decode_reduced
from models.pipeline import CHIP_FACE_PX, FacePipeline, chip_face_px
from tests.onnx_nets import export_embedder, export_scrfd


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A free-size detector (det_10g-like), a 640x640 one, and an ArcFace-style embedder."""
    src = tmp_path_factory.mktemp("scan-src")
    out = tmp_path_factory.mktemp("scan-models")
    add_model(export_scrfd(src / "dyn.onnx", bright=True, dynamic=True)[0], out, "scrfd",
              name="dyn")
    add_model(export_scrfd(src / "fixed.onnx", bright=True)[0], out, "scrfd", name="fixed")
    add_model(export_embedder(src / "arc.onnx", embedding_size=32)[0], out, "arcface",
              name="arc")
    return out


def _photo(h: int, w: int, square: tuple[int, int, int], seed: int | None = 0) -> np.ndarray:
    """A dark photo (noise, or flat with ``seed=None``) with one bright square ``(x, y,
    side)``."""
    if seed is None:
        img = np.full((h, w, 3), 20, np.uint8)
    else:
        img = np.random.default_rng(seed).integers(0, 40, (h, w, 3), dtype=np.uint8)
    x, y, side = square
    img[y : y + side, x : x + side] = 230
    return img


def _expected_points(x: float, y: float, side: float) -> np.ndarray:
    return np.array([x, y]) + ARCFACE_TEMPLATE_112 * side / 112


@pytest.mark.parametrize(
    ("kwargs", "scale"),
    [
        ({}, 640 / 1280),  # the letterbox to 640
        ({"upsample": 1}, 2 * 640 / 1280),
        ({"min_face_px": 64}, 16 / 64),  # shrunk: only large faces wanted
        ({"min_face_px": 8}, 16 / 8),  # grown: small faces wanted
        ({"min_face_px": 8, "max_side": 1600}, 1600 / 1280),  # max_side caps the scan
        ({"max_side": 320}, 320 / 1280),
    ],
)
def test_scan_scale_follows_the_request(kwargs: dict[str, int], scale: float) -> None:
    assert scan_scale(960, 1280, 640, **kwargs) == pytest.approx(scale)
    # A fixed 640x640 graph cannot see more than its canvas.
    assert scan_scale(960, 1280, 640, fixed_input=True, **kwargs) == pytest.approx(
        min(scale, 640 / 1280))


@pytest.mark.parametrize(
    ("size", "kwargs", "square"),
    [
        # (photo h, w), detect's keywords, the bright square (x, y, side) in the photo:
        # side = 32 / scale, placed on the canvas's 32 px grid.
        ((960, 1280), {}, (384, 192, 64)),  # letterbox: scale 0.5
        ((960, 1280), {"min_face_px": 64}, (256, 512, 128)),  # scale 0.25
        ((960, 1280), {"min_face_px": 32}, (640, 128, 64)),  # scale 0.5
        ((480, 360), {"min_face_px": 8}, (112, 240, 16)),  # scale 2: upsampled
        ((480, 360), {"upsample": 1}, (96, 144, 12)),  # 640/480 * 2 = 8/3
        ((960, 1280), {"min_face_px": 16, "max_side": 640}, (448, 320, 64)),  # capped: 0.5
    ],
)
def test_boxes_and_points_come_back_in_photo_pixels(
    model_dir: Path, size: tuple[int, int], kwargs: dict[str, int],
    square: tuple[int, int, int],
) -> None:
    det = load_scrfd(model_dir / "dyn.onnx", torch.device("cpu"))
    h, w = size
    x, y, side = square
    faces = det.detect(_photo(h, w, square), **kwargs)
    assert len(faces) == 1, faces
    box, _, points = faces[0]
    assert box.as_tuple() == (x, y, x + side - 1, y + side - 1)
    np.testing.assert_allclose(points, _expected_points(x, y, side), atol=1e-3)


def test_a_face_below_the_default_reach_is_found_when_min_face_px_asks(model_dir: Path) -> None:
    pipeline = FacePipeline(device="cpu", model="arc", detector="dyn", model_dir=model_dir)
    photo = _photo(960, 1280, (320, 160, 32))  # a 32 px face: 16 px at the letterbox's 0.5
    assert pipeline.detect(photo) == []
    faces = pipeline.detect(photo, min_face_px=32)  # scanned at 16/32: the face is 16 px...
    assert faces == []  # ...which this detector (32 px faces only) does not see
    faces = pipeline.detect(photo, min_face_px=16)  # scanned at 1: the face is 32 px
    assert [f.box.as_tuple() for f in faces] == [(320, 160, 351, 191)]
    assert pipeline.smallest_face(16, 1280, 960) == 16
    assert pipeline.smallest_face(None, 1280, 960) == SCRFD_MIN_FACE_PX * 1280 / 640
    # A 640x640 graph cannot grow the photo: the same request finds nothing there.
    fixed = FacePipeline(device="cpu", model="arc", detector="fixed", model_dir=model_dir)
    assert fixed.detect(photo, min_face_px=16) == []
    assert fixed.smallest_face(16, 1280, 960) == SCRFD_MIN_FACE_PX * 1280 / 640


def test_the_face_width_in_the_chip_is_the_geometrys() -> None:
    assert chip_face_px(DLIB) == pytest.approx(CHIP_FACE_PX)
    # ArcFace's eye distance (35.2 px) over dlib's template's (0.5255 of its square).
    assert chip_face_px(ARCFACE) == pytest.approx(face_width(ARCFACE))
    assert 60 < chip_face_px(ARCFACE) < 75


def test_decode_reduction_keeps_what_scrfd_and_the_chip_need(model_dir: Path) -> None:
    pipeline = FacePipeline(device="cpu", model="arc", detector="dyn", model_dir=model_dir)
    chip = chip_face_px(ARCFACE)
    # Defaults: a 4000 px photo letterboxed to 640 finds 100 px faces, which need 67 px.
    assert pipeline.decode_reduction(4000, 3000) == 1
    for m in (100, 200, 400, 800, 1600):
        factor = pipeline.decode_reduction(4000, 3000, m)
        assert m / factor >= chip  # the smallest wanted face keeps chip resolution
        assert 16 / m <= 1 / factor  # the decode still has the pixels SCRFD scans
        assert m / (2 * factor) < chip or factor == 8  # and no smaller decode would
    assert pipeline.decode_reduction(4000, 3000, 400) == 4


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_a_reduced_decode_gives_the_same_faces(model_dir: Path) -> None:
    pipeline = FacePipeline(device="cpu", model="arc", detector="dyn", model_dir=model_dir)
    # Scanned at 16/256: a 32 px face. A flat background: the full decode is sampled
    # without antialiasing, the reduced one is averaged by libjpeg, which differ on noise.
    photo = _photo(1536, 2048, (1024, 512, 512), seed=None)
    data = _jpeg(photo)
    decoded = decode_reduced(data, reduction=lambda w, h: pipeline.decode_reduction(w, h, 256))
    assert decoded.image.shape[:2] == (768, 1024)  # reduced by 2
    sx, sy = decoded.scale
    whole = pipeline.embed([decode_image(data)], min_face_px=256)[0]
    reduced = pipeline.embed([decoded.image], min_face_px=256 // 2)[0]  # its own pixels
    assert len(whole) == len(reduced) == 1
    a, b = whole[0], reduced[0].scaled(sx, sy)
    assert a.box.as_tuple() == (1024, 512, 1535, 1023)
    assert b.box.as_tuple() == a.box.as_tuple()
    np.testing.assert_allclose(b.landmarks, a.landmarks, atol=1.0)
    assert float(whole[0].embedding @ reduced[0].embedding) >= 0.99


class _NeedsContext:
    """A detector that, like real ones on very tight crops, finds a face only when there is
    background around it: the bounding box of the bright pixels, unless it touches the edge
    of the image."""

    input_size = 640

    def detect(self, image: np.ndarray, **_: object) -> list[tuple[Box, float, np.ndarray]]:
        ys, xs = np.nonzero(np.asarray(image)[:, :, 0] > 128)
        h, w = image.shape[:2]
        if len(xs) == 0 or xs.min() == 0 or ys.min() == 0 or xs.max() == w - 1 \
                or ys.max() == h - 1:
            return []
        box = Box(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        return [(box, 0.9, _expected_points(box.left, box.top, box.width))]


def test_face_crop_with_scrfd_retries_a_tight_crop_on_a_margin(model_dir: Path) -> None:
    pipeline = FacePipeline(device="cpu", model="arc", detector="dyn", model_dir=model_dir)
    # A loose crop (the face a small part of it): found as it is; the largest face wins.
    loose = _photo(640, 640, (288, 160, 32))
    loose[32:48, 32:48] = 230  # a smaller bright square: not on the grid, not a face
    faces = pipeline.detect_face_crop(loose)
    assert [f.box.as_tuple() for f in faces] == [(288, 160, 319, 191)]
    assert pipeline.align(loose, faces).shape == (1, 112, 112, 3)
    # Not a face: nothing, even on the margin.
    assert pipeline.detect_face_crop(np.zeros((200, 200, 3), np.uint8)) == []
    # A crop that is all face: found on the 35% black margin, mapped back to its pixels.
    pipeline.detector = _NeedsContext()
    crop = np.zeros((150, 120, 3), np.uint8)
    crop[:, 10:] = 230  # the face touches three edges
    assert pipeline.detect(crop) == []
    faces = pipeline.detect_face_crop(crop)
    assert [f.box.as_tuple() for f in faces] == [(10, 0, 119, 149)]
    np.testing.assert_allclose(faces[0].landmarks, _expected_points(10, 0, 110), atol=1e-9)


def test_face_crop_ignores_a_minimum_face_meant_for_photos(model_dir: Path) -> None:
    """A server minimum of 200 px scans a 640 px photo at 16/200: its 32 px face is lost;
    a face crop is scanned at the letterbox scale, where the face fills what it should."""
    pipeline = FacePipeline(device="cpu", model="arc", detector="dyn", model_dir=model_dir,
                            min_face_px=200)
    crop = _photo(640, 640, (288, 160, 32))
    assert pipeline.detect(crop) == []
    assert [f.box.as_tuple() for f in pipeline.detect_face_crop(crop)] == [(288, 160, 319, 191)]

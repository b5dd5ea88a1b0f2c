"""``min_face_px`` and the reduced JPEG decode: the faster scan finds what it promises.

The promise: every face at least ``min_face_px`` wide is found as at the defaults (the same
face, IoU >= 0.5 against the default's box), nothing much smaller is, the default itself
changes nothing, and a JPEG decoded at reduced size gives the same faces, in the client's
pixels, with the same embeddings.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.boxes import box_iou
from models.detector import WINDOW_PX, _downscale, detection_scale
from models.faces import Box, Face
from models.imageio import decode_image, decode_reduced
from models.pipeline import CHIP_FACE_PX, FacePipeline, upsampling_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(device="cpu")


def _iou(a: Box, b: Box) -> float:
    return float(box_iou(torch.tensor([a.as_tuple()]), torch.tensor([b.as_tuple()]))[0, 0])

def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


def test_scale_and_upsampling_arithmetic() -> None:
    assert detection_scale(480, 640, 2048, None) == 1.0
    assert detection_scale(480, 640, 2048, WINDOW_PX) == 1.0
    assert detection_scale(480, 640, 2048, 160) == 0.5
    assert detection_scale(3000, 4000, 2048, 100) == pytest.approx(2048 / 4000)
    assert detection_scale(3000, 4000, 2048, 400) == 0.2
    assert detection_scale(480, 640, None, 60, upsample=1) == pytest.approx(40 / 60)
    assert [upsampling_for(m) for m in (200, 80, 79, 40, 39, 20)] == [0, 0, 1, 1, 2, 2]


def test_the_default_is_the_detector_as_before(pipeline: FacePipeline, shared_data: Path) -> None:
    """Unset, 80 (the window) and the raw detector agree box for box on the labelled photos."""
    for path in sorted((shared_data / "detect").glob("*.jpg")):
        image = decode_image(path.read_bytes())
        raw = [b for b, _ in pipeline.detector.detect(image, max_side=pipeline.max_side)]
        assert [f.box for f in pipeline.detect(image)] == raw, path.name
        assert [f.box for f in pipeline.detect(image, WINDOW_PX)] == raw, path.name


@pytest.mark.parametrize("min_face", [120, 200])
def test_large_faces_are_still_found_and_small_ones_are_not(
    pipeline: FacePipeline, shared_data: Path, min_face: int
) -> None:
    photos = [shared_data / "detect" / "bald_guys.jpg",
              shared_data / "people" / "test" / "obama_and_biden.jpg",
              shared_data / "people" / "misc" / "obama-1080p.jpg",
              shared_data / "people" / "train" / "biden" / "biden2.jpg"]
    checked = 0
    for path in photos:
        image = decode_image(path.read_bytes())
        everything = pipeline.detect(image)
        fast = pipeline.detect(image, min_face)
        for face in everything:
            if face.box.width >= 1.25 * min_face:  # clear of the pyramid's 5/6 steps
                checked += 1
                assert max((_iou(face.box, f.box) for f in fast), default=0) >= 0.5, path.name
        # A face well under the minimum is not what the scan looks for.
        assert all(f.box.width >= 0.6 * min_face for f in fast), path.name
    assert checked >= 3


def test_below_the_window_means_upsampling(pipeline: FacePipeline, shared_data: Path) -> None:
    """min_face_px=40 finds the small VOC faces (most labelled ones are ~40 px) that the
    default misses."""
    small = default = 0
    for path in sorted((shared_data / "detect").glob("200*.jpg")):
        image = decode_image(path.read_bytes())
        small += sum(f.box.width < WINDOW_PX for f in pipeline.detect(image, 40))
        default += sum(f.box.width < WINDOW_PX for f in pipeline.detect(image))
    assert default == 0
    assert small >= 10


def test_the_float_shrink_cuda_uses_gives_the_same_pixels() -> None:
    """CUDA has no uint8 antialiased resize, so there the photo is shrunk in float32: the
    pixels must match the CPU's uint8 kernel to within one level, whatever the scale."""
    g = torch.Generator().manual_seed(0)
    photo = torch.randint(0, 256, (613, 917, 3), dtype=torch.uint8, generator=g)
    for scale in (0.9, 0.5, 0.33, 0.21):
        exact = _downscale(photo, scale)
        through_float = _downscale(photo, scale, through_float=True)
        assert through_float.dtype == torch.uint8 and through_float.shape == exact.shape
        assert int((through_float.int() - exact.int()).abs().max()) <= 1


def test_reduction_is_chosen_to_lose_nothing(pipeline: FacePipeline) -> None:
    assert pipeline.decode_reduction(4000, 3000) == 1  # the default scans 2048 px, 156 px faces
    assert pipeline.decode_reduction(640, 480, 200) == 2
    assert pipeline.decode_reduction(4000, 3000, 200) == 2
    assert pipeline.decode_reduction(4000, 3000, 400) == 4
    assert pipeline.decode_reduction(4000, 3000, 120) == 1
    for m in (100, 200, 400, 800, 1600):
        factor = pipeline.decode_reduction(4000, 3000, m)
        assert m / factor >= CHIP_FACE_PX  # the smallest wanted face keeps chip resolution


def test_a_reduced_decode_gives_the_same_faces(pipeline: FacePipeline, shared_data: Path) -> None:
    group = Image.open(shared_data / "people" / "test" / "obama_and_biden.jpg").convert("RGB")
    data = _jpeg(group.resize((4000, 2856), Image.LANCZOS))

    full = decode_image(data)
    decoded = decode_reduced(data, reduction=lambda w, h: pipeline.decode_reduction(w, h, 200))
    assert (decoded.width, decoded.height) == (4000, 2856)
    assert decoded.image.shape[:2] == (1428, 2000)  # libjpeg's 1/2 DCT scaling
    sx, sy = decoded.scale

    whole = pipeline.embed([full], min_face_px=200)[0]
    reduced = pipeline.embed([decoded.image], min_face_px=200 // 2)[0]  # its own pixels
    assert len(whole) == len(reduced) >= 2
    for a, b in zip(whole, reduced, strict=True):
        told = b.scaled(sx, sy)
        assert _iou(a.box, told.box) >= 0.9
        assert np.abs(told.landmarks - a.landmarks).max() < 0.02 * a.box.width
        assert float(a.embedding @ b.embedding) >= 0.99


def test_a_reduced_decode_respects_exif_rotation() -> None:
    """Orientation 6 (camera held sideways): the upright size is reported, and the factor is
    asked for with upright sides."""
    image = Image.new("RGB", (800, 400), (90, 120, 150))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(image, exif=exif)
    asked = []

    def reduction(w: int, h: int) -> int:
        asked.append((w, h))
        return 4

    decoded = decode_reduced(data, reduction=reduction)
    assert asked == [(400, 800)]
    assert (decoded.width, decoded.height) == (400, 800)
    assert decoded.image.shape[:2] == (200, 100)
    assert decoded.scale == (4.0, 4.0)


def test_other_formats_are_decoded_whole() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480)).save(buf, format="PNG")
    decoded = decode_reduced(buf.getvalue(), reduction=lambda w, h: 8)
    assert decoded.image.shape[:2] == (480, 640) and decoded.scale == (1.0, 1.0)


def test_scaled_faces_map_edges_and_points() -> None:
    face = Face(box=Box(10, 20, 29, 39), confidence=1.0,
                landmarks=np.array([[10.0, 20.0]] * 5))
    big = face.scaled(2.0, 2.0)
    assert big.box == Box(20, 40, 59, 79)  # 20 px wide -> 40 px wide
    assert big.landmarks[0].tolist() == [20.5, 40.5]  # pixel centre 10 -> centre of 20..21

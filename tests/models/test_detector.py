"""models/detector.py against ``dlib.cnn_face_detection_model_v1`` on the same photos.

dlib's CPU detector takes 1-3 s per VOC-sized photo (4x that with ``upsample=1``), so the
comparison uses a handful of photos; the dlib-free tests (max_side, recall, no faces) use
only our detector.
"""

from __future__ import annotations

import copy
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import dlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.detector import FaceDetector, TapSumConv, load_detector
from models.imageio import decode_image
from models.weights import dlib_model_path

MIN_IOU = 0.9  # measured: 1.0 (identical boxes) on every photo below
MAX_CONF_DIFF = 0.02  # measured: <= 4.3e-6

Det = tuple[tuple[int, int, int, int], float]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return load_detector(device="cpu")


@pytest.fixture(scope="module")
def dlib_cnn():
    return dlib.cnn_face_detection_model_v1(str(dlib_model_path("detector")))


def _load(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes())


def _ours(detector: FaceDetector, img: np.ndarray, **kwargs) -> list[Det]:
    return [(box.as_tuple(), conf) for box, conf in detector.detect(img, **kwargs)]


def _dlib(dlib_cnn, img: np.ndarray, upsample: int = 0) -> list[Det]:
    return [
        ((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), d.confidence)
        for d in dlib_cnn(img, upsample)
    ]


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """IoU of inclusive (l, t, r, b) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area - inter)


def _assert_same_detections(ours: list[Det], theirs: list[Det]) -> None:
    """Same count; a one-to-one matching with IoU >= MIN_IOU and close confidences."""
    assert len(ours) == len(theirs), (ours, theirs)
    used: set[int] = set()
    for box, conf in sorted(theirs, key=lambda d: -d[1]):
        candidates = [i for i in range(len(ours)) if i not in used]
        best = max(candidates, key=lambda i: _iou(ours[i][0], box))
        assert _iou(ours[best][0], box) >= MIN_IOU, (ours[best], box)
        assert abs(ours[best][1] - conf) <= MAX_CONF_DIFF, (ours[best], conf)
        used.add(best)
    # Both lists come sorted by confidence, best first.
    assert [c for _, c in ours] == sorted((c for _, c in ours), reverse=True)


def test_astronaut_matches_dlib(detector, dlib_cnn, astronaut):
    ours, theirs = _ours(detector, astronaut), _dlib(dlib_cnn, astronaut)
    assert len(theirs) == 1
    _assert_same_detections(ours, theirs)


# VOC photos where dlib finds faces without upsampling (the others have only ~40 px faces,
# where both return nothing at upsample 0; they are used at upsample 1 below).
VOC_PHOTOS = ["2008_001009.jpg", "2008_001322.jpg", "2008_002506.jpg", "2009_004587.jpg"]


@pytest.mark.parametrize("name", VOC_PHOTOS)
def test_voc_photo_matches_dlib(detector, dlib_cnn, shared_data, name):
    img = _load(shared_data / "detect" / name)
    theirs = _dlib(dlib_cnn, img)
    assert theirs, "the photo should hold faces dlib finds"
    _assert_same_detections(_ours(detector, img), theirs)


def test_upsample_matches_dlib(detector, dlib_cnn, shared_data):
    """Six ~40 px faces in an 80x270 strip (several cut by the border): found only after
    dlib's 2x pyramid_up, and mapped back to the original pixels like dlib does."""
    img = _load(shared_data / "detect" / "2008_004176.jpg")
    strip = np.ascontiguousarray(img[70:150, 100:370])
    assert _ours(detector, strip) == []  # too small without upsampling
    theirs = _dlib(dlib_cnn, strip, upsample=1)
    assert len(theirs) >= 5
    ours = _ours(detector, strip, upsample=1)
    _assert_same_detections(ours, theirs)
    assert any(box[3] >= strip.shape[0] for box, _ in ours)  # boxes are not clipped


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("out_c", "k"), [(1, 9), (3, 5), (2, 1)])
def test_the_tap_sum_convolution_equals_a_plain_one(channels_last: bool, out_c: int, k: int):
    """The score layer's matrix-product-and-fold form gives ``nn.Conv2d``'s values: a tap
    summed at the wrong offset (an unflipped kernel, a transposed plane) fails this, on
    rectangles smaller and larger than the kernel and a batch of two."""
    torch.manual_seed(k)
    conv = torch.nn.Conv2d(7, out_c, k, padding=k // 2).eval()
    tap = TapSumConv(7, out_c, k, padding=k // 2).eval()
    tap.load_state_dict(conv.state_dict())
    tap_bf16 = copy.deepcopy(tap).to(torch.bfloat16)
    for shape in [(2, 7, 13, 6), (1, 7, 3, 4), (1, 7, 40, 31)]:
        x = torch.randn(shape)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            torch.testing.assert_close(tap(x), conv(x), rtol=0, atol=2e-5)
            # bf16 (the screen): the products are bf16, the sums float32, the result bf16.
            half = tap_bf16(x.to(torch.bfloat16))
            assert half.dtype == torch.bfloat16
            torch.testing.assert_close(half.float(), conv(x), rtol=0.02, atol=0.1)


def test_dogs_have_no_faces(detector, shared_data):
    # dlib's answer on this photo is also no face (checked once; 6 s of CPU).
    assert _ours(detector, _load(shared_data / "detect" / "dogs.jpg")) == []


def test_no_face_in_noise_or_tiny_images(detector):
    rng = np.random.default_rng(0)
    assert _ours(detector, rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) == []
    for shape in [(1, 1, 3), (5, 5, 3), (30, 30, 3), (100, 20, 3), (0, 10, 3)]:
        assert _ours(detector, np.zeros(shape, np.uint8)) == []


def test_grey_image_is_replicated_to_rgb(detector, astronaut):
    grey = astronaut.mean(axis=2).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert _ours(detector, grey) == _ours(detector, rgb)
    assert len(_ours(detector, grey)) == 1


@pytest.mark.parametrize(
    "bad", [np.zeros((50, 50, 3), np.float32), np.zeros((50, 50, 4), np.uint8)]
)
def test_bad_image_raises(detector, bad):
    with pytest.raises(ValueError, match="image must be"):
        detector.detect(bad)


# ------------------------------------------------------------------------------- max_side


def _round_half_away(x: float) -> int:
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    """The documented ``max_side`` resize: antialiased bilinear (torch's uint8 kernel) to a
    longer side of max_side."""
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.tensor(img).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).numpy()


def test_max_side_maps_boxes_back(detector, shared_data):
    """Detecting a 1986x1545 photo with max_side=800 equals detecting the shrunk photo and
    scaling its boxes up by the factor (inclusive right/bottom edges scale as r+1)."""
    img = _load(shared_data / "detect" / "bald_guys.jpg")
    h, w = img.shape[:2]
    small = _shrink(img, 800)
    sx, sy = w / small.shape[1], h / small.shape[0]
    expected = [
        (
            (
                _round_half_away(left * sx),
                _round_half_away(top * sy),
                _round_half_away((right + 1) * sx) - 1,
                _round_half_away((bottom + 1) * sy) - 1,
            ),
            conf,
        )
        for (left, top, right, bottom), conf in _ours(detector, small)
    ]
    got = _ours(detector, img, max_side=800)
    assert len(got) >= 10  # a group photo
    assert [box for box, _ in got] == [box for box, _ in expected]
    np.testing.assert_allclose([c for _, c in got], [c for _, c in expected], atol=1e-5)
    assert max(box[2] for box, _ in got) > 1000  # in the original's pixels, not the small one's


def test_max_side_on_upscaled_astronaut(detector, astronaut):
    """The astronaut blown up 4x (2048 px) and detected with max_side=512 gives the original
    face box times 4 (measured: exactly)."""
    big = np.ascontiguousarray(np.repeat(np.repeat(astronaut, 4, axis=0), 4, axis=1))
    ((box, conf),) = _ours(detector, astronaut)
    ((big_box, big_conf),) = _ours(detector, big, max_side=512)
    scaled = (4 * box[0], 4 * box[1], 4 * box[2] + 3, 4 * box[3] + 3)
    assert _iou(big_box, scaled) >= 0.9
    assert abs(big_conf - conf) < 0.05
    # An image already within max_side is not touched.
    assert _ours(detector, astronaut, max_side=512) == [(box, conf)]


# --------------------------------------------------------------------------------- recall


def _labelled_faces(xml_path: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    out = {}
    for image in ET.parse(xml_path).getroot().iter("image"):
        boxes = []
        for b in image.iter("box"):
            if b.get("ignore") == "1":
                continue
            left, top = int(b.get("left")), int(b.get("top"))
            boxes.append(
                (left, top, left + int(b.get("width")) - 1, top + int(b.get("height")) - 1)
            )
        out[image.get("file")] = boxes
    return out


def test_recall_on_hand_labelled_faces(detector, shared_data):
    """Sanity check against people, not dlib: at upsample 1 (faces down to ~40 px) most
    labelled faces of dlib's VOC test set are found at IoU >= 0.5 (measured 24/25)."""
    labels = _labelled_faces(shared_data / "detect" / "testing.xml")
    found = total = 0
    for name, truth in labels.items():
        dets = [box for box, _ in _ours(detector, _load(shared_data / "detect" / name), upsample=1)]
        assert len(dets) <= len(truth) + 1  # no flood of false alarms
        total += len(truth)
        found += sum(max((_iou(t, d) for d in dets), default=0.0) >= 0.5 for t in truth)
    assert total >= 20
    assert found / total >= 0.8, f"{found}/{total}"

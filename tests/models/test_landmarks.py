"""models/landmarks.py against ``dlib.shape_predictor`` on the same boxes.

Boxes come from dlib's detectors (the CNN one where it is cheap enough, the HOG one on the
large people photos) and from a seeded generator of odd boxes: shifted, thin, tiny,
partly or wholly outside the image. dlib returns integer points and so do we; every point
must be within 1 px (measured: all identical, 0 px).
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest

from models.faces import Box
from models.imageio import decode_image
from models.landmarks import (
    ShapePredictor,
    _similarity_2x2,
    load_shape_predictor,
    similarity_linear_part,
)
from models.weights import dlib_model_path

MAX_PX = 1  # measured: 0 over every box below

BoxT = tuple[int, int, int, int]


@pytest.fixture(scope="module")
def predictor() -> ShapePredictor:
    return load_shape_predictor()


@pytest.fixture(scope="module")
def dlib_sp():
    return dlib.shape_predictor(str(dlib_model_path("landmarks")))


@pytest.fixture(scope="module")
def dlib_cnn():
    return dlib.cnn_face_detection_model_v1(str(dlib_model_path("detector")))


def _tuple(r: dlib.rectangle) -> BoxT:
    return (r.left(), r.top(), r.right(), r.bottom())


def _dlib_points(dlib_sp, img: np.ndarray, boxes: list[BoxT]) -> np.ndarray:
    out = []
    for box in boxes:
        shape = dlib_sp(img, dlib.rectangle(*box))
        out.append([(p.x, p.y) for p in shape.parts()])
    return np.asarray(out, dtype=np.float64).reshape(len(boxes), 5, 2)


def _assert_same_points(predictor, dlib_sp, img: np.ndarray, boxes: list[BoxT]) -> None:
    ours = predictor.predict(img, [Box(*b) for b in boxes])  # all faces in one call
    assert ours.shape == (len(boxes), 5, 2) and ours.dtype == np.float32
    theirs = _dlib_points(dlib_sp, img, boxes)
    diff = np.abs(ours - theirs)
    assert diff.max() <= MAX_PX, {b: d.max() for b, d in zip(boxes, diff, strict=True)}
    # Anything but an exact match would mean a changed computation, not rounding noise.
    assert (diff == 0).mean() >= 0.99


def test_astronaut_cnn_box(predictor, dlib_sp, dlib_cnn, astronaut):
    boxes = [_tuple(d.rect) for d in dlib_cnn(astronaut, 0)]
    assert len(boxes) == 1
    _assert_same_points(predictor, dlib_sp, astronaut, boxes)
    # An absolute anchor: the points the notes (section 4.4) give for this box.
    points = predictor.predict(astronaut, [Box(*boxes[0])])[0]
    assert points.tolist() == [[255, 104], [237, 105], [195, 101], [212, 103], [224, 135]]


CNN_PHOTOS = [  # small enough for dlib's CPU detector (~0.3-1.5 s each)
    "detect/2008_002506.jpg",
    "lfw/lfw-deepfunneled/Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
    "lfw/lfw-deepfunneled/Serena_Williams/Serena_Williams_0001.jpg",
    "lfw/lfw-deepfunneled/Gerhard_Schroeder/Gerhard_Schroeder_0001.jpg",
]
HOG_PHOTOS = [  # large photos: dlib's HOG detector gives their boxes in milliseconds
    "people/test/kit_with_rose.jpg",
    "people/test/obama_and_biden.jpg",
    "people/misc/two_people.jpg",
    "people/train/biden/biden2.jpg",
]


def test_real_photos(predictor, dlib_sp, dlib_cnn, shared_data: Path):
    hog = dlib.get_frontal_face_detector()
    faces = 0
    for rel in [*CNN_PHOTOS, *HOG_PHOTOS]:
        img = decode_image((shared_data / rel).read_bytes())
        if rel in CNN_PHOTOS:
            boxes = [_tuple(d.rect) for d in dlib_cnn(img, 0)]
        else:
            boxes = [_tuple(r) for r in hog(img, 0)]
        assert boxes, rel
        _assert_same_points(predictor, dlib_sp, img, boxes)
        grey = np.ascontiguousarray(img.mean(axis=2).astype(np.uint8))
        _assert_same_points(predictor, dlib_sp, grey, boxes[:1])
        faces += len(boxes)
    assert faces >= 12


def _odd_boxes(h: int, w: int, rng: np.random.Generator, n: int) -> list[BoxT]:
    """Boxes of every shape a caller might hand in, many crossing the border."""
    boxes = []
    for _ in range(n):
        bw = int(rng.integers(3, max(w, h)))
        bh = max(1, bw + int(rng.integers(-bw // 3, bw // 3 + 1)))
        left = int(rng.integers(-bw, w))
        top = int(rng.integers(-bh, h))
        boxes.append((left, top, left + bw - 1, top + bh - 1))
    return [
        *boxes,
        (100, 100, 100, 100),  # one pixel
        (100, 100, 99, 99),  # empty (right < left)
        (-500, -500, -400, -400),  # wholly outside
        (w + 10, h + 10, w + 90, h + 90),
        (-100, -50, w + 100, h + 200),  # larger than the image
        (200, 200, 201, 260),  # very thin
    ]


def test_synthetic_boxes(predictor, dlib_sp, astronaut):
    rng = np.random.default_rng(3)
    boxes = _odd_boxes(*astronaut.shape[:2], rng, 40)
    _assert_same_points(predictor, dlib_sp, astronaut, boxes)
    grey = np.ascontiguousarray(astronaut[:, :, 1])
    _assert_same_points(predictor, dlib_sp, grey, boxes[:20])


def test_shifted_face_boxes(predictor, dlib_sp, astronaut):
    """The real face box moved, grown and shrunk by a few pixels (odd sizes included)."""
    left, top, right, bottom = 168, 69, 263, 164
    boxes = [
        (left + dx, top + dy, right + dx + dr, bottom + dy + db)
        for dx, dy, dr, db in [(0, 0, 0, 0), (7, -5, 0, 0), (-13, 4, 3, 0), (2, 9, -7, 5),
                               (0, 0, 1, 1), (-40, -40, 40, 40), (20, 20, -20, -21)]
    ]  # fmt: skip
    _assert_same_points(predictor, dlib_sp, astronaut, boxes)


def test_batched_equals_single(predictor, astronaut):
    boxes = [Box(*b) for b in _odd_boxes(*astronaut.shape[:2], np.random.default_rng(5), 6)]
    together = predictor.predict(astronaut, boxes)
    alone = np.concatenate([predictor.predict(astronaut, [b]) for b in boxes])
    np.testing.assert_array_equal(together, alone)
    assert predictor.predict(astronaut, []).shape == (0, 5, 2)


@pytest.mark.parametrize(
    "image", [np.zeros((50, 50, 3), np.float32), np.zeros((50, 50, 4), np.uint8)]
)
def test_bad_image_raises(predictor, image):
    with pytest.raises(ValueError, match="image must be"):
        predictor.predict(image, [Box(0, 0, 10, 10)])


def test_the_cascade_similarity_equals_umeyama_on_any_shape(predictor):
    """The cascade's closed-form 2x2, with the initial shape centred once at load, against
    the SVD route (dlib's): rotated and scaled shapes, their mirror images (where Umeyama
    corrects a reflection) and collapsed ones agree to a few ulps of a double, far below the
    float32 the cascade casts to."""
    src = predictor.initial_shape.astype(np.float64)
    rng = np.random.default_rng(11)
    angle = rng.uniform(-np.pi, np.pi, 40)
    rot = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1),
                    np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    ordinary = (src @ rot.transpose(0, 2, 1)) * rng.uniform(0.5, 2.0, (40, 1, 1))
    ordinary += rng.normal(0, 0.01, ordinary.shape)
    mirrored = ordinary * np.array([-1.0, 1.0])
    collapsed = np.zeros((2, 5, 2)) + 0.3
    dst = np.concatenate([ordinary, mirrored, collapsed])
    fast = _similarity_2x2(src, predictor._src_centred, predictor._src_sigma, dst)
    np.testing.assert_allclose(fast, similarity_linear_part(src, dst), rtol=0, atol=1e-12)

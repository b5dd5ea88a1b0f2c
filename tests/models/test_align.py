"""models/align.py: ``extract_chips`` against ``dlib.get_face_chip(img, shape, 150, 0.25)``.

Both sides get the same integer landmarks (dlib's HOG detector and 5-point predictor, or
hand-made point sets), so only the chip extraction is compared: the similarity fit, the
corner-to-corner sampling grid, bilinear truncation, black outside the image, and for faces
wider than ~300 px dlib's ``pyramid_down<2>`` levels.
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest
import torch
from skimage import transform

from models.align import chip_details, chip_sampling, extract_chips
from models.imageio import decode_image
from models.weights import dlib_model_path

# Measured over every chip below: mean 0.000 and max 0 (bit-identical). The bounds leave
# room for a one-level truncation flip where another libm rounds a sample differently.
MAX_MEAN_DIFF = 0.05
MAX_ABS_DIFF = 1


@pytest.fixture(scope="module")
def dlib_landmarks():
    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(dlib_model_path("landmarks")))

    def points(img: np.ndarray) -> np.ndarray:
        shapes = [sp(img, r) for r in hog(img, 0)]
        return np.array([[(p.x, p.y) for p in s.parts()] for s in shapes], dtype=np.float64)

    return points


def _dlib_chips(img: np.ndarray, landmarks: np.ndarray, size: int, padding: float) -> np.ndarray:
    chips = []
    for pts in landmarks:
        parts = [dlib.point(int(x), int(y)) for x, y in pts]
        shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)
        chips.append(dlib.get_face_chip(img, shape, size=size, padding=padding))
    return np.stack(chips)


def _assert_chips_match(
    img: np.ndarray, landmarks: np.ndarray, size: int = 150, padding: float = 0.25
) -> torch.Tensor:
    ours = extract_chips(img, landmarks, size=size, padding=padding, device="cpu")
    assert ours.shape == (len(landmarks), size, size, 3) and ours.dtype == torch.uint8
    theirs = _dlib_chips(img, landmarks, size, padding)
    diff = np.abs(ours.numpy().astype(np.int16) - theirs.astype(np.int16))
    per_chip_mean = diff.reshape(len(landmarks), -1).mean(axis=1)
    assert per_chip_mean.max() < MAX_MEAN_DIFF, per_chip_mean
    assert diff.max() <= MAX_ABS_DIFF
    return ours


def _uses_pyramid(landmarks: np.ndarray, img: np.ndarray, size: int = 150) -> bool:
    h, w = img.shape[:2]
    return any(chip_sampling(d, h, w).level >= 0 for d in chip_details(landmarks, size=size))


def test_astronaut(astronaut, dlib_landmarks):
    pts = dlib_landmarks(astronaut)
    assert pts.shape == (1, 5, 2)
    _assert_chips_match(astronaut, pts)


@pytest.mark.parametrize("degrees", [30, -25])
def test_rotated_face(astronaut, dlib_landmarks, degrees: int):
    img = transform.rotate(astronaut, degrees, preserve_range=True).astype(np.uint8)
    img = np.ascontiguousarray(img)
    pts = dlib_landmarks(img)[:1]  # HOG's best box (it adds a weak false one at -25)
    assert len(pts) == 1
    angle = np.degrees(chip_details(pts)[0].angle)
    assert abs(angle) > 20  # the chip really is taken at an angle
    _assert_chips_match(img, pts)


def test_large_face_uses_pyramid(astronaut, dlib_landmarks):
    """A 4x upscaled astronaut: the chip rectangle is ~560 px, so both sides sample from a
    pyramid_down level, not from the full-resolution image."""
    big = np.ascontiguousarray(np.repeat(np.repeat(astronaut, 4, axis=0), 4, axis=1))
    pts = dlib_landmarks(astronaut) * 4 + 1.5
    assert _uses_pyramid(pts, big)
    _assert_chips_match(big, np.round(pts))


def _odd_landmarks(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    """One real point set moved over the borders, squeezed, blown up, mirrored, collapsed."""
    c = pts.mean(axis=0)
    sets = [
        pts - np.array([c[0] - 10, 0]),  # face centre near the left border
        pts + np.array([w - c[0] - 5, h - c[1] - 5]),  # near the bottom-right corner
        pts + 5000,  # wholly outside: an all-black chip
        (pts - c) * 0.1 + c,  # a tiny face
        (pts - c) * 6 + c,  # a huge face (pyramid levels) partly outside
        pts * np.array([-1, 1]) + np.array([w, 0]),  # mirrored point order
        np.repeat(pts[:1], 5, axis=0),  # all five points equal
    ]
    return np.round(np.stack(sets))


def test_odd_landmarks(astronaut, dlib_landmarks):
    pts = dlib_landmarks(astronaut)[0]
    sets = _odd_landmarks(pts, *astronaut.shape[:2])
    chips = _assert_chips_match(astronaut, sets)
    assert chips[2].max() == 0  # nothing of that chip lies in the image
    assert _uses_pyramid(sets, astronaut)


@pytest.mark.parametrize(("size", "padding"), [(40, 0.25), (151, 0.25), (150, 0.0), (200, 0.4)])
def test_other_sizes_and_paddings(astronaut, dlib_landmarks, size: int, padding: float):
    _assert_chips_match(astronaut, dlib_landmarks(astronaut), size=size, padding=padding)


REAL_PHOTOS = [
    "people/train/biden/biden2.jpg",  # a ~450 px face: pyramid path
    "people/test/obama1.jpg",  # ~370 px face: pyramid path
    "people/test/obama_and_biden.jpg",  # three faces
    "people/test/kit_with_rose.jpg",
    "detect/2008_002506.jpg",
    "lfw/lfw-deepfunneled/Serena_Williams/Serena_Williams_0001.jpg",
]


@pytest.fixture(scope="module")
def real_faces(shared_data: Path, dlib_landmarks) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for rel in REAL_PHOTOS:
        img = decode_image((shared_data / rel).read_bytes())
        pts = dlib_landmarks(img)
        assert len(pts), rel
        out.append((img, pts))
    return out


def test_real_photos(real_faces):
    assert sum(len(pts) for _, pts in real_faces) >= 9
    assert any(_uses_pyramid(pts, img) for img, pts in real_faces)
    for img, pts in real_faces:
        _assert_chips_match(img, pts)


def test_batched_equals_per_face(real_faces, astronaut, dlib_landmarks):
    """All faces of each image in one call (pyramid and direct ones mixed) equal one call
    per face, so a face's chip never depends on the other faces of its photo."""
    pts = dlib_landmarks(astronaut)[0]
    images = [*real_faces, (astronaut, _odd_landmarks(pts, *astronaut.shape[:2]))]
    batched, single = [], []
    for img, landmarks in images:
        batched.append(extract_chips(img, landmarks, device="cpu"))
        single += [extract_chips(img, one[None], device="cpu") for one in landmarks]
    assert torch.equal(torch.cat(batched), torch.cat(single))


def test_input_forms(astronaut, dlib_landmarks):
    pts = dlib_landmarks(astronaut)
    base = extract_chips(astronaut, pts, device="cpu")
    assert torch.equal(extract_chips(torch.from_numpy(astronaut), pts), base)
    assert torch.equal(extract_chips(astronaut, torch.from_numpy(pts)), base)
    assert torch.equal(extract_chips(astronaut, pts[0], device="cpu"), base)  # one (5, 2) set
    grey = np.ascontiguousarray(astronaut[:, :, 0])
    assert torch.equal(
        extract_chips(grey, pts, device="cpu"),
        extract_chips(np.repeat(grey[:, :, None], 3, axis=2), pts, device="cpu"),
    )
    assert extract_chips(astronaut, np.zeros((0, 5, 2)), device="cpu").shape == (0, 150, 150, 3)


@pytest.mark.parametrize(
    ("image", "landmarks"),
    [
        (np.zeros((50, 50, 3), np.float32), np.zeros((1, 5, 2))),
        (np.zeros((50, 50, 4), np.uint8), np.zeros((1, 5, 2))),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((1, 68, 2))),
    ],
)
def test_bad_input_raises(image, landmarks):
    with pytest.raises(ValueError):
        extract_chips(image, landmarks, device="cpu")

"""Face-quality measures on inputs whose answer is known: blur, rotation, mirroring, exposure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from models.align import FIVE_POINT_TEMPLATE
from models.faces import Box, Face
from models.quality import (
    CHIP_EYE_DISTANCE,
    DEFAULT_LIMITS,
    NOSE_DEPTH_RATIO,
    FaceQuality,
    assess,
    exposure,
    eye_distance,
    failed_limits,
    measure,
    pose,
    sharpness,
    verdict,
)

# The 5-point template as it lies in a 150 px chip with 25% padding (a frontal, level face).
CHIP_MARKS = (FIVE_POINT_TEMPLATE + 0.25) / 1.5 * 150


def textured_chip(seed: int = 0) -> np.ndarray:
    """A sharp 150x150 RGB chip: smooth shading plus fine detail, mid-grey on average."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:150, 0:150]
    shade = 120 + 40 * np.sin(x / 9.0) * np.cos(y / 13.0)
    detail = rng.normal(0, 25, size=(150, 150))
    grey = np.clip(shade + detail, 0, 255)
    rgb = np.stack([grey, grey * 0.9, grey * 0.8], axis=-1)
    return rgb.astype(np.uint8)


def blurred(chip: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(chip).filter(ImageFilter.GaussianBlur(sigma)))


def rotate(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    a = math.radians(degrees)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points - centre) @ r.T + centre


def mirror(points: np.ndarray, width: float) -> np.ndarray:
    """Landmarks of the mirrored photo, in the predictor's order (image-right eye first)."""
    flipped = points.copy()
    flipped[..., 0] = width - 1 - flipped[..., 0]
    return flipped[..., [2, 3, 0, 1, 4], :]


def test_blur_lowers_sharpness_step_by_step() -> None:
    chip = textured_chip()
    values = sharpness(np.stack([chip] + [blurred(chip, s) for s in (1, 2, 3, 5)]))
    assert np.all(np.diff(values) < 0), values
    assert values[0] > 0.5 and values[-1] < 0.2


def test_sharpness_ignores_brightness_contrast_and_colour() -> None:
    chip = textured_chip()
    grey = np.repeat(chip.astype(np.float32).mean(axis=-1, keepdims=True), 3, axis=-1)
    dimmer = (chip.astype(np.float32) * 0.6 + 30).astype(np.uint8)
    base, *others = sharpness(np.stack([chip, dimmer, grey.astype(np.uint8)]))
    for value in others:
        assert value == pytest.approx(base, abs=0.03)


def test_a_flat_chip_has_no_sharpness() -> None:
    assert sharpness(np.full((1, 150, 150, 3), 128, np.uint8))[0] == 0.0


def test_eye_distance_of_the_chip_template_is_the_chip_eye_distance() -> None:
    assert eye_distance(CHIP_MARKS[None])[0] == pytest.approx(CHIP_EYE_DISTANCE)
    assert round(CHIP_EYE_DISTANCE, 1) == 52.5
    assert eye_distance(CHIP_MARKS[None] * 0.4)[0] == pytest.approx(0.4 * CHIP_EYE_DISTANCE)


@pytest.mark.parametrize("degrees", [-35.0, -10.0, 0.0, 12.5, 40.0])
def test_rotated_landmarks_give_that_roll_and_no_yaw(degrees: float) -> None:
    marks = rotate(CHIP_MARKS, degrees, np.array([75.0, 75.0]))
    yaw, roll = pose(marks[None])
    # The template is level and its nose is midway between the eyes to within 0.05 degrees.
    assert roll[0] == pytest.approx(degrees, abs=0.1)
    assert yaw[0] == pytest.approx(0.0, abs=0.2)


def test_nose_offset_gives_the_model_yaw_and_mirroring_flips_it() -> None:
    marks = CHIP_MARKS.copy()
    half = CHIP_EYE_DISTANCE / 2
    marks[4, 0] += 0.5 * half  # nose base half an eye-half-distance toward the image's right
    turned = rotate(marks, 15.0, np.array([75.0, 75.0]))  # roll must not change the yaw
    yaw, roll = pose(np.stack([marks, turned, mirror(turned, 150)]))
    expected = math.degrees(math.atan(0.5 / NOSE_DEPTH_RATIO))
    assert yaw[0] == pytest.approx(expected, abs=0.2)
    assert yaw[1] == pytest.approx(expected, abs=0.2) and roll[1] == pytest.approx(15, abs=0.1)
    assert yaw[2] == pytest.approx(-expected, abs=0.2) and roll[2] == pytest.approx(-15, abs=0.1)


def test_exposure_of_dark_bright_and_flat_chips() -> None:
    chip = textured_chip()
    dark = (chip.astype(np.float32) * 0.05).astype(np.uint8)
    bright = np.clip(chip.astype(np.float32) * 3, 0, 255).astype(np.uint8)
    flat = np.full_like(chip, 128)
    e = exposure(np.stack([chip, dark, bright, flat]))
    assert 0.35 < e["brightness"][0] < 0.55 and e["dark_share"][0] < 0.01
    assert e["brightness"][1] < 0.05 and e["dark_share"][1] > 0.9 and e["contrast"][1] < 0.02
    assert e["brightness"][2] > 0.9 and e["bright_share"][2] > 0.8
    assert e["brightness"][3] == pytest.approx(128 / 255, abs=0.003)
    assert e["contrast"][3] == 0.0
    assert e["dark_share"][3] == 0.0 and e["bright_share"][3] == 0.0


def test_measure_is_per_face_and_assess_matches_it() -> None:
    chips = np.stack([textured_chip(0), blurred(textured_chip(1), 3)])
    marks = np.stack([CHIP_MARKS, rotate(CHIP_MARKS, 20, np.array([75.0, 75.0])) * 0.5])
    values = measure(np.array([1.05, 0.4]), marks, chips)
    single = measure(np.array([0.4]), marks[1:], chips[1:])
    for name, column in values.items():
        assert column.shape == (2,)
        assert column[1] == pytest.approx(single[name][0])
    faces = [Face(Box(0, 0, 99, 99), c, m) for c, m in zip([1.05, 0.4], marks, strict=True)]
    assessed = assess(faces, chips)
    assert [q.detection_confidence for q in assessed] == [1.05, 0.4]
    assert assessed[1].roll == pytest.approx(20, abs=0.1)
    assert assessed[1].sharpness == pytest.approx(values["sharpness"][1])
    assert assess([], np.zeros((0, 150, 150, 3), np.uint8)) == []


def quality(**changes: float) -> FaceQuality:
    fine = dict(eye_distance=45.0, sharpness=0.45, yaw=5.0, roll=2.0, detection_confidence=1.05,
                brightness=0.5, contrast=0.15, dark_share=0.0, bright_share=0.0)
    return FaceQuality(**{**fine, **changes})


def test_limits_name_the_measure_value_and_bound() -> None:
    assert failed_limits(quality(), DEFAULT_LIMITS) == []
    assert verdict(quality()) == "high"
    [blur] = failed_limits(quality(sharpness=0.1), DEFAULT_LIMITS)
    assert (blur.measure, blur.value, blur.bound) == ("sharpness", 0.1, "min")
    assert blur.limit == DEFAULT_LIMITS.min_sharpness
    [turned] = failed_limits(quality(yaw=-70.0), DEFAULT_LIMITS)
    assert (turned.measure, turned.value, turned.bound) == ("yaw", 70.0, "max")
    assert verdict(quality(yaw=-70.0)) == "low"
    # Between the enrollment limit and the "no effect measured" bound.
    assert verdict(quality(eye_distance=28.0)) == "medium"


@pytest.fixture(scope="module")
def pipeline() -> Any:
    from models.pipeline import FacePipeline

    return FacePipeline(device="cpu")


def test_a_real_turned_face_and_its_mirror_have_opposite_yaw(
    pipeline: Any, shared_data: Path
) -> None:
    # Abdoulaye Wade, photo 3, is turned about a third of the way to profile.
    path = shared_data / "lfw" / "lfw-deepfunneled" / "Abdoulaye_Wade" / "Abdoulaye_Wade_0003.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    image = np.asarray(Image.open(path).convert("RGB"))
    results = []
    for img in (image, np.ascontiguousarray(image[:, ::-1])):
        faces = pipeline.detect(img)
        face = min(faces, key=lambda f: abs((f.box.left + f.box.right) / 2 - 125))
        results.append(assess([face], pipeline.align(img, [face]))[0])
    plain, mirrored = results
    assert plain.yaw > 20 and mirrored.yaw < -20
    assert plain.yaw == pytest.approx(-mirrored.yaw, abs=8), (plain.yaw, mirrored.yaw)
    assert plain.sharpness == pytest.approx(mirrored.sharpness, abs=0.03)
    # The predictor is not mirror-symmetric: its points move by a few pixels.
    assert plain.eye_distance == pytest.approx(mirrored.eye_distance, rel=0.15)


def _head(yaw_degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """(dlib5, arcface5) points of one synthetic head turned by ``yaw_degrees`` (weak
    perspective), then scaled, rolled and moved in the image. The head in millimetres (x to
    the image's right, y down, z toward the camera): eye corners at 17 and 45 mm from the
    midline (centres at 31), the nose base (subnasale) 48 mm below the eyes and 25 mm in
    front of them, the nose tip 35 mm below and 45 mm in front, mouth corners 25 mm out,
    70 mm below, 10 mm in front."""
    a = math.radians(yaw_degrees)

    def project(x: float, y: float, z: float) -> tuple[float, float]:
        return x * math.cos(a) + z * math.sin(a), y

    dlib5 = np.array([project(45, 0, 0), project(17, 0, 0), project(-45, 0, 0),
                      project(-17, 0, 0), project(0, 48, 25)])
    arcface5 = np.array([project(-31, 0, 0), project(31, 0, 0), project(0, 35, 45),
                         project(-25, 70, 10), project(25, 70, 10)])
    shift = np.array([300.0, 200.0])
    return (rotate(dlib5 * 1.7, 12.0, np.zeros(2)) + shift,
            rotate(arcface5 * 1.7, 12.0, np.zeros(2)) + shift)


@pytest.mark.parametrize("yaw_degrees", [0.0, 10.0, -20.0, 30.0])
def test_one_head_pose_reads_one_yaw_under_both_landmark_schemes(yaw_degrees: float) -> None:
    dlib5, arcface5 = _head(yaw_degrees)
    yaw_dlib, roll_dlib = pose(dlib5[None], "dlib5")
    yaw_arc, roll_arc = pose(arcface5[None], "arcface5")
    assert yaw_arc[0] == pytest.approx(yaw_dlib[0], abs=1.0)
    assert yaw_dlib[0] == pytest.approx(yaw_degrees, abs=1.5)
    assert roll_arc[0] == pytest.approx(roll_dlib[0], abs=1e-6)


def test_the_templates_read_frontal_under_their_schemes() -> None:
    from models.backends.geometry import ARCFACE_TEMPLATE_112

    yaw, _ = pose(FIVE_POINT_TEMPLATE[None] * 150, "dlib5")
    assert yaw[0] == pytest.approx(0.0, abs=1e-9)
    yaw, _ = pose(ARCFACE_TEMPLATE_112[None], "arcface5")
    assert yaw[0] == pytest.approx(0.0, abs=1e-9)
    # The nose tip moves further than the base for the same turn: read with the base's
    # depth, a 30 degree turn of the head above would read over 40 degrees.
    _, arcface5 = _head(30.0)
    right, left = arcface5[1], arcface5[0]
    half = np.linalg.norm(right - left) / 2
    offset = (arcface5[2] - (right + left) / 2) @ ((right - left) / (2 * half)) / half
    assert math.degrees(math.atan(abs(offset) / NOSE_DEPTH_RATIO)) > 40

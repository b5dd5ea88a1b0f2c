"""Face quality: how much a detected face can be trusted, from what the pipeline already has.

Every measure is computed from a face's detection confidence, its 5 dlib landmarks (image
pixels) and its aligned 150x150 chip; nothing is detected or embedded again, so quality costs
a few milliseconds per face. All functions are vectorised over faces (leading axis ``N``).

Landmark order (dlib's 5-point predictor, ``models/landmarks.py``): 0 and 1 are the outer and
inner corner of the eye on the image's right, 2 and 3 the outer and inner corner of the eye on
the image's left, 4 the base of the nose.

The measures, and why each is defined the way it is:

* ``eye_distance``: pixels between the two eye centres in the photo. The aligner puts the
  eye centres :data:`CHIP_EYE_DISTANCE` (52.5) px apart in the chip, so a face with fewer
  pixels between its eyes is upsampled into the chip and has less detail than the embedder
  was trained on.
* ``sharpness``: ``1 - blur`` where ``blur`` is the no-reference re-blur measure of Crete et
  al. (2007) on the grey face region of the chip: the share of neighbouring-pixel variation
  that survives a 9-pixel box blur. It is a ratio, so it does not change when the face is
  darker, brighter, lower in contrast or grey: only loss of detail moves it (0 = flat).
* ``yaw`` / ``roll``: head pose in degrees from the landmarks. Roll is the angle of the line
  between the eye centres (positive: the eye on the image's right is lower); the alignment
  rotates it away exactly, so it costs nothing unless the detector misses the face. Yaw comes
  from how far the nose base sits off the eye midpoint along the eye line (weak perspective,
  nose base :data:`NOSE_DEPTH_RATIO` half-eye-distances in front of the eye plane); positive
  when the nose points to the image's right. Mirroring a photo flips its sign. SCRFD's
  points (``arcface5``) have the nose tip instead, further forward: it is read against its
  own depth (:data:`NOSE_DEPTHS`), so a head pose reads the same yaw under both schemes.
* ``detection_confidence``: the detector's score (dlib's CNN detector keeps scores > 0).
* exposure of the grey face region: ``brightness`` (mean, 0-1), ``contrast`` (standard
  deviation, 0-1), ``dark_share`` and ``bright_share`` (fraction of pixels at most
  :data:`DARK_LEVEL` or at least :data:`BRIGHT_LEVEL` of 255, where detail is gone).

The face region is the chip square the 5-point template's unit square maps to, shrunk by 5%
of its side on each edge (chip pixels 30..119): the eyes, nose, mouth and cheeks, without the
background and hair that the 25% padding adds around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np

from models.align import FIVE_POINT_TEMPLATE
from models.backends.geometry import (
    ARCFACE_TEMPLATE_112,
    DLIB,
    ChipGeometry,
    eye_centres,
    face_region,
    nose_point,
)
from models.faces import Face

__all__ = [
    "CHIP_EYE_DISTANCE",
    "DEFAULT_LIMITS",
    "FRONTAL_NOSE_OFFSETS",
    "HIGH_LIMITS",
    "MEASURES",
    "NOSE_DEPTHS",
    "FaceQuality",
    "LimitFailure",
    "QualityLimits",
    "Verdict",
    "assess",
    "blur_score",
    "exposure",
    "eye_distance",
    "failed_limits",
    "measure",
    "pose",
    "sharpness",
    "verdict",
]

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # models.pipeline.CHIP_PADDING
# Eye-centre distance of the 5-point template in chip pixels: 150 * 0.5255 / 1.5 = 52.5.
CHIP_EYE_DISTANCE = float(
    CHIP_SIZE
    * (FIVE_POINT_TEMPLATE[0:2, 0].mean() - FIVE_POINT_TEMPLATE[2:4, 0].mean())
    / (1 + 2 * CHIP_PADDING)
)
# Face region of the chip: template unit square [0.05, 0.95] -> chip pixels.
_REGION = slice(
    round((0.05 + CHIP_PADDING) / (1 + 2 * CHIP_PADDING) * CHIP_SIZE),
    round((0.95 + CHIP_PADDING) / (1 + 2 * CHIP_PADDING) * CHIP_SIZE),
)
# Depth of the nose base in front of the eye plane, in half eye distances: with weak
# perspective the nose base's offset along the eye line is ``NOSE_DEPTH_RATIO * tan(yaw)``
# half eye distances. Mean-face anthropometry puts the eye centres ~31 mm from the midline and
# dlib's nose-base point some 20-25 mm in front of them (0.65-0.8). 0.8 is taken because on
# four LFW photos judged by eye (one frontal, three turned ~25-35 degrees) 0.6 read about 30%
# high. The angle is a guide, not a measurement: the offset is what the landmarks give.
NOSE_DEPTH_RATIO = 0.8
# Yaw at which the nose base projects under an eye centre (offset of one half eye distance):
# the far eye's inner corner is then behind the nose, the predictor places points it cannot
# see, and a frontal 5-point similarity alignment no longer fits the face.
YAW_NOSE_UNDER_EYE = float(np.degrees(np.arctan(1.0 / NOSE_DEPTH_RATIO)))
DARK_LEVEL = 10  # grey levels at or below this, out of 255, count as crushed to black
BRIGHT_LEVEL = 245  # at or above this, as blown to white
_BLUR_TAPS = 9  # Crete et al.'s re-blur filter length
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601

Verdict = Literal["low", "medium", "high"]


@dataclass(frozen=True)
class FaceQuality:
    """The measures of one face (see the module docstring for each definition)."""

    eye_distance: float  # px in the photo
    sharpness: float  # 0 (flat) .. 1
    yaw: float  # degrees, + = nose to the image's right
    roll: float  # degrees, + = the eye on the image's right is lower
    detection_confidence: float
    brightness: float  # 0..1
    contrast: float  # 0..1
    dark_share: float  # 0..1
    bright_share: float  # 0..1

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


MEASURES: tuple[str, ...] = tuple(f.name for f in fields(FaceQuality))


def _grey(chips: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 luma, 0-255, of (N, H, W, 3) RGB or (N, H, W) grey chips."""
    chips = np.asarray(chips)
    if chips.ndim == 3:
        return chips.astype(np.float32)
    if chips.ndim != 4 or chips.shape[-1] != 3:
        raise ValueError(f"chips must be (N, H, W, 3) or (N, H, W), got {chips.shape}")
    return chips.astype(np.float32) @ _LUMA


def _eye_centres(landmarks: np.ndarray, scheme: str = "dlib5") -> tuple[np.ndarray, np.ndarray]:
    # image-right eye, image-left eye (dlib5: mean of each eye's two corners)
    return eye_centres(landmarks, scheme)


def eye_distance(landmarks: np.ndarray, scheme: str = "dlib5") -> np.ndarray:
    """(N,) pixels between the eye centres (dlib5: mean of each eye's two corners)."""
    right, left = _eye_centres(landmarks, scheme)
    return np.linalg.norm(right - left, axis=1)


def _nose_offset(landmarks: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """(offset, roll, eye distance), each (N,): the nose point's offset from the eye
    midpoint along the eye line in half eye distances, the eye line's angle in degrees."""
    pts = np.asarray(landmarks, dtype=np.float64)
    right, left = _eye_centres(pts, scheme)
    axis = right - left
    dist = np.linalg.norm(axis, axis=1)
    safe = np.where(dist > 0, dist, 1.0)
    unit = axis / safe[:, None]
    roll = np.degrees(np.arctan2(axis[:, 1], axis[:, 0]))
    nose = nose_point(pts, scheme)
    offset = np.einsum("ni,ni->n", nose - (right + left) / 2, unit) / (safe / 2)
    return offset, roll, dist


# The nose point of each landmark scheme: how far in front of the eye centres it lies (in
# half eye distances) and where it sits, frontal, along the eye line.
#
# From the two templates (both frontal mean faces, put in one frame by their eye centres):
# the frontal offsets, which are removed so that a frontal face reads 0 under both (both are
# under 0.001 half eye distances: the templates are symmetric), and that
# both nose points lie on the midline below the eyes (1.55 and 1.14 half eye distances), so
# yaw moves both along the eye line alone. What a frontal template cannot hold is depth: the
# tip lies in front of the base by the nasal tip protrusion (subnasale to pronasale: ~20 mm
# in adults, Farkas' norms), over the same ~31 mm half eye distance as NOSE_DEPTH_RATIO:
# 0.8 + 0.65 = 1.45. With it, weak perspective gives the same yaw from either point.
NOSE_TIP_PROTRUSION = 20.0 / 31.0
NOSE_DEPTHS: dict[str, float] = {
    "dlib5": NOSE_DEPTH_RATIO,
    "arcface5": NOSE_DEPTH_RATIO + NOSE_TIP_PROTRUSION,
}
FRONTAL_NOSE_OFFSETS: dict[str, float] = {
    "dlib5": float(_nose_offset(FIVE_POINT_TEMPLATE[None], "dlib5")[0][0]),
    "arcface5": float(_nose_offset(ARCFACE_TEMPLATE_112[None], "arcface5")[0][0]),
}


def pose(landmarks: np.ndarray, scheme: str = "dlib5") -> tuple[np.ndarray, np.ndarray]:
    """(yaw, roll) in degrees, each (N,): see the module docstring for conventions.

    Scheme-aware: ``arcface5``'s nose point is the tip, further in front of the eyes than
    ``dlib5``'s nose base, so its offset is read against its own depth
    (:data:`NOSE_DEPTHS`) and frontal offset (:data:`FRONTAL_NOSE_OFFSETS`): the same head
    pose reads the same yaw under both, and the yaw limits (set on dlib's points) hold for
    SCRFD's."""
    if scheme not in NOSE_DEPTHS:
        raise ValueError(f"unknown landmark scheme {scheme!r}")
    offset, roll, dist = _nose_offset(np.asarray(landmarks, dtype=np.float64), scheme)
    # Weak perspective: the offset is depth * sin(yaw) over the half eye distance's
    # cos(yaw), i.e. depth * tan(yaw).
    yaw = np.degrees(np.arctan((offset - FRONTAL_NOSE_OFFSETS[scheme]) / NOSE_DEPTHS[scheme]))
    return np.where(dist > 0, yaw, 0.0), np.where(dist > 0, roll, 0.0)


def _box_blur(grey: np.ndarray, axis: int) -> np.ndarray:
    """9-tap moving average along ``axis`` (edges repeat), via cumulative sums."""
    half = _BLUR_TAPS // 2
    pad = [(0, 0)] * grey.ndim
    pad[axis] = (half + 1, half)
    c = np.cumsum(np.pad(grey, pad, mode="edge"), axis=axis, dtype=np.float64)
    n = grey.shape[axis]
    hi = np.take(c, np.arange(_BLUR_TAPS, _BLUR_TAPS + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return ((hi - lo) / _BLUR_TAPS).astype(np.float32)


def blur_score(grey: np.ndarray, region: tuple[slice, slice] | None = None) -> np.ndarray:
    """(N,) Crete et al.'s blur in [0, 1] of (N, H, W) grey images' face region.

    Per direction: ``D`` = absolute neighbour differences of the image, ``D_b`` = the same
    after a 9-tap box blur along that direction; the blur is the share of ``sum D`` that is
    not ``sum max(0, D - D_b)`` (variation the re-blur removes shows the image was sharp).
    The larger of the two directions counts. A flat region (no variation) scores 1.
    ``region``: (rows, columns) of the face in the chip; default the dlib chip's.
    """
    grey = np.asarray(grey, dtype=np.float32)
    rows, cols = region if region is not None else (_REGION, _REGION)
    scores = []
    for axis in (1, 2):
        blurred = _box_blur(grey, axis)
        sel = (slice(None), rows, cols)
        d = np.abs(np.diff(grey[sel], axis=axis))
        db = np.abs(np.diff(blurred[sel], axis=axis))
        s_d = d.sum(axis=(1, 2), dtype=np.float64)
        s_v = np.maximum(d - db, 0).sum(axis=(1, 2), dtype=np.float64)
        scores.append(np.where(s_d > 0, (s_d - s_v) / np.where(s_d > 0, s_d, 1.0), 1.0))
    return np.maximum(scores[0], scores[1])


def sharpness(chips: np.ndarray, region: tuple[slice, slice] | None = None) -> np.ndarray:
    """(N,) ``1 - blur_score`` of the chips' grey face region: 1 sharp, 0 flat."""
    return 1.0 - blur_score(_grey(chips), region)


def exposure(
    chips: np.ndarray, region: tuple[slice, slice] | None = None
) -> dict[str, np.ndarray]:
    """Brightness, contrast, dark and bright shares of the grey face region, each (N,)."""
    rows, cols = region if region is not None else (_REGION, _REGION)
    region = _grey(chips)[:, rows, cols]
    flat = region.reshape(len(region), -1)
    return {
        "brightness": flat.mean(axis=1) / 255.0,
        "contrast": flat.std(axis=1) / 255.0,
        "dark_share": (flat <= DARK_LEVEL).mean(axis=1),
        "bright_share": (flat >= BRIGHT_LEVEL).mean(axis=1),
    }


def measure(
    confidences: np.ndarray,
    landmarks: np.ndarray,
    chips: np.ndarray,
    geometry: ChipGeometry | None = None,
) -> dict[str, np.ndarray]:
    """Every measure for ``N`` faces: a dict of (N,) float arrays keyed like FaceQuality.

    ``geometry``: how the chips were cut and which points the landmarks are (default
    dlib's); the face region of an ArcFace chip is the same part of the face as dlib's."""
    geo = geometry if geometry is not None else DLIB
    scheme = geo.landmarks
    region = None if geo.chip_key == DLIB.chip_key else face_region(geo)
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    marks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    chips = np.asarray(chips)
    if not len(conf) == len(marks) == len(chips):
        raise ValueError(
            f"{len(conf)} confidences, {len(marks)} landmark sets and {len(chips)} chips"
        )
    if len(conf) == 0:
        return {name: np.zeros(0) for name in MEASURES}
    yaw, roll = pose(marks, scheme)
    return {
        "eye_distance": eye_distance(marks, scheme),
        "sharpness": sharpness(chips, region),
        "yaw": yaw,
        "roll": roll,
        "detection_confidence": conf,
        **exposure(chips, region),
    }


def assess(
    faces: Sequence[Face], chips: np.ndarray, geometry: ChipGeometry | None = None
) -> list[FaceQuality]:
    """One FaceQuality per face; ``chips`` are the faces' aligned chips, in the same order,
    cut as ``geometry`` says (default dlib's)."""
    if not faces:
        return []
    values = measure(
        np.array([f.confidence for f in faces]),
        np.stack([np.asarray(f.landmarks, dtype=np.float64) for f in faces]),
        chips,
        geometry,
    )
    return [
        FaceQuality(**{name: float(values[name][i]) for name in MEASURES})
        for i in range(len(faces))
    ]


@dataclass(frozen=True)
class QualityLimits:
    """Bounds on the measures; None switches a bound off. See DEFAULT_LIMITS for the reasons."""

    min_eye_distance: float | None = None
    min_sharpness: float | None = None
    max_abs_yaw: float | None = None
    max_abs_roll: float | None = None
    min_detection_confidence: float | None = None
    min_brightness: float | None = None
    max_brightness: float | None = None
    min_contrast: float | None = None
    max_dark_share: float | None = None
    max_bright_share: float | None = None


@dataclass(frozen=True)
class LimitFailure:
    """One bound a face breaks: ``value`` (absolute for yaw and roll) vs ``limit``."""

    measure: str
    value: float
    limit: float
    bound: Literal["min", "max"]


def failed_limits(q: FaceQuality, limits: QualityLimits) -> list[LimitFailure]:
    """Every bound of ``limits`` that ``q`` breaks, in QualityLimits order."""
    checks: list[tuple[str, float, float | None, Literal["min", "max"]]] = [
        ("eye_distance", q.eye_distance, limits.min_eye_distance, "min"),
        ("sharpness", q.sharpness, limits.min_sharpness, "min"),
        ("yaw", abs(q.yaw), limits.max_abs_yaw, "max"),
        ("roll", abs(q.roll), limits.max_abs_roll, "max"),
        ("detection_confidence", q.detection_confidence, limits.min_detection_confidence,
         "min"),
        ("brightness", q.brightness, limits.min_brightness, "min"),
        ("brightness", q.brightness, limits.max_brightness, "max"),
        ("contrast", q.contrast, limits.min_contrast, "min"),
        ("dark_share", q.dark_share, limits.max_dark_share, "max"),
        ("bright_share", q.bright_share, limits.max_bright_share, "max"),
    ]
    return [
        LimitFailure(name, value, limit, bound)
        for name, value, limit, bound in checks
        if limit is not None and ((value < limit) if bound == "min" else (value > limit))
    ]


# Enrollment limits: a face breaking one is measurably worse for recognition. Evidence from
# `faceserve eval quality` (LFW View-2 and a synthetic degradation sweep of 200 genuine + 200
# impostor View-2 pairs, TAR at the FAR 1e-3 threshold; README "Face quality"):
# * eye distance: half the chip's 52.5 px, i.e. the chip is upsampled more than 2x, more
#   than the embedder's stride-2 first layer absorbs. Downscaled LFW faces lost at most 1.5
#   points of TAR down to 17 px and 4-9.5 points at 14-10 px: the limit leaves a 1.5x margin
#   for the landmark and compression error that real small faces add to synthetic ones.
# * sharpness: what a 2 px Gaussian blur leaves of a typical LFW face (median 0.199), where
#   TAR fell 4.5 points (1.5 px: median 0.25, -1 point; 3 px: 0.145, -20 points).
# * yaw: the nose base under an eye centre (YAW_NOSE_UNDER_EYE): the far eye's inner corner
#   is hidden and the 5-point alignment no longer fits (LFW: 11 faces, 1 error in 15 pairs).
# * detection confidence: half dlib's MMOD training margin (true faces are trained to score
#   >= 1; LFW median 1.06, 99.5% >= 1.0): below 0.5 the detector is barely sure there is a
#   face (LFW: 3 faces, errors in 3 of their 6 pairs). Strong darkening also lowers it.
# * contrast: 3 grey levels of standard deviation: the face is drawn with a few levels (LFW
#   darkened to 6% of its light: median 2 levels, TAR -26 points; to 12%: 4 levels, -1).
# * dark share: half the face region at grey <= 10 (darkened to 6%: 0.89, -26 points; 12%:
#   0.14, -1 point). Near-black pixels still hold some detail, blown-out ones none, so:
# * bright share: a quarter of the face region at grey >= 245 (overexposed x1.75: median
#   0.26, TAR -5 points; x1.5: 0.08, -1; x2: 0.43, -12).
# Roll is not limited (alignment rotates it away); brightness itself is not either (dark
# skin in dim light is dark without being unusable: contrast and the shares catch lost detail).
DEFAULT_LIMITS = QualityLimits(
    min_eye_distance=round(CHIP_EYE_DISTANCE / 2, 1),
    min_sharpness=0.2,
    max_abs_yaw=round(YAW_NOSE_UNDER_EYE),
    min_detection_confidence=0.5,
    min_contrast=round(3 / 255, 4),
    max_dark_share=0.5,
    max_bright_share=0.25,
)
# `high` quality: inside bounds where neither LFW nor the sweep showed an effect. LFW pairs
# with a face beyond one of them erred 1.8x (yaw > 30), 2.8x (eye distance < 30), 2.9x
# (sharpness < 0.3) and 12x (confidence < 1.0, the MMOD margin) as often as the rest; the
# exposure bounds are the sweep's last levels without a TAR loss. Roll is left out (LFW's
# tilted heads also err more, through the pitch and yaw that come with them, not the roll).
HIGH_LIMITS = QualityLimits(
    min_eye_distance=30.0,
    min_sharpness=0.3,
    max_abs_yaw=30.0,
    min_detection_confidence=1.0,
    min_contrast=0.03,
    max_dark_share=0.25,
    max_bright_share=0.1,
)


def verdict(q: FaceQuality) -> Verdict:
    """Coarse grade: ``low`` breaks a DEFAULT_LIMITS bound (measurably worse recognition),
    ``high`` keeps every HIGH_LIMITS bound (no measurable effect), ``medium`` in between."""
    if failed_limits(q, DEFAULT_LIMITS):
        return "low"
    if failed_limits(q, HIGH_LIMITS):
        return "medium"
    return "high"

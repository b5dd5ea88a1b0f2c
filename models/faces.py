"""Result types shared by every pipeline stage: what a detected, aligned, embedded face is."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Box", "Face"]


@dataclass(frozen=True)
class Box:
    """A face rectangle in image pixels, dlib style: ``right``/``bottom`` are inclusive.

    Detector boxes may extend past the image border (dlib does not clip them).
    """

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.right, self.bottom)

    def scaled(self, sx: float, sy: float) -> Box:
        """The same rectangle in an image ``sx`` x ``sy`` times larger: edges scale, so the
        inclusive right/bottom pixels scale as ``r + 1``."""
        return Box(
            _round(self.left * sx),
            _round(self.top * sy),
            _round((self.right + 1) * sx) - 1,
            _round((self.bottom + 1) * sy) - 1,
        )


def _round(x: float) -> int:
    """Halves away from zero, as the detector's own box arithmetic (C's ``lround``)."""
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


@dataclass(frozen=True)
class Face:
    """One face found in one image.

    ``landmarks`` are 5 points (``(5, 2)`` float, x then y) in image pixels: dlib's (eye
    corners, nose base) by default, an SCRFD detector's (eye centres, nose tip, mouth
    corners) when the pipeline runs one (``models.backends.geometry``).
    ``embedding`` is the L2-normalised float32 vector (128-d for dlib's model), or None when
    only detected. ``chip`` is the aligned uint8 RGB crop the embedding was computed from
    (150x150 for dlib's model, 112x112 for the ArcFace family).
    ``model`` names the embedding model, so a stored vector can be checked against it.
    """

    box: Box
    confidence: float
    landmarks: np.ndarray
    embedding: np.ndarray | None = None
    chip: np.ndarray | None = None
    model: str | None = None

    def scaled(self, sx: float, sy: float) -> Face:
        """This face in an image ``sx`` x ``sy`` times larger (a photo decoded reduced, told
        in the client's pixels). Landmarks are points: pixel centres map to pixel centres."""
        points = (np.asarray(self.landmarks, dtype=np.float64) + 0.5) * (sx, sy) - 0.5
        return replace(self, box=self.box.scaled(sx, sy), landmarks=points)

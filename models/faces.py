"""Result types shared by every pipeline stage: what a detected, aligned, embedded face is."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Face:
    """One face found in one image.

    ``landmarks`` are the 5 dlib points (``(5, 2)`` float, x then y) in image pixels.
    ``embedding`` is the L2-normalised 128-d float32 vector, or None when only detected.
    ``chip`` is the aligned 150x150x3 uint8 RGB crop the embedding was computed from.
    ``model`` names the embedding model, so a stored vector can be checked against it.
    """

    box: Box
    confidence: float
    landmarks: np.ndarray
    embedding: np.ndarray | None = None
    chip: np.ndarray | None = None
    model: str | None = None

"""The dlib backend (the default): where its three converted models live.

They stay in their own modules (``models.detector``, ``models.landmarks``,
``models.embedder``), which the rest of the project imports directly; this module only
names them as a backend, with the chip geometry the embedder was trained on.
"""

from __future__ import annotations

from models.backends.geometry import DLIB as GEOMETRY
from models.detector import FaceDetector, load_detector
from models.embedder import DLIB_V1, DlibResNet, load_embedder
from models.landmarks import ShapePredictor, load_shape_predictor

__all__ = [
    "DLIB_V1",
    "GEOMETRY",
    "LANDMARK_SCHEME",
    "DlibResNet",
    "FaceDetector",
    "ShapePredictor",
    "load_detector",
    "load_embedder",
    "load_shape_predictor",
]

LANDMARK_SCHEME = "dlib5"

"""The ``--detector`` and ``--model-dir`` options every command that builds a pipeline takes.

One definition, so ``eval lfw``, ``eval openset``, ``embed`` and ``calibrate`` look names of
added ONNX models up where the service does (``FACESERVE_MODEL_DIR``, else
``FACESERVE_DATA_DIR/models``); read from the environment here because ``models`` does not
import the service's settings.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_detector_options", "default_model_dir"]


def default_model_dir() -> Path:
    if env := os.environ.get("FACESERVE_MODEL_DIR"):
        return Path(env)
    return Path(os.environ.get("FACESERVE_DATA_DIR", "./data")) / "models"


def add_detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", default="dlib",
                   help="`dlib` (default: MMOD and dlib's 5 points), or an SCRFD model added "
                        "with `faceserve models add --preset scrfd` (name or path); ArcFace-"
                        "family models need it")
    p.add_argument("--model-dir", type=Path, default=default_model_dir(),
                   help="where names of added ONNX models are looked up (default: "
                        "$FACESERVE_MODEL_DIR, else $FACESERVE_DATA_DIR/models, else "
                        "./data/models)")

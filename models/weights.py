"""Where the dlib model files are, and the converted-weights cache.

The CC0 dlib models ship in the PyPI package ``face_recognition_models``. Each model module
provides a pure function ``dlib .dat -> dict of arrays`` (its ``convert_dlib``); this module
runs it once and keeps the result as a safetensors file named by the source file's SHA-256,
so a changed source is converted again and a cached file is never trusted for another one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

__all__ = [
    "DLIB_FILES",
    "ModelFileMissing",
    "default_cache_dir",
    "dlib_model_path",
    "load_converted",
    "sha256_of",
]

# Logical model name -> file name inside face_recognition_models/models/.
DLIB_FILES: dict[str, str] = {
    "embedder": "dlib_face_recognition_resnet_model_v1.dat",
    "detector": "mmod_human_face_detector.dat",
    "landmarks": "shape_predictor_5_face_landmarks.dat",
}


class ModelFileMissing(FileNotFoundError):
    """The dlib source file is not installed where we look for it."""


def default_cache_dir() -> Path:
    """``$FACESERVE_CACHE_DIR``, else ``$XDG_CACHE_HOME/faceserve``, else ``~/.cache/faceserve``."""
    if env := os.environ.get("FACESERVE_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "faceserve"


def dlib_model_path(name: str) -> Path:
    """Path of an installed dlib model file, found without importing the package
    (``face_recognition_models/__init__`` imports the deprecated ``pkg_resources``)."""
    if name not in DLIB_FILES:
        raise KeyError(f"unknown model {name!r}; known: {sorted(DLIB_FILES)}")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileMissing(
            "the package face_recognition_models is not installed "
            "(pip install face_recognition_models==0.3.0)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / DLIB_FILES[name]
    if not path.is_file():
        raise ModelFileMissing(f"{path} is missing; reinstall face_recognition_models")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_converted(
    name: str,
    source: Path,
    convert: Callable[[Path], Mapping[str, np.ndarray]],
    cache_dir: Path | None = None,
) -> dict[str, torch.Tensor]:
    """Converted weights of ``source``, from the cache or converted now and cached.

    The cache file is written to a temporary name and renamed, so concurrent processes and
    crashes never leave a half-written file under the final name.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = sha256_of(source)
    target = cache_dir / f"{name}-{digest[:16]}.safetensors"
    if target.is_file():
        return load_file(str(target))
    arrays = {k: np.ascontiguousarray(v) for k, v in convert(source).items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = {"source": source.name, "sha256": digest, "model": name}
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}-", suffix=".tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata={"faceserve": json.dumps(meta)})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}

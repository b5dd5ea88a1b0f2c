"""Which embedding network a pipeline runs: the converted dlib model, an exported one, or
an ONNX file added with ``faceserve models add``.

``load_embedding_model(spec)`` is the one place that turns the ``model`` setting (``None``
or ``"dlib"``: the published dlib ResNet; a ``.safetensors`` file written by ``faceserve
export``; an ``.onnx`` file, or the name of one in the model directory) into a network, its
version string, its embedding size and the chip geometry it wants. The version string is
what every stored embedding is labelled with, so two different weight sets never share one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.backends.geometry import DLIB, ChipGeometry

__all__ = [
    "DLIB_MODEL",
    "EmbeddingModel",
    "chip_geometry_of",
    "chip_mismatch",
    "is_onnx_spec",
    "load_embedding_model",
]

DLIB_MODEL = "dlib"


@dataclass
class EmbeddingModel:
    """A network with the chip -> unit-vector contract, and what it is."""

    module: nn.Module
    version: str
    embedding_size: int
    source: str  # "dlib" or the model file's path
    manifest: dict[str, Any] = field(default_factory=dict)  # empty for the dlib model
    geometry: ChipGeometry = DLIB  # how its chips are cut (exported models: dlib's)
    licence: str = "CC0-1.0"  # dlib's weights; an ONNX model's as its user stated it
    loaded_backend: str = "torch"  # "torch", or for ONNX files "onnx2torch" / "onnxruntime"

    @property
    def backend(self) -> str:
        """What runs the network now: an onnx2torch module that failed its first batch is
        replaced by ONNX Runtime (``models.backends.onnx_embedder.FirstRunFallback``)."""
        return str(getattr(self.module, "backend", self.loaded_backend))

    @property
    def name(self) -> str:
        """What ``/readyz`` and ``faceserve models list`` call it."""
        return str(self.manifest.get("name", self.source if self.manifest else DLIB_MODEL))

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def embed_chips(
        self, chips: np.ndarray, flip: bool = False, batch_size: int = 64
    ) -> np.ndarray:
        """L2-normalised float32 ``(N, D)`` embeddings of uint8 chips ``(N, S, S, 3)``
        (``S`` the geometry's chip size: 150 for dlib's, 112 for the ArcFace family)."""
        from models.embedder import embed_chips

        out = embed_chips(self.module, chips, flip=flip, batch_size=batch_size)
        return out.numpy().astype(np.float32, copy=False)


def load_embedding_model(
    spec: str | Path | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
) -> EmbeddingModel:
    """The embedder named by ``spec`` on ``device`` (see the module docstring);
    ``model_dir``: where names of added ONNX models are looked up."""
    from models.device import resolve_device

    dev = resolve_device(device)
    if spec is None or str(spec) in ("", DLIB_MODEL):
        from models.embedder import DLIB_V1, load_embedder

        module = load_embedder(device=dev, cache_dir=cache_dir)
        return EmbeddingModel(module, DLIB_V1.version, DLIB_V1.embedding_size, DLIB_MODEL)
    if is_onnx_spec(spec, model_dir):
        from models.backends.onnx_embedder import load_onnx_embedder
        from models.backends.onnx_file import resolve_model_file

        path = resolve_model_file(spec, model_dir, "embedder")
        onnx_module, manifest, geometry = load_onnx_embedder(path, dev)
        return EmbeddingModel(
            onnx_module, str(manifest["version"]), onnx_module.embedding_size, str(path),
            manifest, geometry=geometry, licence=str(manifest.get("licence")),
            loaded_backend=onnx_module.backend,
        )
    from models.model_file import load_exported

    path = Path(spec).expanduser()
    module, manifest = load_exported(path, dev)
    return EmbeddingModel(
        module, str(manifest["version"]), int(manifest["embedding_size"]), str(path), manifest
    )


def is_onnx_spec(spec: str | Path, model_dir: str | Path | None) -> bool:
    """An ``.onnx`` path, or a bare name (no suffix, no directory) of an added model."""
    text = str(spec)
    if text.endswith(".onnx"):
        return True
    return model_dir is not None and "/" not in text and not Path(text).suffix


def chip_geometry_of(version: str, model_dir: str | Path | None = None) -> ChipGeometry | None:
    """How the chips of faces embedded by model ``version`` were cut, when it can be told:
    dlib's and exported models' (``faceserve export`` trains on dlib chips) are dlib's; an
    ONNX model's is in its manifest, if it is still in ``model_dir``; otherwise None."""
    if not version.startswith("onnx-"):
        return DLIB
    if model_dir is None:
        return None
    from models.backends.onnx_file import list_models

    for info in list_models(model_dir):
        if info.version == version and info.kind == "embedder":
            return ChipGeometry.from_dict(info.manifest["chip"])
    return None


def chip_mismatch(
    source: str, model: EmbeddingModel, model_dir: str | Path | None
) -> str | None:
    """Why chips stored for model ``source`` cannot be embedded by ``model``, or None.

    A chip is cut for one model (size, 5-point template, which points): embedding a 150x150
    dlib chip with an ArcFace model, or the reverse, gives vectors that match nothing."""
    stored = chip_geometry_of(source, model_dir)
    want = model.geometry
    if stored is None:
        return (f"the gallery holds faces of {source!r}, whose chip geometry is unknown here "
                f"(its ONNX model is not in {model_dir}); add that model's file with `faceserve "
                "models add` so its chips can be checked, or re-enroll those faces from their "
                "photos; nothing was changed")
    if stored.chip_key != want.chip_key:
        return (f"the stored chips of {source!r} are {stored.size}x{stored.size} "
                f"{stored.name} chips ({stored.landmarks} points), but {model.version} needs "
                f"{want.size}x{want.size} {want.name} chips ({want.landmarks} points): they "
                "cannot be re-embedded. Re-enroll the faces from their photos with "
                f"FACESERVE_MODEL={model.name} (and FACESERVE_DETECTOR for its points), "
                "or keep serving this gallery with its model; nothing was changed")
    return None

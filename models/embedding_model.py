"""Which embedding network a pipeline runs: the converted dlib model, or an exported one.

``load_embedding_model(spec)`` is the one place that turns the ``model`` setting (``None``
or ``"dlib"``: the published dlib ResNet; otherwise the path of a file written by
``faceserve export``) into a network, its version string and its embedding size. The
version string is what every stored embedding is labelled with, so two different weight
sets never share one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DLIB_MODEL", "EmbeddingModel", "load_embedding_model"]

DLIB_MODEL = "dlib"


@dataclass
class EmbeddingModel:
    """A network with the chip -> unit-vector contract, and what it is."""

    module: nn.Module
    version: str
    embedding_size: int
    source: str  # "dlib" or the model file's path
    manifest: dict[str, Any] = field(default_factory=dict)  # empty for the dlib model

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def embed_chips(
        self, chips: np.ndarray, flip: bool = False, batch_size: int = 64
    ) -> np.ndarray:
        """L2-normalised float32 ``(N, D)`` embeddings of uint8 chips ``(N, 150, 150, 3)``."""
        from models.embedder import embed_chips

        out = embed_chips(self.module, chips, flip=flip, batch_size=batch_size)
        return out.numpy().astype(np.float32, copy=False)


def load_embedding_model(
    spec: str | Path | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
) -> EmbeddingModel:
    """The embedder named by ``spec`` on ``device`` (see the module docstring)."""
    from models.device import resolve_device

    dev = resolve_device(device)
    if spec is None or str(spec) in ("", DLIB_MODEL):
        from models.embedder import DLIB_V1, load_embedder

        module = load_embedder(device=dev, cache_dir=cache_dir)
        return EmbeddingModel(module, DLIB_V1.version, DLIB_V1.embedding_size, DLIB_MODEL)
    from models.model_file import load_exported

    path = Path(spec).expanduser()
    module, manifest = load_exported(path, dev)
    return EmbeddingModel(
        module, str(manifest["version"]), int(manifest["embedding_size"]), str(path), manifest
    )

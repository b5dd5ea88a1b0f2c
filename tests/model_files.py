"""Exported model files for tests, written through the real writer (``write_model_file``).

``dlib_copy``: dlib's own weights under another version string, so the same faces give the
same embeddings as the default model while the service must still treat it as another model
(a gallery re-embedded with it is searched exactly as with dlib's). ``small_random``: a
small untrained network with its own embedding size, whose vectors have nothing in common
with dlib's. Training-made files (``faceserve export``) are tested in
``tests/models/training``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.model_file import EXPORT_FORMAT, weights_hash, write_model_file

__all__ = ["dlib_copy", "small_random", "tamper", "write_test_model"]

# The dlib model's LFW FAR=1e-3 threshold (service.config.DEFAULT_THRESHOLD) as "validated".
DLIB_VALIDATION = {"far": 1e-3, "tar": 0.973, "tar_threshold": 0.915, "accuracy": 0.989}


def write_test_model(
    module: nn.Module,
    arch: str,
    out: Path,
    version: str,
    embedding_size: int,
    validation: dict[str, Any] | None = None,
) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    manifest = {
        "format": EXPORT_FORMAT,
        "version": version,
        "architecture": arch,
        "embedding_size": embedding_size,
        "weights_sha256": weights_hash(tensors),
        "data": {"val_identities": 32},
        "validation": validation or {},
    }
    return write_model_file(tensors, manifest, out)


def dlib_copy(out: Path, version: str = "test-dlib-copy-v1", **kwargs: Any) -> Path:
    from models.embedder import load_embedder

    kwargs.setdefault("validation", DLIB_VALIDATION)
    return write_test_model(load_embedder(device="cpu", fold=False), "dlib-resnet", out,
                            version, 128, **kwargs)


def small_random(out: Path, embedding_size: int = 64, seed: int = 0, **kwargs: Any) -> Path:
    from models.training.small_net import small_net

    torch.manual_seed(seed)
    net = small_net(embedding_size).eval()
    kwargs.setdefault("validation", {"far": 1e-3, "tar": 0.1, "tar_threshold": 0.5})
    return write_test_model(net, "small", out, f"test-small-{embedding_size}d-s{seed}",
                            embedding_size, **kwargs)


def tamper(path: Path) -> None:
    """Change one weight of a model file and keep its manifest (and so its stated hash)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors["fc.bias"] = tensors["fc.bias"] + 1
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)

"""The exported-embedder file: one safetensors file whose metadata holds a JSON manifest.

This is the contract between training (``faceserve export`` writes it) and everything that
embeds faces (the service, ``faceserve eval lfw --model``, ``faceserve reembed`` read it), so
it lives beside the pipeline rather than in ``models.training``: serving a model never
imports the trainer.

The manifest names the architecture, the embedding size, the input contract and a **version
string** that is stored with every embedding; its ``weights_sha256`` is checked on load, so
a file whose weights were changed after export (or a manifest pasted onto other weights) is
refused rather than served under a wrong version. ``<file>.json`` beside it is the same
manifest, for people.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "EXPORT_FORMAT",
    "MANIFEST_KEY",
    "ModelFileError",
    "build_architecture",
    "load_exported",
    "read_manifest",
    "weights_hash",
    "write_model_file",
]

EXPORT_FORMAT = "faceserve-embedder/1"
MANIFEST_KEY = "faceserve_manifest"
ARCHITECTURES = ("dlib-resnet", "small")


class ModelFileError(ValueError):
    """Not an exported faceserve model, an unknown format or architecture, or tampered."""


def build_architecture(arch: str, embedding_size: int = 128) -> nn.Module:
    """An untrained network of the named architecture (its weights come from the file)."""
    if arch == "small":
        from models.training.small_net import small_net

        return small_net(embedding_size)
    if arch == "dlib-resnet":
        from dataclasses import replace

        from models.embedder import DLIB_V1, DlibResNet

        return DlibResNet(config=replace(DLIB_V1, embedding_size=embedding_size))
    raise ModelFileError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")


def weights_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order: the weights' identity."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_model_file(
    tensors: dict[str, torch.Tensor], manifest: dict[str, Any], out: str | Path
) -> Path:
    """Write ``out`` and ``out.json`` (each through a temporary name, then renamed).

    ``manifest`` must already hold ``format``, ``version``, ``architecture``,
    ``embedding_size`` and ``weights_sha256`` (checked here against ``tensors``).
    """
    for key in ("format", "version", "architecture", "embedding_size", "weights_sha256"):
        if key not in manifest:
            raise ModelFileError(f"manifest lacks {key!r}")
    if manifest["weights_sha256"] != weights_hash(tensors):
        raise ModelFileError("manifest's weights_sha256 does not match the weights")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, default=str)
    _atomic(out, lambda tmp: save_file(tensors, tmp, metadata={MANIFEST_KEY: text}))
    side = out.with_name(out.name + ".json")
    _atomic(side, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return out


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix == ".json" and path.with_suffix("").suffix == ".safetensors":
        path = path.with_suffix("")  # the sidecar names its model
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an exported model (``.safetensors`` or its ``.json`` sidecar)."""
    path = _resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for garbage
        raise ModelFileError(f"{path} is not a safetensors file: {exc}") from None
    if MANIFEST_KEY not in meta:
        raise ModelFileError(
            f"{path} has no faceserve manifest; was it written by `faceserve export`?"
        )
    manifest = json.loads(meta[MANIFEST_KEY])
    if manifest.get("format") != EXPORT_FORMAT:
        raise ModelFileError(f"{path}: unsupported export format {manifest.get('format')!r}")
    return manifest


def load_exported(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on device, manifest)`` from an exported ``.safetensors``.

    The model has the DlibResNet forward contract: float ``(N, 3, 150, 150)`` RGB 0..255 in,
    ``(N, D)`` L2-normalised out. Gradients are off; DlibResNet's affine layers are folded.
    """
    from models.device import resolve_device

    path = _resolve(path)
    manifest = read_manifest(path)
    tensors = load_file(str(path))
    if weights_hash(tensors) != manifest["weights_sha256"]:
        raise ModelFileError(f"{path}: weights do not match the manifest's hash")
    model = build_architecture(manifest["architecture"], int(manifest["embedding_size"]))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit {manifest['architecture']}: "
                             f"{exc}") from None
    fold = getattr(model, "fold_affine", None)
    if callable(fold):  # DlibResNet: move the frozen affine layers into the convolutions
        fold()
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    for param in model.parameters():
        param.requires_grad_(False)
    return model, manifest

"""Export a trained embedder for the service: one safetensors file plus a JSON manifest.

The safetensors file holds the network's state dict and, in its metadata, the manifest (so a
single file is self-describing); ``<file>.json`` beside it holds the same manifest for
people. The manifest names the architecture, embedding size and input contract, summarises
the training data and validation figures, and carries a **version string**
``ft-<name>-<YYYYMMDD>-<hash8>`` (hash = SHA-256 over the weights), which the service stores
with every embedding: two different weight sets never share a version, and exporting the
same checkpoint twice gives the same one.

``load_exported(path, device)`` returns a module with the DlibResNet forward contract
(float ``(N,3,150,150)`` RGB 0..255 in, ``(N,D)`` L2-normalised out) and that version.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.training.checkpoint import load_checkpoint

__all__ = ["EXPORT_FORMAT", "build_architecture", "export_checkpoint", "load_exported"]

EXPORT_FORMAT = "faceserve-embedder/1"
MANIFEST_KEY = "faceserve_manifest"
_TRAINING_KEYS = (
    "loss", "miner", "margin", "distance", "init", "freeze", "optimizer", "lr", "epochs",
    "steps_per_epoch", "p", "k", "warmup", "seed", "val_fraction", "max_images_per_identity",
)  # fmt: skip


def build_architecture(arch: str) -> nn.Module:
    """An untrained network of the named architecture (weights come from the file)."""
    if arch == "small":
        from models.training.small_net import small_net

        return small_net()
    if arch == "dlib-resnet":
        from models.embedder import DlibResNet

        return DlibResNet()
    raise ValueError(f"unknown architecture {arch!r} in manifest")


def weights_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:40] or "model"


def export_checkpoint(
    checkpoint: str | Path, out: str | Path | None = None, name: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write ``out`` (.safetensors) and ``out.json``; returns the path and the manifest.

    ``checkpoint`` is a ``.pt`` file or a run directory (its ``best.pt``). ``name`` defaults
    to the run directory's name.
    """
    ckpt_path = Path(checkpoint)
    if ckpt_path.is_dir():
        ckpt_path = ckpt_path / "best.pt"
    ckpt = load_checkpoint(ckpt_path)
    config = ckpt["config"]
    model = ckpt["model"]
    tensors = {k: v.detach().cpu().contiguous() for k, v in model["state_dict"].items()}
    digest = weights_hash(tensors)
    created = datetime.fromisoformat(ckpt["created_at"])
    run_name = _slug(name or Path(config["out"]).name)
    version = f"ft-{run_name}-{created:%Y%m%d}-{digest[:8]}"

    history = ckpt.get("history") or []
    validated = ckpt["step_in_epoch"] == 0 and bool(history)
    current = history[-1] if validated else None
    data = ckpt.get("data") or {}
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": version,
        "architecture": model["arch"],
        "embedding_size": int(model["embedding_size"]),
        "input": {
            "chip_size": 150,
            "layout": "float (N, 3, 150, 150), RGB, pixel values 0..255",
            "alignment": "dlib 5-point chip, padding 0.25 (models.align.extract_chips)",
        },
        "output": "L2-normalised embeddings; compare with cosine similarity",
        "weights_sha256": digest,
        "base_model": "dlib-resnet-v1" if config.get("init") == "dlib" else "random init",
        "training": {
            **{k: config.get(k) for k in _TRAINING_KEYS},
            "global_step": ckpt["global_step"],
            "checkpoint_created_at": ckpt["created_at"],
        },
        "data": {
            "source": data.get("source"),
            "identities": data.get("identities"),
            "images": data.get("images"),
            "train_identities": len(data.get("train_identities", [])),
            "train_images": data.get("train_images"),
            "val_identities": len(data.get("val_identities", [])),
            "val_images": data.get("val_images"),
            "no_face": data.get("no_face"),
            # Anyone evaluating this model must leave these people out (see the run's
            # excluded_identities.txt).
            "identities_seen": sorted(
                set(data.get("train_identities", [])) | set(data.get("val_identities", []))
            ),
        },
        "validation": {
            "what": "verification on pairs of held-out identities (cosine similarity)",
            "epoch": current["epoch"] if current else None,
            "accuracy": current["val_accuracy"] if current else None,
            "tar": current["val_tar"] if current else None,
            "far": config.get("far"),
            "tar_threshold": current["val_tar_threshold"] if current else None,
            "genuine_pairs": current["genuine_pairs"] if current else None,
            "impostor_pairs": current["impostor_pairs"] if current else None,
            "before_training": _figures(history[0]) if history else None,
            "note": None if validated else "checkpoint taken mid-epoch; not validated",
        },
    }
    out_path = Path(out) if out else ckpt_path.parent / f"{version}.safetensors"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, default=str)
    save_file(tensors, str(out_path), metadata={MANIFEST_KEY: text})
    out_path.with_name(out_path.name + ".json").write_text(text + "\n")
    return out_path, manifest


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": row.get("val_accuracy"),
        "tar": row.get("val_tar"),
        "far": row.get("val_far"),
    }


def read_manifest(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if MANIFEST_KEY not in meta:
        raise ValueError(f"{path} has no faceserve manifest; was it written by faceserve export?")
    manifest = json.loads(meta[MANIFEST_KEY])
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: unsupported export format {manifest.get('format')!r}")
    return manifest


def load_exported(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, str]:
    """``(model in eval mode on device, version string)`` from an exported ``.safetensors``.

    The weights are checked against the manifest's hash, so a file edited after export (or a
    manifest pasted onto other weights) is refused rather than served under a wrong version.
    """
    from models.device import resolve_device

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix("")
    manifest = read_manifest(path)
    tensors = load_file(str(path))
    if weights_hash(tensors) != manifest["weights_sha256"]:
        raise ValueError(f"{path}: weights do not match the manifest's hash")
    model = build_architecture(manifest["architecture"])
    model.load_state_dict(tensors, strict=True)
    fold = getattr(model, "fold_affine", None)
    if callable(fold):  # DlibResNet: drop the (exported as identity) affine ops
        fold()
    model = model.to(resolve_device(device)).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, manifest["version"]

"""Export a trained embedder for the service: ``faceserve export CHECKPOINT``.

The file format (safetensors + manifest in its metadata + a ``.json`` sidecar) and its
loader are :mod:`models.model_file`; this module builds the manifest from a training
checkpoint: architecture, embedding size and input contract, a summary of the training data
(including every identity the run saw, which an evaluation must leave out), the validation
figures, and the **version string** ``ft-<name>-<YYYYMMDD>-<hash8>`` (hash = SHA-256 over the
weights), which the service stores with every embedding: two different weight sets never
share a version, and exporting the same checkpoint twice gives the same one.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from models.model_file import EXPORT_FORMAT, weights_hash, write_model_file
from models.training.checkpoint import load_checkpoint

__all__ = ["export_checkpoint"]

_TRAINING_KEYS = (
    "loss", "miner", "margin", "distance", "init", "freeze", "optimizer", "lr", "epochs",
    "steps_per_epoch", "p", "k", "warmup", "seed", "val_fraction", "max_images_per_identity",
)  # fmt: skip


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
    return write_model_file(tensors, manifest, out_path), manifest


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": row.get("val_accuracy"),
        "tar": row.get("val_tar"),
        "far": row.get("val_far"),
    }

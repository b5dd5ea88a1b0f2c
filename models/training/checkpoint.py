"""Training checkpoints: everything needed to resume a run bit-for-bit, written atomically.

A checkpoint holds the model (architecture name + state dict), the margin head if any, the
optimiser, scheduler and AMP scaler states, the position in the run (epoch and step within
it; batches and augmentation are pure functions of the seed and position, so no RNG state
is needed), the best validation figure so far, the validation history and the run config.
``last.pt`` is rewritten after every epoch and on Ctrl-C; ``best.pt`` whenever validation
improves. Files go through a temporary name and ``os.replace``, so a crash mid-write never
leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "faceserve-train-checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (a run directory means its
    ``best.pt``); refuses files that are not ours."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # weights_only: our checkpoints hold only tensors, numbers, strings, lists and dicts.
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a faceserve training checkpoint")
    return state

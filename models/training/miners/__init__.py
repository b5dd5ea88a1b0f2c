"""Miners choose ``(anchor, positive, negative)`` indices inside a batch; losses consume them."""

from __future__ import annotations

from models.training.miners.base import BaseMiner
from models.training.miners.batch_all import BatchAllMiner
from models.training.miners.batch_hard import BatchHardMiner
from models.training.miners.semi_hard import SemiHardMiner

__all__ = ["BaseMiner", "BatchAllMiner", "BatchHardMiner", "SemiHardMiner", "get_miner"]


def get_miner(name: str, margin: float, distance=None) -> BaseMiner:
    """``batch-all``, ``batch-hard`` or ``semi-hard`` (the command-line names)."""
    if name == "batch-all":
        return BatchAllMiner(distance=distance)
    if name == "batch-hard":
        return BatchHardMiner(distance=distance)
    if name == "semi-hard":
        return SemiHardMiner(margin=margin, distance=distance)
    raise ValueError(f"unknown miner {name!r}; choose batch-all, batch-hard or semi-hard")

"""Batch-all: every valid triplet of the batch (Hermans et al. 2017, "batch all").

With the mean-over-active reducer this is their BA⁺ variant: easy triplets cost nothing and
do not dilute the average. ``only_violating`` pre-filters triplets that already satisfy the
margin, which saves memory on large batches without changing the loss.
"""

from __future__ import annotations

import torch

from models.training.distances import BaseDistance
from models.training.index_utils import all_triplets
from models.training.miners.base import BaseMiner, Triplets

__all__ = ["BatchAllMiner"]


class BatchAllMiner(BaseMiner):
    def __init__(self, distance: BaseDistance | None = None, margin: float | None = None) -> None:
        super().__init__(distance)
        self.margin = margin

    def mine(self, dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n = all_triplets(labels)
        if self.margin is not None:
            keep = dist[a, p] - dist[a, n] + self.margin > 0
            a, p, n = a[keep], p[keep], n[keep]
        return a, p, n

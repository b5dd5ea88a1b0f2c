"""Batch-hard: per anchor, its farthest positive and its closest negative (one triplet each).

Hermans, Beyer & Leibe, "In defense of the triplet loss for person re-identification" (2017).
Anchors without a positive or without a negative in the batch are skipped.
"""

from __future__ import annotations

import torch

from models.training.index_utils import negative_mask, positive_mask
from models.training.miners.base import BaseMiner, Triplets

__all__ = ["BatchHardMiner"]


class BatchHardMiner(BaseMiner):
    def mine(self, dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
        pos = positive_mask(labels)
        neg = negative_mask(labels)
        inf = torch.finfo(dist.dtype).max
        hardest_pos = torch.where(pos, dist, torch.full_like(dist, -inf)).argmax(dim=1)
        hardest_neg = torch.where(neg, dist, torch.full_like(dist, inf)).argmin(dim=1)
        anchors = torch.nonzero(pos.any(1) & neg.any(1), as_tuple=True)[0]
        return anchors, hardest_pos[anchors], hardest_neg[anchors]

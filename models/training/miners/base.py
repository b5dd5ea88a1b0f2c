"""The miner interface: embeddings + labels in, index tuples out, never a gradient."""

from __future__ import annotations

import torch

from models.training.distances import BaseDistance, SquaredL2Distance

__all__ = ["BaseMiner", "Triplets"]

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BaseMiner:
    """Subclasses implement ``mine(dist, labels)`` on a distance matrix oriented so that
    smaller always means "more alike" (similarities are negated first)."""

    def __init__(self, distance: BaseDistance | None = None) -> None:
        self.distance = distance or SquaredL2Distance()

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        labels = labels.to(embeddings.device).reshape(-1)
        dist = self.distance.smallest_first(self.distance.matrix(embeddings.detach().float()))
        a, p, n = self.mine(dist, labels)
        return a.long(), p.long(), n.long()

    def mine(self, dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
        raise NotImplementedError

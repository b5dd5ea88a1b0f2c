"""FaceNet's triplet loss: ``max(‖f(a)−f(p)‖² − ‖f(a)−f(n)‖² + α, 0)`` on unit vectors.

Schroff, Kalenichenko & Philbin, "FaceNet" (CVPR 2015), eq. 1-3, with α = 0.2 as in the
paper. The distance is an object (squared L2 by default, cosine similarity as the switch);
which triplets to use is the miner's business: without one, every valid triplet counts.
"""

from __future__ import annotations

import torch
from torch import nn

from models.training.distances import BaseDistance, SquaredL2Distance
from models.training.index_utils import all_triplets
from models.training.reducers import LossOutput, MeanOverActiveReducer

__all__ = ["TripletMarginLoss"]

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TripletMarginLoss(nn.Module):
    """Triplet loss over mined ``(a, p, n)`` indices, reduced by ``reducer``."""

    def __init__(
        self,
        margin: float = 0.2,
        distance: BaseDistance | None = None,
        reducer: MeanOverActiveReducer | None = None,
    ) -> None:
        super().__init__()
        self.margin = margin
        self.distance = distance or SquaredL2Distance()
        self.reducer = reducer or MeanOverActiveReducer()

    def per_triplet(self, embeddings: torch.Tensor, triplets: Triplets) -> torch.Tensor:
        """Unreduced losses, one per triplet."""
        a, p, n = triplets
        d_ap = self.distance.pairwise(embeddings[a], embeddings[p])
        d_an = self.distance.pairwise(embeddings[a], embeddings[n])
        return torch.relu(self.distance.margin(d_ap, d_an) + self.margin)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        triplets: Triplets | None = None,
    ) -> LossOutput:
        if triplets is None:
            triplets = all_triplets(labels.to(embeddings.device))
        out = self.reducer(self.per_triplet(embeddings, triplets), triplets[0])
        out.stats["triplets"] = out.stats["items"]
        return out

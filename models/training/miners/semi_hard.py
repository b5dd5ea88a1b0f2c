"""Semi-hard negatives, FaceNet's rule: ``d(a,p) < d(a,n) < d(a,p) + α``.

Schroff et al. (2015), section 3.2: use every anchor-positive pair of the batch and, for
each, a negative that is farther than the positive but still inside the margin, so the loss
is positive without starting from the very hardest (often mislabelled or collapsing)
negatives. ``select="hardest"`` takes the closest such negative per pair (as in TensorFlow's
``triplet_semihard_loss``); ``select="all"`` returns every negative in the band. Pairs with
no negative in the band contribute nothing.
"""

from __future__ import annotations

import torch

from models.training.distances import BaseDistance
from models.training.index_utils import negative_mask, positive_mask
from models.training.miners.base import BaseMiner, Triplets

__all__ = ["SemiHardMiner"]


class SemiHardMiner(BaseMiner):
    def __init__(
        self, margin: float = 0.2, distance: BaseDistance | None = None, select: str = "hardest"
    ) -> None:
        super().__init__(distance)
        if select not in ("hardest", "all"):
            raise ValueError("select must be 'hardest' or 'all'")
        self.margin = margin
        self.select = select

    def mine(self, dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p = torch.nonzero(positive_mask(labels), as_tuple=True)
        d_ap = dist[a, p][:, None]  # (pairs, 1)
        d_an = dist[a]  # (pairs, N)
        band = negative_mask(labels)[a] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        if self.select == "all":
            pair, n = torch.nonzero(band, as_tuple=True)
            return a[pair], p[pair], n
        inf = torch.finfo(dist.dtype).max
        closest = torch.where(band, d_an, torch.full_like(d_an, inf)).argmin(dim=1)
        keep = band.any(dim=1)
        return a[keep], p[keep], closest[keep]

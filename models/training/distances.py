"""Distances between embeddings as objects, so a loss or miner is not tied to one metric.

``SquaredL2Distance`` (FaceNet's ``‖f(a) − f(b)‖²`` on L2-normalised vectors) and
``CosineSimilarity`` are the two switches. On unit vectors they carry the same ranking,
``‖x − y‖² = 2 − 2·cos(x, y)``, but a margin means different things on each scale.
A similarity is *inverted*: larger is closer. ``margin(closer, farther)`` hides the sign, so
losses and miners are written once for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BaseDistance", "CosineSimilarity", "SquaredL2Distance", "get_distance"]


class BaseDistance:
    """``matrix(x, y)`` -> ``(len(x), len(y))`` values; ``pairwise(x, y)`` -> row-by-row values."""

    is_inverted: bool = False  # True for similarities (larger = more alike)
    name: str = "base"

    def __init__(self, normalize_embeddings: bool = True) -> None:
        self.normalize_embeddings = normalize_embeddings

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1) if self.normalize_embeddings else x

    def matrix(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self._prepare(x)
        y = x if y is None else self._prepare(y)
        return self._matrix(x, y)

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._pairwise(self._prepare(x), self._prepare(y))

    __call__ = matrix

    def margin(self, closer: torch.Tensor, farther: torch.Tensor) -> torch.Tensor:
        """How far ``closer`` is on the wrong side of ``farther`` (negative when ordered right).

        For a distance that is ``closer − farther``; for a similarity ``farther − closer``.
        The triplet loss is ``relu(margin(d(a,p), d(a,n)) + α)`` either way.
        """
        return farther - closer if self.is_inverted else closer - farther

    def smallest_first(self, values: torch.Tensor) -> torch.Tensor:
        """Values turned so that smaller always means "more alike" (for argmin/argmax)."""
        return -values if self.is_inverted else values

    def _matrix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SquaredL2Distance(BaseDistance):
    """``‖x − y‖²``; with ``normalize_embeddings`` (the default) it lies in ``[0, 4]``."""

    name = "squared-l2"

    def _matrix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # ‖x‖² + ‖y‖² − 2x·y: one matmul instead of an (N, M, D) difference tensor. Rounding
        # can make it slightly negative for identical rows; clamp keeps it a distance.
        sq = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2.0 * (x @ y.T)
        return sq.clamp_min(0.0)

    def _pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).pow(2).sum(-1)


class CosineSimilarity(BaseDistance):
    """``cos(x, y)`` in ``[−1, 1]``; always computed on normalised vectors."""

    is_inverted = True
    name = "cosine"

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__(normalize_embeddings=True)

    def _matrix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x @ y.T

    def _pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum(-1)


def get_distance(name: str) -> BaseDistance:
    """``"squared-l2"`` or ``"cosine"`` (the names used on the command line)."""
    table: dict[str, type[BaseDistance]] = {
        SquaredL2Distance.name: SquaredL2Distance,
        CosineSimilarity.name: CosineSimilarity,
    }
    if name not in table:
        raise ValueError(f"unknown distance {name!r}; choose from {sorted(table)}")
    return table[name]()

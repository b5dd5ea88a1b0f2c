"""Index helpers shared by every miner and loss: which pairs and triplets a batch allows.

All functions take integer ``labels`` of shape ``(N,)`` and return index tensors on the
labels' device. A triplet ``(a, p, n)`` is valid when ``a != p``, ``labels[a] == labels[p]``
and ``labels[n] != labels[a]``.
"""

from __future__ import annotations

import torch

__all__ = ["all_triplets", "negative_mask", "positive_mask"]


def positive_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` bool: same identity, different sample (the diagonal is excluded)."""
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def negative_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` bool: different identity."""
    labels = labels.reshape(-1)
    return labels[:, None] != labels[None, :]


def all_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every valid ``(anchor, positive, negative)`` of the batch, in lexicographic order."""
    valid = positive_mask(labels)[:, :, None] & negative_mask(labels)[:, None, :]
    a, p, n = torch.nonzero(valid, as_tuple=True)
    return a, p, n

"""Reducers: how per-triplet (or per-sample) losses become the one number we minimise.

Averaging over *active* triplets only (those with a non-zero loss) keeps the gradient from
vanishing as training succeeds and most triplets become easy (Hermans et al., "In defense
of the triplet loss", 2017); the share of active triplets comes out of the same count and is
what the trainer logs each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["LossOutput", "MeanOverActiveReducer", "MeanReducer"]


@dataclass
class LossOutput:
    """The scalar to back-propagate plus plain-number statistics for the log.

    ``stats`` always has ``items`` (triplets or samples seen), ``active`` and
    ``active_fraction`` (``active / items``; 0 when there were no items).
    """

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def active_fraction(self) -> float:
        return float(self.stats.get("active_fraction", 0.0))


def _stats(items: int, active: int) -> dict[str, float]:
    return {
        "items": float(items),
        "active": float(active),
        "active_fraction": active / items if items else 0.0,
    }


class MeanOverActiveReducer:
    """Mean over the losses that are ``> threshold``; zero (still in the graph) if none are."""

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = threshold

    def __call__(self, losses: torch.Tensor, anchor: torch.Tensor | None = None) -> LossOutput:
        losses = losses.reshape(-1)
        active = losses > self.threshold
        n_active = int(active.sum())
        # With nothing active, multiply rather than return a fresh zero, so the graph (and
        # the device) stay put.
        value = losses.sum() * 0.0 if n_active == 0 else losses[active].sum() / n_active
        return LossOutput(value, _stats(losses.numel(), n_active))


class MeanReducer:
    """Plain mean over all items (zero if there are none)."""

    def __call__(self, losses: torch.Tensor, anchor: torch.Tensor | None = None) -> LossOutput:
        losses = losses.reshape(-1)
        n_active = int((losses > 0).sum())
        value = losses.mean() if losses.numel() else losses.sum() * 0.0
        return LossOutput(value, _stats(losses.numel(), n_active))

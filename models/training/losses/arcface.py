"""ArcFace / additive angular margin (Deng et al., CVPR 2019): ``s·cos(θ_y + m)``.

Past ``θ_y > π − m`` the cosine would turn back up and reward a *worse* angle, so there the
target logit continues linearly as ``cos θ − m·sin m`` (the ``th``/``mm`` rule of the
reference implementation), which stays monotone in θ.
"""

from __future__ import annotations

import math

import torch

from models.training.losses.cosface import MarginHead

__all__ = ["ArcFaceLoss"]


class ArcFaceLoss(MarginHead):
    """Defaults s = 30, m = 0.5 (the paper's margin)."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 30.0, margin: float = 0.5
    ) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)
        self._cos_m = math.cos(margin)
        self._sin_m = math.sin(margin)
        self._th = math.cos(math.pi - margin)
        self._mm = math.sin(math.pi - margin) * margin

    def target_logits(self, cos_target: torch.Tensor) -> torch.Tensor:
        cos = cos_target.clamp(-1.0, 1.0)
        # Clamped away from 0 so the gradient of sqrt stays finite at θ = 0.
        sin = (1.0 - cos * cos).clamp_min(1e-12).sqrt()
        phi = cos * self._cos_m - sin * self._sin_m
        return torch.where(cos > self._th, phi, cos - self._mm)

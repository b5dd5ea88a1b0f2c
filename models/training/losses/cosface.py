"""CosFace / large-margin cosine loss (Wang et al., CVPR 2018).

Logits are ``s·cos θ_j`` against a learned, L2-normalised class-weight matrix ``W`` (one row
per training identity), with ``m`` subtracted from the target's cosine:
``L = CE(s·(cos θ − m·onehot(y)), y)``. The head's weights belong to the training run only:
they are checkpointed but never exported (the service only needs the embedding network).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.training.reducers import LossOutput

__all__ = ["CosFaceLoss", "MarginHead"]


class MarginHead(nn.Module):
    """Shared parts of the cosine-softmax heads: the class weights and the cosine logits."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("a softmax head needs at least two training identities")
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(embedding_size))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings, dim=-1)
        w = F.normalize(self.weight.to(x.dtype), dim=-1)
        return x @ w.T

    def target_logits(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        cos = self.cosines(embeddings)
        labels = labels.to(cos.device).long()
        onehot = F.one_hot(labels, self.num_classes).to(torch.bool)
        target = self.target_logits(cos.gather(1, labels[:, None]))
        logits = self.scale * torch.where(onehot, target, cos)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            # "Active" = the margin-penalised target logit is not the largest: the sample
            # still violates the margin (the softmax analogue of an active triplet).
            violated = logits.argmax(1) != labels
            correct = cos.argmax(1) == labels
        n = len(labels)
        stats = {
            "items": float(n),
            "active": float(violated.sum()),
            "active_fraction": float(violated.float().mean()) if n else 0.0,
            "train_accuracy": float(correct.float().mean()) if n else 0.0,
        }
        return LossOutput(loss, stats)


class CosFaceLoss(MarginHead):
    """``s·(cos θ_y − m)`` for the target class; defaults s = 30, m = 0.35."""

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 30.0, margin: float = 0.35
    ) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)

    def target_logits(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin

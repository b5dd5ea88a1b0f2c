"""Held-out verification figures from embeddings of identities the model never trained on.

Every pair of validation images is scored by cosine similarity: same-identity pairs are
genuine, different-identity pairs impostors. Two figures:

* **pair accuracy at the best threshold**, balanced over the two classes
  (``(TAR + TRR) / 2``), i.e. the accuracy on a 50/50 pair set as on LFW, without sampling
  noise; chance is 0.5. The threshold is fitted on the same pairs, so it is optimistic by
  design (it measures separability, not a deployed threshold).
* **TAR at FAR = 1e-3**: the threshold lets through at most ``floor(FAR * impostors)``
  impostor pairs; the share of genuine pairs above it. With fewer than ``1/FAR`` impostor
  pairs no impostor may pass, and ``impostor_pairs`` says how thin the estimate is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["VerificationResult", "best_threshold_accuracy", "tar_at_far", "verification_figures"]


@dataclass
class VerificationResult:
    accuracy: float
    threshold: float
    tar: float
    far: float
    tar_threshold: float
    genuine_pairs: int
    impostor_pairs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def best_threshold_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Best balanced accuracy over all thresholds, and the threshold (accept if score > t)."""
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    if not len(genuine) or not len(impostor):
        return math.nan, math.nan
    scores = np.concatenate([genuine, impostor])
    is_genuine = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    order = np.argsort(-scores, kind="stable")
    scores, is_genuine = scores[order], is_genuine[order]
    # Accepting the top i pairs (i = 0..n): cut only between distinct scores.
    tp = np.concatenate([[0.0], np.cumsum(is_genuine)])
    fp = np.concatenate([[0.0], np.cumsum(1.0 - is_genuine)])
    distinct = np.concatenate([[True], scores[1:] != scores[:-1], [True]])
    acc = 0.5 * (tp / len(genuine) + 1.0 - fp / len(impostor))
    acc = np.where(distinct, acc, -1.0)
    i = int(np.argmax(acc))
    upper = scores[i - 1] if i > 0 else scores[0] + 1.0
    lower = scores[i] if i < len(scores) else scores[-1] - 1.0
    return float(acc[i]), float(0.5 * (upper + lower))


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """``(TAR, threshold)`` with at most ``floor(far * len(impostor))`` impostors accepted."""
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    if not len(genuine) or not len(impostor):
        return math.nan, math.nan
    allowed = math.floor(far * len(impostor))
    threshold = float(impostor[allowed]) if allowed < len(impostor) else float(impostor[-1])
    return float((genuine > threshold).mean()), threshold


def verification_figures(
    embeddings: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, far: float = 1e-3
) -> VerificationResult:
    """All-pairs genuine/impostor cosine scores of ``embeddings`` (N, D) grouped by ``labels``."""
    x = torch.as_tensor(embeddings, dtype=torch.float64)
    x = torch.nn.functional.normalize(x, dim=1)
    y = torch.as_tensor(np.asarray(labels)).reshape(-1)
    sim = (x @ x.T).numpy()
    iu, ju = np.triu_indices(len(y), k=1)
    same = (y[iu] == y[ju]).numpy()
    scores = sim[iu, ju]
    genuine, impostor = scores[same], scores[~same]
    accuracy, threshold = best_threshold_accuracy(genuine, impostor)
    tar, tar_threshold = tar_at_far(genuine, impostor, far)
    return VerificationResult(
        accuracy=accuracy,
        threshold=threshold,
        tar=tar,
        far=far,
        tar_threshold=tar_threshold,
        genuine_pairs=int(same.sum()),
        impostor_pairs=int((~same).sum()),
    )

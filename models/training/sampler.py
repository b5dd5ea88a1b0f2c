"""P x K batches: P identities, K images each, so every batch holds positives and negatives.

Online mining (batch-hard, semi-hard, batch-all) only works if each anchor has at least one
positive in its batch; random batches from hundreds of identities almost never do.

Rules (the ones a user of their own photo folders needs to know):
* identities with fewer than ``min_images`` (default 2) images are **skipped**: they cannot
  give a positive pair;
* identities with at least 2 but fewer than K images are **sampled with replacement**: all
  their images appear, and the remaining slots repeat random ones of them (augmentation makes
  the repeats differ);
* within one batch the P identities are distinct; across batches identities are drawn from
  a shuffled cycle, so each identity is used equally often regardless of how many images it
  has (a 500-image identity does not dominate).

Batches are a pure function of ``(seed, epoch)``: resuming mid-epoch regenerates the epoch and
skips the batches already done, which is what makes an interrupted run reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["PKSampler"]


class PKSampler:
    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        min_images: int = 2,
    ) -> None:
        if p < 2 or k < 2:
            raise ValueError(f"P and K must both be at least 2 (got P={p}, K={k})")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        by_label: dict[int, list[int]] = {}
        for index, label in enumerate(labels.tolist()):
            by_label.setdefault(label, []).append(index)
        self.groups = {lab: np.asarray(ix) for lab, ix in by_label.items() if len(ix) >= min_images}
        self.skipped = sorted(lab for lab, ix in by_label.items() if len(ix) < min_images)
        self.identities = sorted(self.groups)
        if len(self.identities) < p:
            raise ValueError(
                f"P={p} identities per batch but only {len(self.identities)} identities have "
                f"at least {min_images} images; lower --p or add identities"
            )
        self.p, self.k, self.seed = p, k, seed
        self.replacement = sorted(lab for lab in self.identities if len(self.groups[lab]) < k)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def epoch_batches(self, epoch: int, steps: int) -> list[np.ndarray]:
        """``steps`` batches of ``P*K`` dataset indices (grouped by identity, K at a time)."""
        rng = np.random.default_rng([self.seed, epoch])
        cycle: list[int] = []  # identities still to visit in this round; popped from the end
        batches = []
        for _ in range(steps):
            chosen: list[int] = []
            while len(chosen) < self.p:
                free = [j for j in range(len(cycle) - 1, -1, -1) if cycle[j] not in chosen]
                if not free:
                    # The round is used up (or only holds identities already in this batch):
                    # start the next round; leftovers stay queued for the following batch.
                    order = rng.permutation(len(self.identities))
                    cycle = [self.identities[i] for i in order] + cycle
                    continue
                chosen.append(cycle.pop(free[0]))
            batch = [self._pick(self.groups[label], rng) for label in chosen]
            batches.append(np.concatenate(batch))
        return batches

    def _pick(self, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(indices) >= self.k:
            return rng.choice(indices, size=self.k, replace=False)
        extra = rng.choice(indices, size=self.k - len(indices), replace=True)
        return rng.permutation(np.concatenate([indices, extra]))

    def iter_epoch(self, epoch: int, steps: int, start: int = 0) -> Iterator[np.ndarray]:
        yield from self.epoch_batches(epoch, steps)[start:]

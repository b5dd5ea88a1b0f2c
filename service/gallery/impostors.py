"""Per-gallery face counts and impostor samples: what an identify decision's threshold needs.

A 1:N decision that holds a false positive identification rate needs, for the gallery the
caller searches (one tenant's namespace of the shared index), how many faces a stranger is
compared with and how similar that gallery's different subjects are to each other
(``models.fpir``). Both change with every enrollment and erasure, so they are kept up to date
here, incrementally, by the ``Gallery`` under its index lock, instead of being recomputed per
query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.fpir import CohortStats, ImpostorSample

__all__ = ["GalleryImpostors", "GalleryView"]


@dataclass(frozen=True)
class GalleryView:
    faces: int
    impostors: CohortStats


class GalleryImpostors:
    """Faces per partition (tenant) and each partition's ``ImpostorSample``.

    ``partition`` maps a stored subject id to its tenant's key ("" for the default gallery).
    Not thread-safe: the gallery calls it under its exclusive index lock, and reads are of
    immutable snapshots (``view``).
    """

    def __init__(
        self, dim: int, partition: Callable[[str], str] | None = None, capacity: int = 2000
    ) -> None:
        self.dim = dim
        self.capacity = capacity
        self._partition = partition or (lambda _subject: "")
        self._counts: dict[str, int] = {}
        self._samples: dict[str, ImpostorSample] = {}

    def clear(self) -> None:
        self._counts.clear()
        self._samples.clear()

    def partition_of(self, subject_id: str) -> str:
        return self._partition(subject_id)

    def count(self, subject_id: str) -> None:
        """A face that exists (start-up): counted, not yet sampled. The gallery counts each
        face once (it knows which rows it holds)."""
        part = self._partition(subject_id)
        self._counts[part] = self._counts.get(part, 0) + 1

    def wants_vectors(self) -> bool:
        """Whether some partition's sample still has room (start-up reads vectors until not)."""
        return any(len(self._samples.get(p, ())) < min(self.capacity, n)
                   for p, n in self._counts.items())

    def sample(self, row_id: int, vector: np.ndarray, subject_id: str) -> None:
        """Offer a counted face's vector to its partition's sample."""
        part = self._partition(subject_id)
        sample = self._samples.get(part)
        if sample is None:
            sample = self._samples[part] = ImpostorSample(self.dim, self.capacity)
        sample.add(row_id, vector, subject_id)

    def add(self, row_id: int, vector: np.ndarray, subject_id: str) -> None:
        self.count(subject_id)
        self.sample(row_id, vector, subject_id)

    def remove(self, row_id: int, subject_id: str) -> None:
        part = self._partition(subject_id)
        if part not in self._counts:
            return
        left = self._counts[part] - 1
        if left:
            self._counts[part] = left
        else:
            del self._counts[part]
        sample = self._samples.get(part)
        if sample is not None:
            sample.remove(row_id)
            if not len(sample):
                del self._samples[part]

    def view(self, partition: str = "") -> GalleryView:
        sample = self._samples.get(partition)
        stats = sample.stats() if sample is not None else CohortStats(0, 0.0, 0.0)
        return GalleryView(self._counts.get(partition, 0), stats)

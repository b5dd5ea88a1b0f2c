"""Thresholds for 1:N identification that hold a false positive identification rate (FPIR).

Why not one threshold. A stranger searched against a gallery is compared with every enrolled
face; it is falsely matched when the *best* of those similarities reaches the threshold. With
a per-comparison false-match rate ``p(t)`` and ``N`` faces, that happens with probability about
``1 - (1 - p(t))^N``: a threshold that lets 1 stranger in 1,000 through against one face lets
~10% through against 100 faces. And ``p(t)`` itself depends on the people and the cameras:
the same model's impostor similarities sit higher on greyscale portraits or one-camera
galleries than on LFW's press photos.

The rule, in three parts:

1. **Gallery size.** For a target FPIR ``a`` and ``N`` enrolled faces, each comparison may
   falsely match with probability ``p = 1 - (1 - a)^(1/N)`` (about ``a / N``).
2. **The model's reference curve**: the cosine exceeded by a share ``p`` of impostor pairs,
   ``mean + std * z(p)``, with the standardised tail ``z(p)`` measured on a large cohort (LFW
   for dlib's model: 87 million impostor pairs). A model without one falls back to the
   gallery's own mean and spread with a Gaussian tail, which is heavier than real
   face-similarity tails, so it errs towards fewer false matches.
3. **The gallery's own impostors.** The enrolled subjects are different people, so the
   similarities *between* subjects are impostor scores of exactly this population and these
   cameras. The reference curve is shifted by how far the gallery's own upper quantile sits
   from it, measured at the rarest rate the gallery's pairs resolve (``RESOLVE_PAIRS`` above
   it) but no rarer than ``p``; the shift is weighted ``n / (n + prior_subjects)`` for ``n``
   subjects (a gallery's pairs carry about as much evidence as its subjects, not its pairs).
   Matching the *tail* rather than the mean matters: on greyscale LFW the impostor mean rises
   by 0.006 while the far tail hardly moves, and a mean shift over-corrects; on
   low-resolution photos the tail moves far more than the mean.

``service`` keeps each tenant's sample up to date as the gallery changes and reports the
threshold, the gallery size and the target with every decision. ``faceserve eval openset``
measures how well this holds (README: "Open-set identification").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

# A gallery's quantile is trusted down to the rate at which this many pairs lie above it.
RESOLVE_PAIRS = 10
_QUANTILE_GRID = tuple(-0.5 - 0.25 * i for i in range(27))  # log10 p: -0.5 ... -7
_HIST_LOW, _HIST_BINS = 0.0, 4000  # similarities in [0, 1] in bins of 2.5e-4


def _upper_from_histogram(counts: np.ndarray, n: int) -> tuple[tuple[float, float], ...]:
    """Upper quantiles of ``n`` values binned by ``_hist_bin`` (bin centres)."""
    if n <= 0:
        return ()
    above = np.cumsum(counts[::-1])[::-1]  # values in this bin or higher
    out = []
    for x in _QUANTILE_GRID:
        k = 10.0**x * n
        if k < RESOLVE_PAIRS:
            break
        i = int(np.nonzero(above >= k)[0][-1])  # highest bin with >= k values at or above
        out.append((x, _HIST_LOW + (i + 0.5) * (1.0 - _HIST_LOW) / _HIST_BINS))
    return tuple(out)


def _hist_bin(sims: np.ndarray) -> np.ndarray:
    b = np.floor((sims - _HIST_LOW) / (1.0 - _HIST_LOW) * _HIST_BINS).astype(np.int64)
    return np.clip(b, 0, _HIST_BINS - 1)


__all__ = [
    "CohortStats",
    "FpirRule",
    "FpirThreshold",
    "ImpostorSample",
    "ImpostorTail",
    "cohort_stats",
    "load_reference",
    "per_comparison_rate",
]

_CALIBRATION_DIR = Path(__file__).with_name("calibration")
_STATS_FIELDS = ("pairs", "mean", "std", "subjects")


def per_comparison_rate(fpir: float, comparisons: int) -> float:
    """``p`` with ``1 - (1 - p)^N = fpir``: the false-match rate each comparison may have."""
    if not 0.0 < fpir < 1.0:
        raise ValueError(f"fpir must be in (0, 1), not {fpir}")
    n = max(int(comparisons), 1)
    return -math.expm1(math.log1p(-fpir) / n)


@dataclass(frozen=True)
class ImpostorTail:
    """The standardised upper tail of impostor similarities: ``z`` at false-match rate ``p``.

    ``log10_p`` ascending-in-rarity grid (e.g. -1 ... -7) with the ``z`` measured there; between
    points ``z`` is interpolated linearly in ``log10 p``, beyond the last point extrapolated
    with the last segment's slope (an exponential tail, which fits the measured one).
    """

    log10_p: tuple[float, ...]
    z: tuple[float, ...]
    source: str

    def z_at(self, p: float) -> float:
        if not self.log10_p:
            return NormalDist().inv_cdf(1.0 - p)
        x = math.log10(max(p, 1e-300))
        xs, zs = self.log10_p, self.z
        if x >= xs[0]:  # a common event: the Gaussian is fine in the bulk
            return min(zs[0], NormalDist().inv_cdf(min(max(1.0 - p, 1e-12), 1 - 1e-12)))
        for i in range(1, len(xs)):
            if x >= xs[i]:
                f = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
                return zs[i - 1] + f * (zs[i] - zs[i - 1])
        slope = (zs[-1] - zs[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else -0.5
        return zs[-1] + (x - xs[-1]) * slope

    @classmethod
    def gaussian(cls) -> ImpostorTail:
        return cls((), (), "gaussian")


@dataclass(frozen=True)
class CohortStats:
    """Impostor similarities summarised: how many pairs among how many subjects, their mean
    and standard deviation. Pairs among ``k`` faces are far from independent (``k`` faces give
    ``k^2/2`` pairs but carry about ``k`` faces' worth of information), so an estimate is
    weighed by its subjects, not its pairs."""

    pairs: int
    mean: float
    std: float
    subjects: int = 0
    # Upper quantiles the pairs resolve: (log10 p, similarity exceeded by a share p of
    # pairs), rarest last, only where at least RESOLVE_PAIRS pairs lie above.
    upper: tuple[tuple[float, float], ...] = ()

    def quantile(self, p: float) -> float | None:
        """The similarity a share ``p`` of pairs exceeds, interpolated in log p; None when
        ``p`` is rarer than the pairs resolve."""
        if not self.upper:
            return None
        x = math.log10(p)
        xs = [u[0] for u in self.upper]
        if x < xs[-1] - 1e-9:
            return None
        if x >= xs[0]:
            return self.upper[0][1]
        for (x0, q0), (x1, q1) in zip(self.upper, self.upper[1:], strict=False):
            if x1 <= x <= x0:
                return q0 + (x - x0) / (x1 - x0) * (q1 - q0)
        return self.upper[-1][1]


def cohort_stats(vectors: np.ndarray, subjects: np.ndarray, max_faces: int = 2000) -> CohortStats:
    """Mean and std of the similarities between faces of *different* subjects.

    At most ``max_faces`` faces are used (the first ones: pass them in a stable order so that
    replicas agree), which bounds the cost at ~2 million pairs while leaving the estimate's
    error far below the spread between populations.
    """
    v = np.asarray(vectors, np.float32)[:max_faces].astype(np.float64)
    s = np.asarray(subjects)[:max_faces]
    if len(v) < 2:
        return CohortStats(0, 0.0, 0.0)
    sims = v @ v.T
    different = s[:, None] != s[None, :]
    iu = np.triu_indices(len(v), 1)
    mask = different[iu]
    values = sims[iu][mask]
    if len(values) == 0:
        return CohortStats(0, 0.0, 0.0)
    counts = np.bincount(_hist_bin(values), minlength=_HIST_BINS)
    return CohortStats(len(values), float(values.mean()), float(values.std()),
                       len(np.unique(s)), _upper_from_histogram(counts, len(values)))


class ImpostorSample:
    """Up to ``capacity`` enrolled faces, and running sums of the similarities between the
    faces of *different* subjects among them: the gallery's impostor distribution, kept up to
    date at O(capacity) per enrolled or erased face instead of O(capacity^2) per query.

    Faces join while there is room (in the order they are added, so processes that apply the
    same changes in the same order hold the same sample) and leave when erased. Not
    thread-safe: the owner serialises changes.
    """

    def __init__(self, dim: int, capacity: int = 2000) -> None:
        self.capacity = capacity
        self._vectors = np.zeros((capacity, dim), np.float64)
        self._subjects: list[str] = []
        self._codes = np.zeros(capacity, np.int64)  # subject of each slot, as a number
        self._code_of: dict[str, int] = {}
        self._next_code = 0  # never reused: a freed code could collide with a live one
        self._rows: list[int] = []
        self._slot: dict[int, int] = {}
        self._per_subject: dict[str, int] = {}
        self._n = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._hist = np.zeros(_HIST_BINS, np.int64)
        self._stats: CohortStats | None = None  # until the next change (read per query)

    def __len__(self) -> int:
        return len(self._rows)

    def _others(self, slot: int, subject: str) -> np.ndarray:
        """Similarities of the face in ``slot`` with the other subjects' faces present."""
        n = len(self._rows)
        sims = self._vectors[:n] @ self._vectors[slot]
        keep = self._codes[:n] != self._code_of[subject]
        keep[slot] = False
        return sims[keep]

    def add(self, row_id: int, vector: np.ndarray, subject: str) -> None:
        if row_id in self._slot or len(self._rows) >= self.capacity:
            return
        slot = len(self._rows)
        self._vectors[slot] = np.asarray(vector, np.float64)
        if subject not in self._code_of:
            self._code_of[subject] = self._next_code
            self._next_code += 1
        self._codes[slot] = self._code_of[subject]
        self._rows.append(row_id)
        self._subjects.append(subject)
        self._slot[row_id] = slot
        self._stats = None
        self._per_subject[subject] = self._per_subject.get(subject, 0) + 1
        sims = self._others(slot, subject)
        self._n += len(sims)
        self._sum += float(sims.sum())
        self._sumsq += float(np.dot(sims, sims))
        np.add.at(self._hist, _hist_bin(sims), 1)

    def remove(self, row_id: int) -> None:
        slot = self._slot.pop(row_id, None)
        if slot is None:
            return
        self._stats = None
        subject = self._subjects[slot]
        sims = self._others(slot, subject)
        left = self._per_subject.pop(subject) - 1
        if left:
            self._per_subject[subject] = left
        else:
            del self._code_of[subject]
        self._n -= len(sims)
        self._sum -= float(sims.sum())
        self._sumsq -= float(np.dot(sims, sims))
        np.add.at(self._hist, _hist_bin(sims), -1)
        last = len(self._rows) - 1
        if slot != last:  # move the last face into the hole
            self._vectors[slot] = self._vectors[last]
            self._codes[slot] = self._codes[last]
            self._rows[slot] = self._rows[last]
            self._subjects[slot] = self._subjects[last]
            self._slot[self._rows[slot]] = slot
        self._rows.pop()
        self._subjects.pop()
        if self._n == 0:  # no pairs left: clear rounding residue
            self._sum = self._sumsq = 0.0

    def stats(self) -> CohortStats:
        if self._stats is None:
            if self._n <= 0:
                self._stats = CohortStats(0, 0.0, 0.0)
            else:
                mean = self._sum / self._n
                std = math.sqrt(max(self._sumsq / self._n - mean * mean, 0.0))
                self._stats = CohortStats(self._n, mean, std, len(self._per_subject),
                                          _upper_from_histogram(self._hist, self._n))
        return self._stats


@dataclass(frozen=True)
class FpirThreshold:
    """One threshold and everything it was computed from (reported with each decision)."""

    threshold: float
    fpir: float  # the target
    comparisons: int  # faces in the gallery it was computed for
    per_comparison_far: float
    z: float
    mean: float  # the base curve's impostor mean and std (reference, or gallery without one)
    std: float
    gallery_pairs: int  # cross-subject pairs the gallery contributed
    shift: float = 0.0  # how far the gallery moved the base curve's threshold
    matched_at: float | None = None  # the rate at which gallery and base curve were compared


@dataclass(frozen=True)
class FpirRule:
    """The model's reference impostor distribution and how strongly a gallery may move it."""

    model: str
    reference: CohortStats
    tail: ImpostorTail
    prior_subjects: int = 10
    # Thresholds are never lower than this: a gallery of one face has no impostor pairs and
    # a tiny target at N = 1 is a per-comparison operating point, which the reference covers.
    floor: float = -1.0

    def threshold(
        self, fpir: float, comparisons: int, gallery: CohortStats | None = None
    ) -> FpirThreshold:
        p = per_comparison_rate(fpir, comparisons)
        z = self.tail.z_at(p)
        usable = gallery is not None and gallery.pairs > 0 and gallery.subjects > 1
        # The base curve: the reference's, or (a model without one) the gallery's own.
        if self.reference.pairs > 0 or not usable:
            mean, std = self.reference.mean, self.reference.std
        else:
            assert gallery is not None
            mean, std = gallery.mean, gallery.std
        t = mean + std * z
        shift, at, n = 0.0, None, 0
        if usable:
            assert gallery is not None
            n = gallery.pairs
            w = gallery.subjects / (gallery.subjects + self.prior_subjects)
            # Compare the gallery with the base curve as deep in the tail as the gallery's
            # pairs resolve, but no deeper than the rate needed.
            if gallery.upper:
                at = max(p, 10.0 ** gallery.upper[-1][0])
                q = gallery.quantile(at)
                assert q is not None
                shift = w * (q - (mean + std * self.tail.z_at(at)))
            else:  # too few pairs for any quantile: the mean is all there is
                shift = w * (gallery.mean - mean)
        t = min(max(t + shift, self.floor), 1.0)
        return FpirThreshold(
            threshold=float(t), fpir=fpir, comparisons=max(int(comparisons), 1),
            per_comparison_far=p, z=z, mean=mean, std=std, gallery_pairs=n, shift=shift,
            matched_at=at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            # the reference's own quantiles are its tail; only a gallery needs ``upper``
            "reference": {k: v for k, v in asdict(self.reference).items() if k != "upper"},
            "tail": {"log10_p": list(self.tail.log10_p), "z": list(self.tail.z),
                     "source": self.tail.source},
            "prior_subjects": self.prior_subjects,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FpirRule:
        tail = raw.get("tail") or {}
        return cls(
            model=str(raw["model"]),
            reference=CohortStats(**{k: raw["reference"][k] for k in _STATS_FIELDS
                                     if k in raw["reference"]}),
            tail=ImpostorTail(tuple(float(x) for x in tail.get("log10_p", ())),
                              tuple(float(x) for x in tail.get("z", ())),
                              str(tail.get("source", "gaussian"))),
            prior_subjects=int(raw.get("prior_subjects", 10)),
        )


def load_reference(model: str, path: str | Path | None = None) -> FpirRule | None:
    """The shipped (or given) reference of ``model``; None when there is none for it."""
    file = Path(path) if path is not None else _CALIBRATION_DIR / f"{model}.json"
    if not file.is_file():
        return None
    rule = FpirRule.from_dict(json.loads(file.read_text(encoding="utf-8")))
    if rule.model != model:
        raise ValueError(f"{file} is the impostor reference of {rule.model!r}, not {model!r}")
    return rule

"""Verification metrics on similarity scores: ten-fold accuracy, ROC, AUC, EER, TAR@FAR.

Conventions used throughout (and by the service): a pair is *accepted* (called "same person")
when ``score >= threshold``; higher scores mean more similar (cosine similarity here).

Every metric is computed from one sweep over the distinct scores in descending order
(:func:`_sweep`): the operating points are "accept the top ``k`` distinct score values" for
``k = 0..m``, so tied scores are always accepted or rejected together, exactly as a threshold
would treat them. A threshold reported for the cut between distinct scores ``a > b`` is their
midpoint (an empirical rate is the same anywhere in ``(b, a]``; the midpoint generalises best
to unseen pairs); the cut above everything is the next float above the highest score and the
cut below everything the next float below the lowest, so every threshold is a finite number
that JSON can carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FoldResult",
    "OperatingPoint",
    "Roc",
    "TenFold",
    "accuracy_at",
    "auc",
    "best_threshold",
    "eer",
    "min_resolvable_far",
    "roc_curve",
    "tar_at_far",
    "ten_fold_accuracy",
]


def _as_arrays(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, y.astype(bool)


@dataclass(frozen=True)
class _Sweep:
    distinct: np.ndarray  # (m,) distinct scores, descending
    tp: np.ndarray  # (m+1,) genuine pairs accepted when the top k distinct values are accepted
    fp: np.ndarray  # (m+1,) impostor pairs accepted likewise
    n_pos: int
    n_neg: int

    def thresholds(self) -> np.ndarray:
        """``(m+1,)`` threshold of each cut: accept iff ``score >= thresholds[k]``."""
        d = self.distinct
        if d.size == 0:
            return np.array([0.0])
        upper, lower = d[:-1], d[1:]
        mid = lower + (upper - lower) / 2
        # Adjacent floats: the midpoint can round onto the lower score, which would accept it.
        mid = np.where(mid > lower, mid, upper)
        return np.concatenate(
            [[np.nextafter(d[0], np.inf)], mid, [np.nextafter(d[-1], -np.inf)]]
        )


def _sweep(scores: np.ndarray, labels: np.ndarray) -> _Sweep:
    s, y = _as_arrays(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Last position of each run of equal scores: the cut falls after the whole run.
    ends = np.flatnonzero(np.diff(s, append=-np.inf) != 0)
    cum_pos = np.cumsum(y)
    cum_neg = np.cumsum(~y)
    zero = np.zeros(1, dtype=np.int64)
    return _Sweep(
        distinct=s[ends],
        tp=np.concatenate([zero, cum_pos[ends]]),
        fp=np.concatenate([zero, cum_neg[ends]]),
        n_pos=int(y.sum()),
        n_neg=int((~y).sum()),
    )


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified correctly when ``score >= threshold`` means "same"."""
    s, y = _as_arrays(scores, labels)
    if s.size == 0:
        raise ValueError("no pairs")
    return float(np.mean((s >= threshold) == y))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The accuracy-maximising threshold and its accuracy on these pairs.

    All ``m + 1`` cuts of the sweep are candidates. When several reach the best accuracy, the
    middle one in ascending threshold order is taken (index ``(count - 1) // 2``), which keeps
    the choice away from the edges of a plateau instead of favouring accepts or rejects.
    Works with a single class too (then the cut below or above everything wins).
    """
    sw = _sweep(scores, labels)
    n = sw.n_pos + sw.n_neg
    if n == 0:
        raise ValueError("no pairs to choose a threshold on")
    correct = sw.tp + (sw.n_neg - sw.fp)
    # Sweep order is descending thresholds; flip to ascending for the tie rule.
    correct_asc = correct[::-1]
    winners = np.flatnonzero(correct_asc == correct_asc.max())
    k_asc = winners[(winners.size - 1) // 2]
    k = correct.size - 1 - k_asc
    return float(sw.thresholds()[k]), float(correct[k] / n)


@dataclass(frozen=True)
class FoldResult:
    fold: int
    threshold: float  # chosen on the other folds
    accuracy: float  # on this fold
    train_accuracy: float  # of that threshold on the other folds
    pairs: int


@dataclass(frozen=True)
class TenFold:
    folds: tuple[FoldResult, ...]
    mean: float
    std: float  # population std (ddof=0), as most published LFW code reports it
    sem: float  # LFW's standard error: sample std (ddof=1) / sqrt(folds)


def ten_fold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> TenFold:
    """LFW View-2 protocol: for each fold, the threshold is chosen on all other folds.

    Works for any number (>= 2) of folds; named after the standard ten.
    """
    s, y = _as_arrays(scores, labels)
    f = np.asarray(folds).reshape(-1)
    if f.shape != s.shape:
        raise ValueError("folds must have one entry per pair")
    ids = np.unique(f)
    if ids.size < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {ids.size}")
    results = []
    for fold in ids:
        test = f == fold
        threshold, train_acc = best_threshold(s[~test], y[~test])
        results.append(
            FoldResult(
                fold=int(fold),
                threshold=threshold,
                accuracy=accuracy_at(s[test], y[test], threshold),
                train_accuracy=train_acc,
                pairs=int(test.sum()),
            )
        )
    acc = np.array([r.accuracy for r in results])
    return TenFold(
        folds=tuple(results),
        mean=float(acc.mean()),
        std=float(acc.std()),
        sem=float(acc.std(ddof=1) / np.sqrt(acc.size)),
    )


@dataclass(frozen=True)
class Roc:
    """The ROC polyline from (0, 0) (accept nothing) to (1, 1) (accept everything)."""

    fpr: np.ndarray  # (m+1,) false-accept rate, non-decreasing
    tpr: np.ndarray  # (m+1,) true-accept rate, non-decreasing
    thresholds: np.ndarray  # (m+1,) accept iff score >= threshold, decreasing
    n_pos: int
    n_neg: int


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> Roc:
    sw = _sweep(scores, labels)
    if sw.n_pos == 0 or sw.n_neg == 0:
        raise ValueError(
            f"a ROC needs genuine and impostor pairs, got {sw.n_pos} and {sw.n_neg}"
        )
    return Roc(
        fpr=sw.fp / sw.n_neg,
        tpr=sw.tp / sw.n_pos,
        thresholds=sw.thresholds(),
        n_pos=sw.n_pos,
        n_neg=sw.n_neg,
    )


def auc(roc: Roc) -> float:
    """Area under the ROC polyline: P(genuine > impostor) + 0.5 P(genuine == impostor)."""
    return float(np.sum(np.diff(roc.fpr) * (roc.tpr[1:] + roc.tpr[:-1]) / 2))


def eer(roc: Roc) -> tuple[float, float]:
    """Equal error rate and the threshold nearest to it.

    FNR - FPR falls from 1 to -1 along the ROC; the EER is where it crosses zero, found by
    linear interpolation between the two cuts around the crossing (both rates are linear along
    a ROC segment, so they meet at one value there). The threshold is that of the cut whose
    |FNR - FPR| is smaller (the earlier one on a tie).
    """
    fnr = 1.0 - roc.tpr
    d = fnr - roc.fpr
    i = int(np.argmax(d <= 0))  # first cut at or past the crossing; d[-1] = -1 guarantees one
    if d[i] == 0 or i == 0:
        return float(roc.fpr[i]), float(roc.thresholds[i])
    a = d[i - 1] / (d[i - 1] - d[i])
    rate = roc.fpr[i - 1] + a * (roc.fpr[i] - roc.fpr[i - 1])
    k = i - 1 if abs(d[i - 1]) <= abs(d[i]) else i
    return float(rate), float(roc.thresholds[k])


def min_resolvable_far(n_impostors: int) -> float:
    """The smallest non-zero FAR these impostor pairs can measure: one accepted impostor."""
    return 1.0 / n_impostors if n_impostors else float("inf")


@dataclass(frozen=True)
class OperatingPoint:
    far: float  # the target
    threshold: float  # accept iff similarity >= threshold
    tar: float  # true-accept rate at that threshold
    far_measured: float  # false-accept rate actually measured (<= far)
    impostor_pairs: int
    genuine_pairs: int

    @property
    def resolvable(self) -> bool:
        """Whether the target is at least one impostor pair's worth of FAR on this data.

        Below that, the point only says "no impostor was accepted", which does not
        distinguish a FAR of 1e-4 from one of 1e-3.
        """
        return self.far >= min_resolvable_far(self.impostor_pairs)


def tar_at_far(roc: Roc, far: float) -> OperatingPoint:
    """Highest TAR whose measured FAR does not exceed ``far`` (FaceNet's VAL@FAR)."""
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    # fpr is non-decreasing, so the admissible cuts are a prefix; take its last one. A tiny
    # tolerance keeps e.g. 3/3000 admissible for far=1e-3 despite float rounding.
    k = int(np.searchsorted(roc.fpr, far * (1 + 1e-9), side="right")) - 1
    return OperatingPoint(
        far=far,
        threshold=float(roc.thresholds[k]),
        tar=float(roc.tpr[k]),
        far_measured=float(roc.fpr[k]),
        impostor_pairs=roc.n_neg,
        genuine_pairs=roc.n_pos,
    )

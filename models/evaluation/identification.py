"""Open-set identification metrics (1:N), in the words of NIST FRTE 1:N and ISO/IEC 19795-1.

A *probe* is searched against a gallery of enrolled subjects; the search returns the best
subject and its score. Two kinds of probe:

* **mated** (a photo of an enrolled subject): it is *identified* at threshold ``t`` when the
  rank-1 subject is the right one **and** its score reaches ``t``. DIR(t) is the share
  identified; FNIR(t) = 1 - DIR(t) (missed: wrong subject first, or the right one below ``t``).
* **non-mated** (a stranger, never enrolled): a *false positive* at ``t`` when its rank-1 score
  reaches ``t``, whoever that subject is. FPIR(t) is their share.

Everything here works on the rank-1 results alone, so it is independent of how the scores
were produced (faces, subjects, combination rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DetCurve",
    "Rank1",
    "det_curve",
    "dir_at_fpir",
    "rank1",
    "rates_at",
    "subject_scores",
]


@dataclass(frozen=True)
class Rank1:
    """Rank-1 subject and score per probe."""

    subject: np.ndarray  # (P,) int: index of the best subject
    score: np.ndarray  # (P,) float: its score


def subject_scores(
    face_scores: np.ndarray, face_subject: np.ndarray, n_subjects: int, how: str = "max"
) -> np.ndarray:
    """Probe x subject scores from probe x face scores.

    ``how="max"``: a subject scores as its best face (what the service's index search gives);
    ``"mean"``: the mean over the subject's faces. ``face_subject[j]`` is face j's subject.
    """
    face_scores = np.asarray(face_scores, dtype=np.float64)
    face_subject = np.asarray(face_subject, dtype=np.int64)
    out = np.full((face_scores.shape[0], n_subjects), -np.inf)
    if how == "max":
        np.maximum.at(out.T, face_subject, face_scores.T)
        return out
    if how == "mean":
        sums = np.zeros((face_scores.shape[0], n_subjects))
        np.add.at(sums.T, face_subject, face_scores.T)
        counts = np.bincount(face_subject, minlength=n_subjects).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums / counts
        out[:, counts == 0] = -np.inf
        return out
    raise ValueError(f"unknown combination {how!r}; use 'max' or 'mean'")


def rank1(scores: np.ndarray) -> Rank1:
    """The best subject of each probe (row) of a probe x subject score matrix."""
    scores = np.asarray(scores, dtype=np.float64)
    best = np.argmax(scores, axis=1)
    return Rank1(subject=best, score=scores[np.arange(len(scores)), best])


def rates_at(
    threshold: float,
    mated: Rank1,
    truth: np.ndarray,
    nonmated_scores: np.ndarray,
) -> tuple[float, float]:
    """(FPIR, DIR) at ``threshold``: accept iff score >= threshold."""
    fpir = float(np.mean(np.asarray(nonmated_scores) >= threshold)) if len(nonmated_scores) else 0.0
    hit = (mated.subject == np.asarray(truth)) & (mated.score >= threshold)
    return fpir, float(np.mean(hit)) if len(hit) else 0.0


@dataclass(frozen=True)
class DetCurve:
    """FNIR against FPIR over every threshold at which either changes (thresholds descending)."""

    thresholds: np.ndarray
    fpir: np.ndarray
    fnir: np.ndarray


def det_curve(mated: Rank1, truth: np.ndarray, nonmated_scores: np.ndarray) -> DetCurve:
    """The DET curve: each distinct score is a threshold (accept iff score >= it)."""
    truth = np.asarray(truth)
    correct = mated.subject == truth
    nonmated = np.sort(np.asarray(nonmated_scores, dtype=np.float64))
    hits = np.sort(mated.score[correct].astype(np.float64))
    thresholds = np.unique(np.concatenate([nonmated, hits]))[::-1]
    n_non, n_mated = max(len(nonmated), 1), max(len(mated.score), 1)
    # counts of scores >= t, by binary search on the sorted arrays
    fp = len(nonmated) - np.searchsorted(nonmated, thresholds, side="left")
    tp = len(hits) - np.searchsorted(hits, thresholds, side="left")
    return DetCurve(thresholds=thresholds, fpir=fp / n_non, fnir=1.0 - tp / n_mated)


def dir_at_fpir(
    target: float, mated: Rank1, truth: np.ndarray, nonmated_scores: np.ndarray
) -> tuple[float, float, float] | None:
    """(DIR, threshold, FPIR measured) at the lowest threshold whose FPIR is <= ``target``.

    None when the strangers cannot resolve ``target`` (fewer than 1/target of them): the
    only statement the data then supports is "no stranger accepted", true at many FPIRs.
    """
    nonmated = np.asarray(nonmated_scores, dtype=np.float64)
    if len(nonmated) == 0 or target * len(nonmated) < 1:
        return None
    allowed = int(np.floor(target * len(nonmated) + 1e-9))  # false positives permitted
    ordered = np.sort(nonmated)[::-1]
    # Accepting scores >= t admits every stranger scoring >= t; the lowest admissible t sits
    # just above the (allowed+1)-th highest stranger score.
    if allowed >= len(ordered):
        threshold = float(min(ordered[-1], mated.score.min(initial=ordered[-1])))
    else:
        threshold = float(np.nextafter(ordered[allowed], np.inf))
    fpir, dir_ = rates_at(threshold, mated, truth, nonmated)
    return dir_, threshold, fpir

"""``faceserve eval negatives``: what "not this person" negatives gain and cost, on LFW.

The protocol imitates a user correcting an open-set gallery (seeded):

1. People with two or more photos are split in two halves. The *enrolled* half gets a subject
   each (its first ``enroll_per_person`` photos, in a seeded order); its other photos are
   genuine probes. The other half are *strangers*: the first half of each one's photos are
   *marking* photos, the rest *later* photos. People with one photo are strangers with a
   marking photo only.
2. Marking: every marking photo is identified; each that matches someone (a false match:
   strangers are enrolled nowhere) is marked "not this person" for that subject, i.e. becomes
   one of its negatives. Identify then refuses candidates by the rule under test, so a photo
   may fall to its next candidate above the threshold: marking repeats (``rounds``) until no
   marking photo matches anyone, as a user would go on correcting.
3. Measured, without and with the negatives: false matches of the marking photos themselves;
   of the *later* photos of the strangers (other photos of people mistaken for a subject: the
   "similar faces" the negatives should also stop; the later photos of the other strangers are
   counted apart); and true matches of the genuine probes (rank 1 is the right subject, at or
   above the threshold, not refused), with how many were lost.

Both rules of :mod:`models.negatives` are measured at each threshold. Identification is
exhaustive (every probe against every subject's best face), as the service's search is for a
gallery of this size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.negatives import RULES, Rule, refused_mask

__all__ = ["Split", "evaluate_negatives", "markdown", "split_people"]

Split = dict[str, Any]


def split_people(labels: Sequence[str], *, seed: int = 0, enroll_per_person: int = 1) -> Split:
    """Indices of gallery faces (with their subject index), genuine probes (with theirs),
    marking photos and later photos (with the stranger each shows)."""
    people: dict[str, list[int]] = {}
    for i, name in enumerate(labels):
        people.setdefault(str(name), []).append(i)
    rng = random.Random(seed)
    names = sorted(people)
    multi = [n for n in names if len(people[n]) >= 2]
    single = [n for n in names if len(people[n]) == 1]
    rng.shuffle(multi)
    enrolled, strangers = multi[: len(multi) // 2], multi[len(multi) // 2:]
    gallery, gallery_subject, genuine, genuine_subject = [], [], [], []
    for s, name in enumerate(enrolled):
        photos = people[name][:]
        rng.shuffle(photos)
        k = min(enroll_per_person, len(photos) - 1)
        gallery += photos[:k]
        gallery_subject += [s] * k
        genuine += photos[k:]
        genuine_subject += [s] * (len(photos) - k)
    marking, marking_who, later, later_who = [], [], [], []
    for w, name in enumerate(strangers + single):
        photos = people[name][:]
        rng.shuffle(photos)
        half = (len(photos) + 1) // 2
        marking += photos[:half]
        marking_who += [w] * half
        later += photos[half:]
        later_who += [w] * (len(photos) - half)
    return {
        "subjects": len(enrolled),
        "gallery": np.array(gallery), "gallery_subject": np.array(gallery_subject),
        "genuine": np.array(genuine), "genuine_subject": np.array(genuine_subject),
        "marking": np.array(marking), "marking_who": np.array(marking_who),
        "later": np.array(later), "later_who": np.array(later_who),
    }


def _best_per_subject(probes: np.ndarray, faces: np.ndarray, owner: np.ndarray,
                      subjects: int) -> np.ndarray:
    """(probes, subjects): each probe's similarity with each subject's best face; -inf for a
    subject without faces."""
    out = np.full((len(probes), subjects), -np.inf, dtype=np.float32)
    if len(faces) == 0 or len(probes) == 0:
        return out
    sims = probes @ faces.T
    for s in np.unique(owner):
        out[:, s] = sims[:, owner == s].max(axis=1)
    return out


def _decide(pos: np.ndarray, neg: np.ndarray, threshold: float, rule: Rule) -> np.ndarray:
    """Each probe's matched subject (-1: none): the most similar subject at or above the
    threshold that no negative refuses."""
    allowed = (pos >= threshold) & ~refused_mask(pos, neg, threshold, rule)
    scores = np.where(allowed, pos, -np.inf)
    best = np.argmax(scores, axis=1)
    return np.where(np.isfinite(scores[np.arange(len(pos)), best]), best, -1)


def run_rule(vectors: np.ndarray, split: Split, threshold: float, rule: Rule,
             rounds: int = 5) -> dict[str, Any]:
    """The protocol of the module docstring for one rule and threshold."""
    v = np.asarray(vectors, np.float32)
    n_subjects = split["subjects"]
    g, gs = v[split["gallery"]], split["gallery_subject"]
    sets = {name: v[split[name]] for name in ("genuine", "marking", "later")}
    pos = {name: _best_per_subject(p, g, gs, n_subjects) for name, p in sets.items()}
    none = {name: np.full_like(p, -np.inf) for name, p in pos.items()}
    before = {name: _decide(pos[name], none[name], threshold, rule) for name in pos}

    neg_rows: list[int] = []  # rows of the marking set kept as negatives
    neg_subject: list[int] = []
    marked_pairs: set[tuple[int, int]] = set()
    neg = dict(none)
    done_rounds = 0
    for _ in range(rounds):
        decided = _decide(pos["marking"], neg["marking"], threshold, rule)
        new = [(int(i), int(s)) for i, s in enumerate(decided) if s >= 0
               and (int(i), int(s)) not in marked_pairs]
        if not new:
            break
        done_rounds += 1
        for i, s in new:
            marked_pairs.add((i, s))
            neg_rows.append(i)
            neg_subject.append(s)
        negatives = sets["marking"][np.array(neg_rows)]
        owner = np.array(neg_subject)
        neg = {name: _best_per_subject(p, negatives, owner, n_subjects)
               for name, p in sets.items()}
    after = {name: _decide(pos[name], neg[name], threshold, rule) for name in pos}
    # By construction (rule "nearest"): a marked photo is never again given to the subject it
    # was marked for (it may still match another subject after the last round).
    still = sum(int(after["marking"][i] == s) for i, s in marked_pairs)

    truth = split["genuine_subject"]
    right_before = before["genuine"] == truth
    right_after = after["genuine"] == truth
    wrong_before = (before["genuine"] >= 0) & ~right_before
    wrong_after = (after["genuine"] >= 0) & ~right_after
    # Later photos of strangers who had a photo marked (the "similar faces") and of the rest.
    who = split["later_who"]
    mistaken = {int(split["marking_who"][i]) for i in neg_rows}
    similar = np.array([int(w) in mistaken for w in who], dtype=bool)

    def rate(mask: np.ndarray) -> dict[str, Any]:
        return {"count": int(mask.sum()), "of": int(mask.size),
                "rate": round(float(mask.mean()), 5) if mask.size else 0.0}

    later_fm_before = before["later"] >= 0
    later_fm_after = after["later"] >= 0
    return {
        "threshold": threshold, "rule": rule, "rounds": done_rounds,
        "negatives": len(neg_rows), "subjects_with_negatives": len(set(neg_subject)),
        "marking_false_matches": {"before": rate(before["marking"] >= 0),
                                  "after": rate(after["marking"] >= 0)},
        "marked_photos_matched_to_the_same_subject": still,
        "later_similar_false_matches": {"before": rate(later_fm_before[similar]),
                                        "after": rate(later_fm_after[similar])},
        "later_other_false_matches": {"before": rate(later_fm_before[~similar]),
                                      "after": rate(later_fm_after[~similar])},
        "later_false_matches": {"before": rate(later_fm_before), "after": rate(later_fm_after)},
        "genuine_true_matches": {"before": rate(right_before), "after": rate(right_after)},
        "genuine_true_matches_lost": int((right_before & ~right_after).sum()),
        "genuine_wrong_matches": {"before": rate(wrong_before), "after": rate(wrong_after)},
    }


def fpir_threshold(vectors: np.ndarray, split: Split, fpir: float) -> float:
    """The threshold at which ``fpir`` of the strangers' marking photos match someone in this
    gallery (before any negative): the operating point the service's ``identify_fpir`` aims
    at, read off the data."""
    v = np.asarray(vectors, np.float32)
    best = _best_per_subject(v[split["marking"]], v[split["gallery"]], split["gallery_subject"],
                             split["subjects"]).max(axis=1)
    return round(float(np.quantile(best, 1.0 - fpir)), 4)


def evaluate_negatives(
    vectors: np.ndarray,
    labels: Sequence[str],
    out_dir: Path | None = None,
    *,
    thresholds: Sequence[float] = (0.915,),
    fpirs: Sequence[float] = (),
    seed: int = 0,
    enroll_per_person: Sequence[int] = (1, 3),
    rounds: int = 5,
    dataset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every rule at every threshold (given, and read off the data for each ``fpirs``) and
    gallery depth; ``negatives.json`` and ``negatives.md`` in ``out_dir`` when given."""
    results = []
    for depth in enroll_per_person:
        split = split_people(labels, seed=seed, enroll_per_person=depth)
        sizes = {k: len(split[k]) for k in ("gallery", "genuine", "marking", "later")}
        points = [(float(t), None) for t in thresholds] + [
            (fpir_threshold(vectors, split, f), f) for f in fpirs]
        for t, fpir in points:
            for rule in RULES:
                r = run_rule(vectors, split, t, rule, rounds)  # type: ignore[arg-type]
                results.append({"enroll_per_person": depth, "subjects": split["subjects"],
                                "fpir": fpir,
                                **{f"{k}_photos": n for k, n in sizes.items()}, **r})
    report = {"dataset": dataset or {}, "seed": seed, "rounds": rounds, "results": results}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "negatives.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out_dir / "negatives.md").write_text(markdown(report), encoding="utf-8")
    return report


def markdown(report: dict[str, Any]) -> str:
    def ba(d: dict[str, Any]) -> str:
        return f"{d['before']['count']} -> {d['after']['count']}"

    lines = [
        "| photos enrolled per subject | threshold | rule | negatives (subjects) | marked photos "
        "matched (to their subject) | later photos of the mistaken strangers matched | other "
        "strangers' later photos matched | genuine true matches | true matches lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        g = r["genuine_true_matches"]
        lines.append(
            f"| {r['enroll_per_person']} | {r['threshold']}"
            + (f" (FPIR {r['fpir']})" if r.get("fpir") else "")
            + f" | {r['rule']} | {r['negatives']} "
            f"({r['subjects_with_negatives']}) | {ba(r['marking_false_matches'])} of "
            f"{r['marking_false_matches']['before']['of']} "
            f"({r['marked_photos_matched_to_the_same_subject']}) | "
            f"{ba(r['later_similar_false_matches'])} of "
            f"{r['later_similar_false_matches']['before']['of']} | "
            f"{ba(r['later_other_false_matches'])} of "
            f"{r['later_other_false_matches']['before']['of']} | "
            f"{g['before']['count']} -> {g['after']['count']} of {g['before']['of']} | "
            f"{r['genuine_true_matches_lost']} |")
    return "\n".join(lines) + "\n"

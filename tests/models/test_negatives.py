"""The "not this person" rule (models/negatives.py) and its evaluation protocol, on synthetic
people: a marked face is refused by construction, and a negative costs a true match only when
the probe is nearer to it than to every enrolled face of the subject."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.negatives import evaluate_negatives, run_rule, split_people
from models.negatives import nearest_negative, refused, refused_mask


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_the_marked_face_itself_is_always_refused() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        face, negative_other = unit(rng.normal(size=(2, 128)))
        negatives = np.stack([negative_other, face])
        hit = nearest_negative(face, negatives)
        assert hit is not None and hit.index == 1 and hit.similarity == pytest.approx(1.0)
        # Whatever its similarity to the subject's best face, even a tie (an identical face).
        for positive in (0.5, 0.99, hit.similarity):
            assert refused(positive, hit.similarity, threshold=0.9)
    assert nearest_negative(unit(rng.normal(size=128)), np.zeros((0, 128))) is None


def test_the_two_rules_differ_only_where_a_probe_is_nearer_the_subject() -> None:
    pos = np.array([0.95, 0.95, 0.95, 0.80])
    neg = np.array([0.96, 0.93, 0.90, 0.85])
    assert refused_mask(pos, neg, 0.92, "nearest").tolist() == [True, False, False, True]
    assert refused_mask(pos, neg, 0.92, "threshold").tolist() == [True, True, False, False]
    with pytest.raises(ValueError):
        refused_mask(pos, neg, 0.92, "other")  # type: ignore[arg-type]


def people(n_people: int, photos: int, spread: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """Unit vectors of people with a few photos each; some people have a lookalike twin."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_people, 128)))
    twins = unit(centres[: n_people // 4] + 0.35 * unit(rng.normal(size=(n_people // 4, 128))))
    centres = np.concatenate([centres, twins])
    vectors, labels = [], []
    for p, c in enumerate(centres):
        for _ in range(photos):
            vectors.append(unit(c + spread * unit(rng.normal(size=128))))
            labels.append(f"p{p:04d}")
    return np.stack(vectors), labels


def test_the_protocol_removes_false_matches_and_counts_what_it_costs() -> None:
    vectors, labels = people(80, 4, 0.25, seed=1)
    split = split_people(labels, seed=0, enroll_per_person=1)
    assert split["subjects"] == 50  # half of the 100 people with several photos
    enrolled = {labels[i] for i in split["gallery"]}
    assert not enrolled & {labels[i] for i in np.concatenate([split["marking"],
                                                              split["later"]])}
    r = run_rule(vectors, split, 0.9, "nearest")
    assert r["negatives"] > 0  # the twins are mistaken for their enrolled sibling
    # By construction: no marked photo is matched to anyone once the marking is done.
    assert r["marking_false_matches"]["after"]["count"] == 0
    assert r["marking_false_matches"]["before"]["count"] > 0
    assert r["marked_photos_matched_to_the_same_subject"] == 0
    similar = r["later_similar_false_matches"]
    assert similar["after"]["count"] < similar["before"]["count"]
    # Counts are consistent: lost true matches are the difference.
    g = r["genuine_true_matches"]
    assert g["before"]["count"] - g["after"]["count"] == r["genuine_true_matches_lost"]
    t = run_rule(vectors, split, 0.9, "threshold")
    assert t["genuine_true_matches_lost"] >= r["genuine_true_matches_lost"]
    report = evaluate_negatives(vectors, labels, thresholds=[0.9], fpirs=[0.05],
                                enroll_per_person=[1, 2])
    assert len(report["results"]) == 8
    at_fpir = [r for r in report["results"] if r["fpir"] == 0.05]
    for r in at_fpir:  # the threshold read off the data holds that share of strangers
        before = r["marking_false_matches"]["before"]
        assert before["count"] <= 0.05 * before["of"] + 1

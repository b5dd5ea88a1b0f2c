"""The verification metrics against values worked out by hand on tiny similarity lists.

Convention (as in the module): a pair is accepted when ``score >= threshold``; a cut between
distinct scores ``a > b`` is reported as their midpoint. Each docstring shows the arithmetic.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.evaluation.metrics import (
    accuracy_at,
    auc,
    best_threshold,
    eer,
    min_resolvable_far,
    roc_curve,
    tar_at_far,
    ten_fold_accuracy,
)

# Six pairs, no ties: genuine {0.9, 0.8, 0.6}, impostor {0.7, 0.5, 0.4}.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
LABELS = np.array([1, 1, 0, 1, 0, 0], dtype=bool)


def test_roc_points() -> None:
    """Accepting the top k scores for k = 0..6 accepts genuine/impostor pairs
    tp = 0,1,2,2,3,3,3 and fp = 0,0,0,1,1,2,3, out of 3 each; thresholds are the
    midpoints 0.85, 0.75, 0.65, 0.55, 0.45 with a float just above 0.9 / below 0.4 at the ends.
    """
    roc = roc_curve(SCORES, LABELS)
    np.testing.assert_allclose(roc.tpr, np.array([0, 1, 2, 2, 3, 3, 3]) / 3)
    np.testing.assert_allclose(roc.fpr, np.array([0, 0, 0, 1, 1, 2, 3]) / 3)
    np.testing.assert_allclose(roc.thresholds[1:-1], [0.85, 0.75, 0.65, 0.55, 0.45])
    assert 0.9 < roc.thresholds[0] < 0.9 + 1e-12
    assert 0.4 - 1e-12 < roc.thresholds[-1] < 0.4
    assert (roc.n_pos, roc.n_neg) == (3, 3)


def test_auc_is_the_fraction_of_correctly_ordered_pairs() -> None:
    """Genuine-impostor orderings: 0.9 beats all 3, 0.8 beats all 3, 0.6 beats 0.5 and 0.4:
    8 of 9 -> 8/9. The trapezoids agree: 1/3*2/3 + 1/3*1 + 1/3*1 = 8/9."""
    assert auc(roc_curve(SCORES, LABELS)) == pytest.approx(8 / 9)


def test_eer_exactly_on_a_cut() -> None:
    """FNR = 1 - TPR = 1, 2/3, 1/3, 1/3, 0, 0, 0 and FPR = 0, 0, 0, 1/3, 1/3, 2/3, 1: they
    are equal (1/3) at the cut k = 3, whose threshold is 0.65."""
    rate, threshold = eer(roc_curve(SCORES, LABELS))
    assert rate == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.65)


def test_eer_interpolated_between_cuts() -> None:
    """Genuine {0.9, 0.6, 0.55}, impostors {0.8, 0.7}. Descending: .9g .8i .7i .6g .55g.
    Cuts k = 0..3: FNR 1, 2/3, 2/3, 2/3; FPR 0, 0, 1/2, 1; FNR - FPR = 1, 2/3, 1/6, -1/3.
    The sign changes between k = 2 and k = 3, a = (1/6) / (1/6 + 1/3) = 1/3 of the way:
    FPR = 1/2 + 1/3 * (1 - 1/2) = 2/3 and FNR stays 2/3, so EER = 2/3. |d| is smaller at
    k = 2, whose threshold is the midpoint of .8 and .7 = 0.75."""
    rate, threshold = eer(roc_curve([0.9, 0.6, 0.55, 0.8, 0.7], [1, 1, 1, 0, 0]))
    assert rate == pytest.approx(2 / 3)
    assert threshold == pytest.approx(0.75)


def test_best_threshold_and_tie_between_plateaus() -> None:
    """Correct decisions per cut k = 0..6: tp + (3 - fp) = 3, 4, 5, 4, 5, 4, 3. Two cuts
    reach 5/6: k = 2 (threshold 0.75) and k = 4 (0.55). In ascending threshold order they are
    [0.55, 0.75]; the middle one, index (2 - 1) // 2 = 0, is 0.55."""
    threshold, accuracy = best_threshold(SCORES, LABELS)
    assert threshold == pytest.approx(0.55)
    assert accuracy == pytest.approx(5 / 6)
    assert accuracy_at(SCORES, LABELS, threshold) == pytest.approx(5 / 6)


def test_tied_scores_are_accepted_together() -> None:
    """Genuine {0.9, 0.7}, impostor {0.7, 0.3}: the two 0.7s cannot be split. Cuts over
    distinct scores 0.9, 0.7, 0.3: tp = 0, 1, 2, 2; fp = 0, 0, 1, 2; so TPR 0, 1/2, 1, 1 and
    FPR 0, 0, 1/2, 1. AUC = 1/2 * (1/2 + 1) / 2 + 1/2 * 1 = 0.875, which is the Mann-Whitney
    count with a tie as half: (1 + 1 + 0.5 + 1) / 4 = 0.875. Correct per cut: 2, 3, 3, 2 ->
    best 3/4 at thresholds 0.8 (k = 1) and 0.5 (k = 2); ascending [0.5, 0.8] -> 0.5. No
    threshold separates the tie, so 4/4 is impossible."""
    scores, labels = [0.9, 0.7, 0.7, 0.3], [1, 1, 0, 0]
    roc = roc_curve(scores, labels)
    np.testing.assert_allclose(roc.tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0.5, 1])
    assert auc(roc) == pytest.approx(0.875)
    threshold, accuracy = best_threshold(scores, labels)
    assert (threshold, accuracy) == (pytest.approx(0.5), pytest.approx(0.75))


def test_all_scores_equal() -> None:
    """One distinct score: cuts "accept none" and "accept all" both get 2/4 right; ascending
    order puts "accept all" (threshold just below 0.5) first, index 0 -> accept all. The ROC
    is the diagonal: AUC 1/2, and FNR - FPR goes 1 -> -1 in one segment, EER = 1/2."""
    scores, labels = [0.5] * 4, [1, 1, 0, 0]
    threshold, accuracy = best_threshold(scores, labels)
    assert threshold < 0.5 and accuracy == 0.5
    roc = roc_curve(scores, labels)
    assert auc(roc) == pytest.approx(0.5)
    assert eer(roc)[0] == pytest.approx(0.5)


def test_tar_at_far() -> None:
    """FAR <= 0.5 admits cuts with FPR 0, 0, 0, 1/3, 1/3 (k = 0..4); the last, k = 4, has
    TPR 1 at threshold 0.55. FAR <= 0.1 admits only FPR = 0 (k = 0..2): TPR 2/3 at 0.75."""
    roc = roc_curve(SCORES, LABELS)
    point = tar_at_far(roc, 0.5)
    assert (point.tar, point.threshold, point.far_measured) == (
        pytest.approx(1.0), pytest.approx(0.55), pytest.approx(1 / 3))
    point = tar_at_far(roc, 0.1)
    assert (point.tar, point.threshold, point.far_measured) == (
        pytest.approx(2 / 3), pytest.approx(0.75), 0.0)
    assert point.impostor_pairs == 3 and point.genuine_pairs == 3
    assert not point.resolvable  # 0.1 < 1/3: with 3 impostors FAR moves in steps of 1/3


def test_tar_at_far_with_lfw_sized_impostor_set() -> None:
    """3000 impostors: 2990 spread over [0, 0.5] and ten at 0.905, 0.915, ..., 0.995; 3000
    genuine pairs: 1000 each at 0.999, 0.96 and 0.6.
    FAR <= 1e-3 allows 3 impostors (0.995, 0.985, 0.975); the next score below is the impostor
    0.965, so the threshold is (0.975 + 0.965) / 2 = 0.97 and only the 0.999s are accepted:
    TAR 1/3. FAR <= 1e-2 allows 30 impostors, reaching down into the [0, 0.5] block, so every
    genuine pair is accepted: TAR 1. FAR <= 1e-4 allows none: threshold (0.999 + 0.995) / 2 =
    0.997, TAR 1/3 -- but 1e-4 < 1/3000, one impostor's worth, so it is flagged unresolvable.
    """
    imp = np.concatenate([np.linspace(0, 0.5, 2990), 0.905 + 0.01 * np.arange(10)])
    gen = np.repeat([0.999, 0.96, 0.6], 1000)
    scores = np.concatenate([gen, imp])
    labels = np.concatenate([np.ones(3000, bool), np.zeros(3000, bool)])
    roc = roc_curve(scores, labels)
    point = tar_at_far(roc, 1e-3)
    assert point.far_measured == pytest.approx(3 / 3000)
    assert point.threshold == pytest.approx(0.97)
    assert point.tar == pytest.approx(1 / 3)
    assert point.resolvable
    point = tar_at_far(roc, 1e-2)
    assert (point.tar, point.far_measured, point.resolvable) == (1.0, pytest.approx(0.01), True)
    point = tar_at_far(roc, 1e-4)
    assert (point.threshold, point.tar, point.far_measured) == (
        pytest.approx(0.997), pytest.approx(1 / 3), 0.0)
    assert not point.resolvable
    assert min_resolvable_far(3000) == pytest.approx(1 / 3000)


def test_ten_fold_thresholds_come_from_the_other_folds() -> None:
    """Three folds of four pairs, (score, genuine?):
    fold 0: (.9 y) (.6 y) (.4 n) (.2 n); fold 1: (.8 y) (.5 y) (.55 n) (.1 n);
    fold 2: (.7 y) (.3 y) (.47 n) (.35 n).

    Hold out 0 -> train on 1+2, descending .8y .7y .55n .5y .47n .35n .3y .1n; correct per cut
    4,5,6,5,6,5,4,5,4: best 6/8 at .625 and .485, ascending middle -> .485. Fold 0 at .485:
    all four right -> 1.0.
    Hold out 1 -> train .9y .7y .6y .47n .4n .35n .3y .2n; correct 4,5,6,7,6,5,4,5,4: 7/8 at
    (.6 + .47)/2 = .535. Fold 1: .8 ok, .5 rejected (wrong), .55 accepted (wrong), .1 ok -> .5.
    Hold out 2 -> train .9y .8y .6y .55n .5y .4n .2n .1n; correct 4,5,6,7,6,7,6,5,4: 7/8 at
    .575 and .45, ascending middle -> .45. Fold 2: .7 ok, .3 wrong, .47 accepted (wrong), .35
    ok -> .5.
    Mean 2/3; population std sqrt(((1/3)^2 + 2 (1/6)^2) / 3) = sqrt(1/18); sample std
    sqrt((1/9 + 1/18) / 2) = sqrt(1/12), standard error sqrt(1/12) / sqrt(3) = 1/6.
    """
    scores = [0.9, 0.6, 0.4, 0.2, 0.8, 0.5, 0.55, 0.1, 0.7, 0.3, 0.47, 0.35]
    labels = [1, 1, 0, 0] * 3
    folds = [0] * 4 + [1] * 4 + [2] * 4
    result = ten_fold_accuracy(np.array(scores), np.array(labels), np.array(folds))
    assert [r.threshold for r in result.folds] == [
        pytest.approx(0.485), pytest.approx(0.535), pytest.approx(0.45)]
    assert [r.accuracy for r in result.folds] == [1.0, 0.5, 0.5]
    assert [r.train_accuracy for r in result.folds] == [0.75, 0.875, 0.875]
    assert result.mean == pytest.approx(2 / 3)
    assert result.std == pytest.approx(np.sqrt(1 / 18))
    assert result.sem == pytest.approx(1 / 6)


def test_degenerate_folds() -> None:
    """Fold 0 holds only genuine pairs (.9, .25), fold 1 only impostors (.3, .2).
    Held-out 0: trained on the impostors alone, "accept none" (a float just above .3) gets
    2/2, so .9 is accepted and .25 rejected: accuracy 1/2. Held-out 1: trained on the genuine
    pairs alone, "accept all" (just below .25) gets 2/2, so .3 is accepted (wrong) and .2
    rejected: 1/2. One fold cannot be cross-validated, and a ROC needs both classes."""
    result = ten_fold_accuracy(np.array([0.9, 0.25, 0.3, 0.2]), np.array([1, 1, 0, 0]),
                               np.array([0, 0, 1, 1]))
    assert [r.accuracy for r in result.folds] == [0.5, 0.5]
    assert [r.train_accuracy for r in result.folds] == [1.0, 1.0]
    assert 0.3 < result.folds[0].threshold < 0.3 + 1e-12
    assert 0.25 - 1e-12 < result.folds[1].threshold < 0.25
    assert result.mean == 0.5 and result.std == 0.0
    with pytest.raises(ValueError, match="at least 2 folds"):
        ten_fold_accuracy(np.array([0.9, 0.1]), np.array([1, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="genuine and impostor"):
        roc_curve([0.9, 0.8], [1, 1])


def test_adjacent_float_scores_are_still_separated() -> None:
    """Two scores one ulp apart: the midpoint rounds onto the lower one, so the upper score
    itself is used as the threshold and the split stays exact (accuracy 1)."""
    hi = 0.5
    lo = np.nextafter(hi, 0.0)
    threshold, accuracy = best_threshold([hi, lo], [1, 0])
    assert accuracy == 1.0 and lo < threshold <= hi


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=14).filter(
        lambda xs: any(b for _, b in xs) and not all(b for _, b in xs)
    )
)
def test_against_brute_force(pairs: list[tuple[int, bool]]) -> None:
    """Small integer scores (many ties): AUC equals the Mann-Whitney count with ties as 1/2,
    and the best accuracy equals the maximum over every threshold between/around the values."""
    scores = np.array([s / 6 for s, _ in pairs])
    labels = np.array([b for _, b in pairs])
    gen, imp = scores[labels], scores[~labels]
    mw = sum(1.0 if g > i else 0.5 if g == i else 0.0 for g, i in itertools.product(gen, imp))
    assert auc(roc_curve(scores, labels)) == pytest.approx(mw / (gen.size * imp.size))
    candidates = np.concatenate([scores, [scores.max() + 1]])
    brute = max(np.mean((scores >= t) == labels) for t in candidates)
    threshold, accuracy = best_threshold(scores, labels)
    assert accuracy == pytest.approx(brute)
    assert accuracy_at(scores, labels, threshold) == pytest.approx(accuracy)


@pytest.mark.parametrize(("n_folds", "label"), [(2, "2-fold"), (3, "3-fold"), (10, "ten-fold")])
def test_report_names_the_folds_it_used(tmp_path: Path, n_folds: int, label: str) -> None:
    """A ``--limit-folds 2`` run must not be reported as LFW's ten-fold protocol."""
    from models.evaluation.report import report_dict, summarise, write_markdown

    rng = np.random.default_rng(0)
    labels = np.tile([True, False], 20 * n_folds)
    scores = np.where(labels, 0.9, 0.7) + rng.normal(0, 0.05, labels.size)
    folds = np.repeat(np.arange(n_folds), 40)
    text = write_markdown(report_dict(summarise(scores, labels, folds)),
                          tmp_path / "report.md").read_text()
    assert f"accuracy ({label}, mean" in text
    # The similarity scale users read thresholds against: percentiles of both distributions.
    genuine = next(line for line in text.splitlines() if line.startswith("| genuine similarity"))
    values = [float(v) for v in genuine.split("|")[2].split("/")]
    assert values == sorted(values) and 0.8 < values[3] < 1.0
    if n_folds != 10:
        assert "ten-fold" not in text

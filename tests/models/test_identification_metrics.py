"""Open-set metrics against answers worked out by hand on tiny cases."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.identification import (
    Rank1,
    det_curve,
    dir_at_fpir,
    rank1,
    rates_at,
    subject_scores,
)


def test_subject_scores_take_each_subjects_best_or_mean_face() -> None:
    # 2 probes x 4 faces; faces 0,1 are subject 0, faces 2,3 subject 1
    faces = np.array([[0.1, 0.5, 0.3, 0.2], [0.9, 0.7, 0.8, 0.0]])
    subjects = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(subject_scores(faces, subjects, 2, "max"), [[0.5, 0.3], [0.9, 0.8]])
    np.testing.assert_allclose(subject_scores(faces, subjects, 2, "mean"),
                               [[0.3, 0.25], [0.8, 0.4]])
    with pytest.raises(ValueError):
        subject_scores(faces, subjects, 2, "median")


def test_rates_count_a_wrong_rank1_as_a_miss_even_above_threshold() -> None:
    mated = rank1(np.array([[0.9, 0.1], [0.2, 0.95], [0.7, 0.3], [0.5, 0.6]]))
    truth = np.array([0, 0, 0, 1])  # probe 1's best is the wrong subject
    strangers = np.array([0.4, 0.65, 0.8, 0.2])
    fpir, dir_ = rates_at(0.6, mated, truth, strangers)
    assert fpir == pytest.approx(2 / 4)  # 0.65 and 0.8
    assert dir_ == pytest.approx(3 / 4)  # probes 0, 2 (0.7) and 3 (0.6 >= 0.6)
    fpir, dir_ = rates_at(0.75, mated, truth, strangers)
    assert (fpir, dir_) == (pytest.approx(1 / 4), pytest.approx(1 / 4))


def test_dir_at_fpir_picks_the_lowest_threshold_that_keeps_the_target() -> None:
    mated = Rank1(subject=np.zeros(4, int), score=np.array([0.95, 0.85, 0.75, 0.65]))
    truth = np.zeros(4, int)
    strangers = np.linspace(0.0, 0.9, 10)  # 0.0, 0.1, ..., 0.9
    dir_, threshold, fpir = dir_at_fpir(0.1, mated, truth, strangers)
    # one stranger in ten may pass: 0.9 passes, 0.8 must not -> threshold just above 0.8
    assert 0.8 < threshold <= 0.8 + 1e-9
    assert fpir == pytest.approx(0.1)
    assert dir_ == pytest.approx(2 / 4)  # 0.95 and 0.85
    # fewer strangers than 1/target: not resolvable
    assert dir_at_fpir(0.01, mated, truth, strangers) is None


def test_det_curve_runs_from_accept_nothing_to_accept_all() -> None:
    mated = Rank1(subject=np.array([0, 1, 0]), score=np.array([0.9, 0.8, 0.5]))
    truth = np.array([0, 0, 0])  # the second probe is a rank-1 miss
    det = det_curve(mated, truth, np.array([0.6, 0.3]))
    assert det.thresholds[0] == 0.9 and det.fpir[0] == 0.0
    assert det.fnir[0] == pytest.approx(2 / 3)
    assert det.fpir[-1] == 1.0 and det.fnir[-1] == pytest.approx(1 / 3)  # the miss stays
    assert np.all(np.diff(det.fpir) >= 0) and np.all(np.diff(det.fnir) <= 0)

"""Held-out verification figures: balanced best-threshold accuracy and TAR at a FAR."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.training.validation import best_threshold_accuracy, tar_at_far, verification_figures


def test_best_threshold_accuracy_hand_computed() -> None:
    genuine = np.array([0.9, 0.8, 0.4])
    impostor = np.array([0.5, 0.3, 0.2, 0.1])
    acc, thr = best_threshold_accuracy(genuine, impostor)
    # Accept > 0.6: TAR 2/3, TRR 4/4 -> 0.8333; accept > 0.35: TAR 1, TRR 3/4 -> 0.875.
    assert acc == pytest.approx(0.875)
    assert 0.3 < thr < 0.4
    assert best_threshold_accuracy(np.array([0.9]), np.array([0.1]))[0] == 1.0


def test_best_threshold_never_cuts_between_equal_scores() -> None:
    acc, _ = best_threshold_accuracy(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    assert acc == 0.5


def test_tar_at_far() -> None:
    impostor = np.linspace(0, 1, 2000)  # at FAR 1e-3, 2 impostors may pass
    genuine = np.array([0.9985, 0.9992, 1.2, 0.5])
    tar, thr = tar_at_far(genuine, impostor, far=1e-3)
    assert thr == pytest.approx(impostor[-3])
    assert (impostor > thr).sum() == 2
    assert tar == pytest.approx(0.5)  # 0.9992 and 1.2 pass; 0.9985 is below impostor[-3]
    assert math.isnan(tar_at_far(genuine, np.array([]), 1e-3)[0])


def test_verification_figures_on_separable_and_random_embeddings() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 16))
    labels = np.repeat(np.arange(10), 5)
    tight = centres[labels] + 0.05 * rng.normal(size=(50, 16))
    res = verification_figures(tight, labels)
    assert res.accuracy == 1.0 and res.tar == 1.0
    assert res.genuine_pairs == 10 * 10 and res.impostor_pairs == 50 * 49 // 2 - 100
    noise = rng.normal(size=(50, 16))
    assert 0.4 < verification_figures(noise, labels).accuracy < 0.7

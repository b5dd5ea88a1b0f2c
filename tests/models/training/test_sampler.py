"""The P x K sampler: batch shape, identity balance, small identities, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from models.training.sampler import PKSampler

# 6 identities: sizes 10, 5, 4, 3, 2, 1.
LABELS = np.repeat(np.arange(6), [10, 5, 4, 3, 2, 1])


def test_batches_hold_p_distinct_identities_with_k_images_each() -> None:
    sampler = PKSampler(LABELS, p=3, k=4, seed=1)
    for batch in sampler.epoch_batches(epoch=0, steps=20):
        assert len(batch) == 12
        groups = batch.reshape(3, 4)
        ids = [set(LABELS[g]) for g in groups]
        assert all(len(s) == 1 for s in ids)  # K images of one identity per group
        assert len({next(iter(s)) for s in ids}) == 3  # P distinct identities


def test_identity_with_one_image_is_skipped_and_small_ones_use_replacement() -> None:
    sampler = PKSampler(LABELS, p=2, k=4, seed=0)
    assert sampler.skipped == [5]
    assert sampler.replacement == [3, 4]  # 3 and 2 images < K = 4
    seen = Counter()
    for batch in sampler.epoch_batches(epoch=0, steps=50):
        assert 5 not in set(LABELS[batch])
        for group in batch.reshape(2, 4):
            label = LABELS[group[0]]
            seen[label] += 1
            if label in (3, 4):
                # every image of a small identity appears, the rest are repeats
                assert set(group) == set(np.flatnonzero(label == LABELS))
            else:
                assert len(set(group)) == 4  # no repeats when there are enough images
    # Identities are drawn from a shuffled cycle: equal use regardless of image count.
    assert set(seen) == {0, 1, 2, 3, 4}
    assert max(seen.values()) - min(seen.values()) <= 1


def test_deterministic_per_seed_and_epoch() -> None:
    a = PKSampler(LABELS, p=3, k=2, seed=7).epoch_batches(2, 10)
    b = PKSampler(LABELS, p=3, k=2, seed=7).epoch_batches(2, 10)
    c = PKSampler(LABELS, p=3, k=2, seed=8).epoch_batches(2, 10)
    d = PKSampler(LABELS, p=3, k=2, seed=7).epoch_batches(3, 10)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))
    assert any((x != y).any() for x, y in zip(a, d, strict=True))
    resumed = list(PKSampler(LABELS, p=3, k=2, seed=7).iter_epoch(2, 10, start=4))
    assert all((x == y).all() for x, y in zip(a[4:], resumed, strict=True))


def test_p_equal_to_the_number_of_identities_still_works() -> None:
    sampler = PKSampler(LABELS, p=5, k=2, seed=0)
    for batch in sampler.epoch_batches(0, 7):
        assert sorted(set(LABELS[batch])) == [0, 1, 2, 3, 4]


def test_too_few_identities_or_tiny_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="only 5 identities"):
        PKSampler(LABELS, p=6, k=2)
    with pytest.raises(ValueError, match="at least 2"):
        PKSampler(LABELS, p=4, k=1)

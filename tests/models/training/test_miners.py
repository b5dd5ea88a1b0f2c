"""Miners choose the right indices; tested apart from any loss."""

from __future__ import annotations

import math

import pytest
import torch

from models.training.distances import CosineSimilarity, SquaredL2Distance
from models.training.index_utils import all_triplets
from models.training.miners import BatchAllMiner, BatchHardMiner, SemiHardMiner, get_miner


def unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


# Identity 0 at 0°, 10°, 40°; identity 1 at 50°, 60°; identity 2 at 170°.
X = unit(0, 10, 40, 50, 60, 170)
LABELS = torch.tensor([0, 0, 0, 1, 1, 2])


def as_set(triplets: tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    return set(zip(*(t.tolist() for t in triplets), strict=True))


def test_batch_hard_picks_farthest_positive_and_closest_negative() -> None:
    got = as_set(BatchHardMiner()(X, LABELS))
    assert got == {
        (0, 2, 3),  # 0°: farthest positive 40°, closest negative 50°
        (1, 2, 3),  # 10°: positives 0° (10° away) and 40° (30°): 40°; closest negative 50°
        (2, 0, 3),  # 40°: farthest positive 0°; closest negative 50°
        (3, 4, 2),  # 50°: only positive 60°; closest negative 40°
        (4, 3, 2),  # 60°: positive 50°; closest negative 40°
        # 170° has no positive: not an anchor.
    }


def test_batch_hard_brute_force_on_random_batch() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    d = SquaredL2Distance().matrix(x)
    a, p, n = BatchHardMiner()(x, labels)
    assert a.tolist() == list(range(12))
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        pos = [j for j in range(12) if labels[j] == labels[ai] and j != ai]
        neg = [j for j in range(12) if labels[j] != labels[ai]]
        assert d[ai, pi] == max(d[ai, j] for j in pos)
        assert d[ai, ni] == min(d[ai, j] for j in neg)


def test_batch_hard_is_the_same_with_cosine_similarity() -> None:
    # On unit vectors the ranking is the same, so the hardest choices must match.
    assert as_set(BatchHardMiner(CosineSimilarity())(X, LABELS)) == as_set(
        BatchHardMiner()(X, LABELS)
    )


def test_semi_hard_negatives_lie_inside_the_band() -> None:
    margin = 0.2
    d = SquaredL2Distance().matrix(X)
    for select in ("all", "hardest"):
        a, p, n = SemiHardMiner(margin=margin, select=select)(X, LABELS)
        assert len(a) > 0
        assert (LABELS[a] == LABELS[p]).all() and (LABELS[a] != LABELS[n]).all()
        d_ap, d_an = d[a, p], d[a, n]
        assert (d_ap < d_an).all() and (d_an < d_ap + margin).all()


def test_semi_hard_finds_every_band_negative_and_the_closest_one() -> None:
    margin = 0.2
    d = SquaredL2Distance().matrix(X)
    every = as_set(SemiHardMiner(margin=margin, select="all")(X, LABELS))
    expected = {
        (a, p, n)
        for a, p, n in zip(*(t.tolist() for t in all_triplets(LABELS)), strict=True)
        if d[a, p] < d[a, n] < d[a, p] + margin
    }
    assert every == expected
    # Anchor 0° with positive 10° (d = 0.0304): band (0.0304, 0.2304) holds no negative
    # (50° is at 0.714); with positive 40° (d = 0.468): 50° (0.714) lies in (0.468, 0.668)?
    # No -- 0.714 > 0.668. So anchor 0 only mines with a bigger margin:
    assert not any(a == 0 for a, _, _ in every)
    wide = as_set(SemiHardMiner(margin=0.3, select="hardest")(X, LABELS))
    assert (0, 2, 3) in wide
    hardest = as_set(SemiHardMiner(margin=margin, select="hardest")(X, LABELS))
    for a, p, n in hardest:
        in_band = [m for (a2, p2, m) in every if (a2, p2) == (a, p)]
        assert d[a, n] == min(d[a, m] for m in in_band)


def test_semi_hard_excludes_hard_and_easy_negatives() -> None:
    # a=0°, p=30° (d=0.268); negatives at 20° (hard: closer than p), 35° (semi-hard),
    # 90° (easy: beyond the margin).
    x = unit(0, 30, 20, 35, 90)
    labels = torch.tensor([0, 0, 1, 2, 3])
    a, _, n = SemiHardMiner(margin=0.2, select="all")(x, labels)
    picked = {(ai, ni) for ai, ni in zip(a.tolist(), n.tolist(), strict=True) if ai == 0}
    assert picked == {(0, 3)}


def test_batch_all_returns_every_valid_triplet_or_only_violators() -> None:
    every = BatchAllMiner()(X, LABELS)
    assert as_set(every) == as_set(all_triplets(LABELS))
    d = SquaredL2Distance().matrix(X)
    a, p, n = BatchAllMiner(margin=0.2)(X, LABELS)
    assert (d[a, p] - d[a, n] + 0.2 > 0).all()
    assert 0 < len(a) < len(every[0])


def test_miners_return_long_indices_and_no_grad() -> None:
    x = X.clone().requires_grad_(True)
    for miner in (BatchAllMiner(), BatchHardMiner(), SemiHardMiner()):
        trip = miner(x, LABELS)
        assert all(t.dtype == torch.long and not t.requires_grad for t in trip)


def test_get_miner_names() -> None:
    assert isinstance(get_miner("batch-hard", 0.2), BatchHardMiner)
    assert isinstance(get_miner("semi-hard", 0.2), SemiHardMiner)
    assert isinstance(get_miner("batch-all", 0.2), BatchAllMiner)
    with pytest.raises(ValueError, match="unknown miner"):
        get_miner("hardest", 0.2)

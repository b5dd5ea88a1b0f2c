"""The FPIR threshold rule: gallery-size correction, gallery statistics, reference tail."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from models.fpir import (
    CohortStats,
    FpirRule,
    ImpostorSample,
    ImpostorTail,
    cohort_stats,
    load_reference,
    per_comparison_rate,
)


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_per_comparison_rate_inverts_the_union_bound_exactly() -> None:
    for fpir, n in [(0.01, 1), (0.01, 100), (0.1, 10_000), (1e-3, 7)]:
        p = per_comparison_rate(fpir, n)
        assert 1 - (1 - p) ** n == pytest.approx(fpir, rel=1e-9)
    assert per_comparison_rate(0.01, 100) == pytest.approx(0.01 / 100, rel=0.01)
    with pytest.raises(ValueError):
        per_comparison_rate(1.0, 10)


def test_tail_interpolates_in_log_p_and_extrapolates_the_last_slope() -> None:
    tail = ImpostorTail((-1.0, -2.0, -3.0), (1.0, 2.0, 2.5), "test")
    assert tail.z_at(0.01) == pytest.approx(2.0)
    assert tail.z_at(10**-2.5) == pytest.approx(2.25)
    assert tail.z_at(1e-5) == pytest.approx(3.5)  # slope 0.5 per decade
    gauss = ImpostorTail.gaussian()
    assert gauss.z_at(0.001) == pytest.approx(3.0902, abs=1e-3)


def test_threshold_rises_with_gallery_size_and_with_stricter_targets() -> None:
    rule = FpirRule("m", CohortStats(10**6, 0.83, 0.035, 4000), ImpostorTail.gaussian())
    t10 = rule.threshold(0.01, 10).threshold
    t1000 = rule.threshold(0.01, 1000).threshold
    assert t10 < t1000 < 1.0
    assert rule.threshold(0.001, 10).threshold > t10
    # exactly mean + std * z(p)
    point = rule.threshold(0.01, 10)
    z = NormalDist().inv_cdf(1 - point.per_comparison_far)
    assert point.threshold == pytest.approx(0.83 + 0.035 * z, abs=1e-6)


def test_a_gallery_shifts_the_reference_where_its_pairs_resolve_the_tail() -> None:
    rule = FpirRule("m", CohortStats(10**6, 0.80, 0.03, 4000), ImpostorTail.gaussian(),
                    prior_subjects=30)
    alone = rule.threshold(0.01, 10)
    # ten subjects, too few pairs for a quantile: the mean moves it, by 10 / (10 + 30)
    few = rule.threshold(0.01, 10, CohortStats(45, 0.86, 0.03, 10))
    assert few.shift == pytest.approx(0.06 * 10 / 40)
    assert few.threshold == pytest.approx(alone.threshold + few.shift)
    # a bigger gallery whose tail sits 0.01 above the reference's down to p = 1e-2:
    # the shift is measured there (not at the mean, which sits 0.06 higher)
    z = NormalDist().inv_cdf
    upper = tuple((x, 0.80 + 0.03 * z(1 - 10**x) + 0.01) for x in (-0.5, -1.0, -1.5, -2.0))
    big = CohortStats(10**5, 0.86, 0.03, 270, upper)
    point = rule.threshold(0.01, 10, big)
    assert point.matched_at == pytest.approx(1e-2)
    assert point.shift == pytest.approx(0.01 * 270 / 300, abs=1e-9)
    # a rarer target than the gallery resolves: still compared at the deepest point
    deep = rule.threshold(0.001, 1000, big)
    assert deep.matched_at == pytest.approx(1e-2) and deep.shift == pytest.approx(point.shift)
    # no reference at all: the gallery alone is the base curve
    bare = FpirRule("m", CohortStats(0, 0.0, 0.0), ImpostorTail.gaussian(), prior_subjects=0)
    only = bare.threshold(0.01, 10, CohortStats(45, 0.86, 0.03, 10))
    assert only.mean == 0.86 and only.shift == 0.0


def test_quantiles_of_a_sample_match_the_exact_ones() -> None:
    rng = np.random.default_rng(2)
    v = unit(rng, 300, dim=32)
    stats = cohort_stats(v, np.arange(300))
    sims = (v @ v.T)[np.triu_indices(300, 1)]
    ordered = np.sort(sims)[::-1]
    for x, q in stats.upper:
        kth = ordered[int(np.ceil(10**x * len(sims))) - 1]  # a share p of pairs at or above
        assert q == pytest.approx(kth, abs=2.5e-4)  # within the histogram's bin width
    assert 10 ** stats.upper[-1][0] * len(sims) >= 10  # never deeper than 10 pairs resolve


def test_impostor_sample_equals_a_full_recount_through_adds_and_removals() -> None:
    rng = np.random.default_rng(0)
    v = unit(rng, 40)
    subjects = [f"s{i % 13}" for i in range(40)]
    sample = ImpostorSample(16, capacity=30)
    for row in range(40):
        sample.add(row, v[row], subjects[row])
    assert len(sample) == 30  # full: the last ten are not sampled
    for row in (3, 17, 29, 100):  # 100 was never there
        sample.remove(row)
    kept = [r for r in range(30) if r not in (3, 17, 29)]
    expect = cohort_stats(v[kept], np.array(subjects)[kept])
    got = sample.stats()
    assert got.pairs == expect.pairs and got.subjects == expect.subjects
    assert got.mean == pytest.approx(expect.mean, abs=1e-9)
    assert got.std == pytest.approx(expect.std, abs=1e-7)
    sample.add(35, v[35], subjects[35])  # room again
    assert len(sample) == 28
    # a subject that left entirely and new ones that arrive keep their pairs apart
    for row in [r for r in kept if subjects[r] == "s0"]:
        sample.remove(row)
    sample.add(50, v[36], "new")
    sample.add(51, v[37], "s0")
    members = [r for r in kept if subjects[r] != "s0"] + [35]
    vecs = np.concatenate([v[members], v[36:38]])
    labels = np.array([subjects[r] for r in members] + ["new", "s0"])
    expect = cohort_stats(vecs, labels)
    assert sample.stats().pairs == expect.pairs
    assert sample.stats().mean == pytest.approx(expect.mean, abs=1e-9)


def test_a_sample_of_one_subject_has_no_impostor_pairs() -> None:
    rng = np.random.default_rng(1)
    sample = ImpostorSample(16)
    for row, vec in enumerate(unit(rng, 5)):
        sample.add(row, vec, "alice")
    assert sample.stats().pairs == 0


def test_the_shipped_reference_loads_for_dlib_and_refuses_another_model(tmp_path) -> None:
    rule = load_reference("dlib-resnet-v1")
    assert rule is not None and rule.reference.pairs > 10**6
    assert 0.7 < rule.reference.mean < 0.9 and list(rule.tail.z) == sorted(rule.tail.z)
    assert load_reference("no-such-model") is None
    other = tmp_path / "x.json"
    other.write_text(__import__("json").dumps(rule.to_dict()))
    with pytest.raises(ValueError):
        load_reference("fake-v1", other)

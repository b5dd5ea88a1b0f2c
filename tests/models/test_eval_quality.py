"""The LFW quality error analysis on a tiny synthetic pair set whose errors are known."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.lfw import EmbeddingCache, _Entry
from models.evaluation.pairs import Pair, PairSet
from models.evaluation.quality import lfw_error_analysis
from models.quality import MEASURES


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_pairs_with_a_worst_face_carry_the_errors() -> None:
    rng = np.random.default_rng(0)
    pairs, rel = [], []
    for fold in range(2):
        for k in range(10):  # 5 genuine then 5 impostor pairs per fold
            i = len(rel)
            rel += [f"p{i}/a.jpg", f"p{i}/b.jpg"]
            pairs.append(Pair(rel[i], rel[i + 1], same=k < 5, fold=fold))
    pair_set = PairSet(tuple(pairs), 2, 5)
    keys = [f"/lfw/{r}" for r in rel]
    cache = EmbeddingCache(None, "m")
    for n, pair in enumerate(pairs):
        a = unit(rng.standard_normal(128))
        b = unit(a + 0.05 * rng.standard_normal(128)) if pair.same else unit(
            rng.standard_normal(128))
        for key, v in ((keys[2 * n], a), (keys[2 * n + 1], b)):
            cache.entries[key] = _Entry(np.zeros((5, 2), np.float32), False, 1, plain=v)
    # The first genuine pair's second face is unrecognisable, and the least sharp image.
    cache.entries[keys[1]].plain = unit(rng.standard_normal(128))
    values = {name: np.linspace(0.6, 0.3, len(rel)) for name in MEASURES}
    values["sharpness"][1] = 0.05
    order = sorted(range(len(rel)), key=lambda i: rel[i])
    rel = [rel[i] for i in order]
    keys = [keys[i] for i in order]
    values = {name: v[order] for name, v in values.items()}

    report = lfw_error_analysis(pair_set, rel, keys, cache, values, worst=1 / len(rel))
    assert report["pairs"] == 20 and report["all"]["errors"] == 1
    row = next(r for r in report["rows"] if r["measure"] == "sharpness")
    assert row["cut"] == pytest.approx(0.05) and row["worst_images"] == 1
    assert (row["worst"]["pairs"], row["worst"]["errors"]) == (1, 1)
    assert row["worst"]["fnmr_at_far"] == 1.0 and row["worst"]["impostor"] == 0
    assert (row["rest"]["pairs"], row["rest"]["errors"], row["rest"]["fnmr_at_far"]) == (19, 0, 0)
    # A measure that does not single that face out puts the error among the rest.
    other = next(r for r in report["rows"] if r["measure"] == "eye_distance")
    assert other["worst"]["errors"] == 0 and other["rest"]["errors"] == 1

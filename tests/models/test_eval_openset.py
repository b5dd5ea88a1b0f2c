"""`faceserve eval openset`: the protocol on synthetic data, and end to end on an LFW subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.evaluation.openset import (
    draw_gallery,
    evaluate_draws,
    evaluate_openset,
    fixed_rule,
)


def test_a_draw_enrolls_k_photos_and_keeps_the_rest_as_probes() -> None:
    people = {"a": [0, 1, 2, 3], "b": [4, 5], "c": [6], "d": [7, 8, 9]}
    draw = draw_gallery(people, 2, 3, np.random.default_rng(0))
    enrolled = set(draw.enrolled.tolist())
    mated = set(draw.mated.tolist())
    assert not enrolled & mated and not (enrolled | mated) & set(draw.nonmated.tolist())
    # every image is used exactly once, and "c" (one photo) is only ever a stranger
    assert sorted(enrolled | mated | set(draw.nonmated.tolist())) == list(range(10))
    assert 6 in draw.nonmated
    # at most 3 photos enrolled, always one kept back as a probe
    for s in range(2):
        assert 1 <= np.sum(draw.face_subject == s) <= 3
        assert np.sum(draw.truth == s) >= 1
    with pytest.raises(ValueError):
        draw_gallery(people, 4, 1, np.random.default_rng(0))  # only 3 candidates


def test_rates_on_a_hand_built_population() -> None:
    # 2-d embeddings: person 0 near 0 degrees, person 1 near 40; a stranger at 20 sits between
    # them (cos 18-21 degrees = 0.93-0.95), the other stranger far away.
    def at(deg: float) -> list[float]:
        r = np.deg2rad(deg)
        return [np.cos(r), np.sin(r)]

    vectors = np.array([at(0), at(2), at(40), at(41), at(20), at(200)], np.float32)
    people = {"p0": [0, 1], "p1": [2, 3], "s": [4], "t": [5]}
    out = evaluate_draws(vectors, people, 2, photos=1, repeats=1, seed=0,
                         rules={"fixed": fixed_rule(0.96)}, targets=(0.5,))
    assert out["rank1"] == 1.0 and out["mated_probes"] == 2 and out["nonmated_probes"] == 2
    fixed = out["rules"]["fixed"]["0.5"]
    assert fixed["fpir"] == 0.0  # at most cos 18 degrees = 0.951 < 0.96
    assert fixed["dir"] == 1.0  # mates at 2 and 1 degrees: cos > 0.999
    best = out["dir_at_fpir"]["0.5"]
    assert best["fpir"] == 0.5 and best["dir"] == 1.0


@pytest.mark.slow
def test_end_to_end_on_an_lfw_subset(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "lfw"
    if not (root / "lfw-deepfunneled").is_dir():
        pytest.skip(f"LFW not found under {root}")
    from models.pipeline import FacePipeline

    pipeline = FacePipeline(device="cpu")
    kwargs = dict(sizes=(5, "max"), photos=(1, 3), seed=3, limit_people=60,
                  pipeline=pipeline, progress=False, crops=())
    report = evaluate_openset(root, tmp_path, **kwargs)
    saved = json.loads((tmp_path / "openset.json").read_text())
    assert saved["populations"]["lfw"]["results"] == report["populations"]["lfw"]["results"]
    results = report["populations"]["lfw"]["results"]
    assert [(r["gallery_size"], r["photos_per_subject"]) for r in results] == [
        (5, 1), (report["candidates"], 1), (5, 3), (report["candidates"], 3)]
    for r in results:
        assert 0.5 < r["rank1"] <= 1.0
        assert Path(r["det_png"]).is_file()
        service = r["rules"]["service (size + gallery)"]
        # the threshold is above the old default whenever the gallery grows past a few faces
        assert service["0.01"]["threshold_mean"] > service["0.1"]["threshold_mean"]
    assert "| subjects × photos |" in (tmp_path / "openset.md").read_text()
    # a second run detects nothing again and gives the same figures
    again = evaluate_openset(root, tmp_path, **kwargs)
    assert again["populations"]["lfw"]["results"] == results


def test_other_probe_vectors_never_replace_the_gallery() -> None:
    """Crop probes exist for a sample only: the gallery must still be the original photos."""

    def at(deg: float) -> list[float]:
        r = np.deg2rad(deg)
        return [np.cos(r), np.sin(r)]

    vectors = np.array([at(0), at(2), at(40), at(41), at(20), at(200)], np.float32)
    people = {"p0": [0, 1], "p1": [2, 3], "s": [4], "t": [5]}
    subset = np.array([False, True, False, True, True, True])  # only these were "cropped"
    probes = np.where(subset[:, None], vectors, np.nan).astype(np.float32)
    out = evaluate_draws(vectors, people, 2, photos=1, repeats=8, seed=1,
                         rules={"fixed": fixed_rule(0.96)}, targets=(0.5,),
                         probe_vectors=probes, probe_subset=subset)
    assert out["mated_probes"] > 0 and out["nonmated_probes"] == 16
    assert out["rank1"] == 1.0 and out["rules"]["fixed"]["0.5"]["dir"] == 1.0

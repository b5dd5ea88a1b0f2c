"""Calibrating an ONNX model: ``faceserve eval lfw --model`` and ``eval openset --model`` on a
synthetic LFW-shaped set, and the service taking its threshold from the profile written.

The people are textures in bright squares found by the random-weight SCRFD-style detector
(``tests/onnx_nets.py``, ``bright=True``); each has two photos (other backgrounds, other
places). What is checked is the plumbing a user with real weights relies on: the profile is
for the ONNX model's version, its thresholds separate these people, and the service reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")

from models.backends.onnx_file import add_model, read_onnx_manifest
from service.cli import main
from service.config import Settings, resolve_operating_point
from tests.onnx_nets import export_embedder, export_scrfd

PEOPLE = 130
PER_HALF = 60  # two folds of 60 same and 60 different pairs: 120 impostors resolve FAR 1e-2


def _photo(person: int, shot: int) -> Image.Image:
    """640x640: dark noise and the person's texture in a 32x32 square of the 32-px grid."""
    img = np.random.default_rng(10_000 * shot + person).integers(0, 40, (640, 640, 3),
                                                                 dtype=np.uint8)
    face = np.random.default_rng(person).integers(100, 256, (8, 8, 3), dtype=np.uint8)
    r, c = 4 + shot, 6 + person % 5
    img[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = np.kron(face, np.ones((4, 4, 1),
                                                                               np.uint8))
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def synthetic_lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lfw-synthetic")
    names = [f"Person_{i:03d}" for i in range(PEOPLE)]
    for i, name in enumerate(names):
        (root / name).mkdir()
        for shot in (1, 2):
            _photo(i, shot).save(root / name / f"{name}_{shot:04d}.jpg", quality=95)
    lines = [f"2\t{PER_HALF}"]
    for fold in range(2):
        base = fold * PER_HALF
        lines += [f"{names[base + k]}\t1\t2" for k in range(PER_HALF)]
        lines += [f"{names[base + k]}\t1\t{names[(base + k + 7) % PEOPLE]}\t2"
                  for k in range(PER_HALF)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_lfw_calibrates_an_onnx_model_and_the_service_uses_it(
    synthetic_lfw: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    add_model(export_embedder(tmp_path / "e.onnx", embedding_size=48)[0], models, "arcface",
              name="arc")
    add_model(export_scrfd(tmp_path / "d.onnx", bright=True)[0], models, "scrfd", name="det")
    version = read_onnx_manifest(models / "arc.onnx")["version"]
    out = tmp_path / "out"
    assert main(["eval", "lfw", "--root", str(synthetic_lfw), "--model", "arc", "--detector",
                 "det", "--model-dir", str(models), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == version
    assert report["images"]["fallbacks"] == 0  # every photo's square was found
    assert report["accuracy"]["mean"] == 1.0  # textures are told apart
    profile = json.loads((out / "operating_points.json").read_text())
    assert profile["model"] == version
    fars = [p["far"] for p in profile["operating_points"]]
    assert 0.01 in fars

    # The service: FACESERVE_THRESHOLD=far=1e-2 with that profile.
    settings = Settings(data_dir=tmp_path / "data", threshold="far=1e-2",
                        profile=out / "operating_points.json")
    manifest = read_onnx_manifest(models / "arc.onnx")
    point = resolve_operating_point(settings, version, manifest)
    assert point.source == "profile" and point.far == pytest.approx(0.01)

    # Open-set identification with a reference built from the same embeddings.
    reference = tmp_path / "reference.json"
    assert main(["eval", "openset", "--root", str(synthetic_lfw), "--out", str(out),
                 "--model", "arc", "--detector", "det", "--model-dir", str(models),
                 "--sizes", "10", "--photos", "1", "--repeats", "2",
                 "--write-reference", str(reference), "--device", "cpu",
                 "--no-progress"]) == 0
    assert json.loads(reference.read_text())["model"] == version
    openset = json.loads((out / "openset.json").read_text())
    assert openset["model"] == version

    # The quality analysis and the crop probes of the same model and detector, on the
    # cache `eval lfw` wrote: chips cut the ArcFace way, measured on their own face region.
    cache = out / f"embeddings-{version}.npz"
    assert cache.is_file(), sorted(p.name for p in out.iterdir())
    quality_out = tmp_path / "quality"
    assert main(["eval", "quality", "--root", str(synthetic_lfw), "--cache", str(cache),
                 "--model", "arc", "--detector", "det", "--model-dir", str(models),
                 "--out", str(quality_out), "--sweep-pairs", "4", "--no-progress"]) == 0
    quality = json.loads((quality_out / "quality.json").read_text())
    assert quality["model"] == version and quality["detector"].startswith("onnx-det-")
    assert quality["fallback_images"] == 0
    # The squares are frontal to the template: SCRFD's points read no yaw.
    assert quality["distribution"]["yaw"]["p95"] < 1.0, quality["distribution"]["yaw"]
    crops_out = tmp_path / "crops"
    assert main(["eval", "crops", "--cache", str(cache), "--model", "arc", "--detector", "det",
                 "--model-dir", str(models), "--images", "4", "--sizes", "100",
                 "--out", str(crops_out), "--device", "cpu", "--no-progress"]) == 0
    crops = json.loads((crops_out / "crops.json").read_text())
    assert crops["pipeline"]["model"] == version
    # Without --detector, the ArcFace model is refused with what to do.
    with pytest.raises(SystemExit, match="FACESERVE_DETECTOR"):
        main(["eval", "crops", "--cache", str(cache), "--model", "arc", "--model-dir",
              str(models), "--out", str(crops_out), "--device", "cpu", "--no-progress"])

"""Exported model files: loading by the pipeline, version and size, refusals of bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from models.embedding_model import load_embedding_model
from models.model_file import ModelFileError, load_exported, read_manifest
from tests.model_files import dlib_copy, small_random, tamper


@pytest.fixture(scope="module")
def dlib_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dlib_copy(tmp_path_factory.mktemp("models") / "dlib-copy.safetensors")


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """Four real aligned face chips (the astronaut, shifted and mirrored)."""
    from skimage import data

    from models.pipeline import FacePipeline

    image = np.ascontiguousarray(data.astronaut())
    pipe = FacePipeline(device="cpu")
    faces = pipe.detect(image)
    chip = pipe.align(image, faces[:1])[0]
    return np.stack([chip, chip[:, ::-1], np.roll(chip, 3, axis=0), np.roll(chip, -3, axis=1)])


def test_dlib_weights_under_another_version_embed_as_dlib(dlib_file: Path, chips: np.ndarray):
    default = load_embedding_model("dlib", "cpu")
    exported = load_embedding_model(dlib_file, "cpu")
    assert default.version == "dlib-resnet-v1" and default.manifest == {}
    assert exported.version == "test-dlib-copy-v1" and exported.embedding_size == 128
    assert exported.source == str(dlib_file)
    a, b = default.embed_chips(chips), exported.embed_chips(chips)
    assert a.shape == b.shape == (4, 128)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_pipeline_runs_the_exported_model(dlib_file: Path, chips: np.ndarray) -> None:
    from models.pipeline import FacePipeline

    pipe = FacePipeline(device="cpu", model=dlib_file)
    assert pipe.model_version == "test-dlib-copy-v1"
    assert pipe.model_manifest["validation"]["tar_threshold"] == 0.915
    ref = FacePipeline(device="cpu")
    assert ref.model_manifest == {}
    np.testing.assert_allclose(pipe.embed_chips(chips), ref.embed_chips(chips), atol=1e-5)


def test_other_embedding_sizes_flow_through(tmp_path: Path, chips: np.ndarray) -> None:
    path = small_random(tmp_path / "small.safetensors", embedding_size=64)
    model = load_embedding_model(path, "cpu")
    assert model.embedding_size == 64
    out = model.embed_chips(chips, flip=True)
    assert out.shape == (4, 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert model.embed_chips(chips[:0]).shape == (0, 64)


def test_the_json_sidecar_names_the_same_model(dlib_file: Path) -> None:
    side = dlib_file.with_name(dlib_file.name + ".json")
    assert side.is_file()
    assert read_manifest(side) == read_manifest(dlib_file)
    assert load_exported(side, "cpu")[1]["version"] == "test-dlib-copy-v1"


def test_bad_model_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_embedding_model(tmp_path / "missing.safetensors", "cpu")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_embedding_model(garbage, "cpu")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": __import__("torch").zeros(3)}, str(plain))
    with pytest.raises(ModelFileError, match="no faceserve manifest"):
        load_embedding_model(plain, "cpu")

    path = small_random(tmp_path / "small.safetensors")
    tamper(path)  # other weights under the same manifest
    with pytest.raises(ModelFileError, match="do not match the manifest"):
        load_embedding_model(path, "cpu")

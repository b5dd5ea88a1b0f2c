"""ONNX embedders and SCRFD detectors, on random-weight exports of the same architectures.

Each network is built in PyTorch (``tests/onnx_nets.py``), exported to ONNX here, added
through ``faceserve models add``'s code and loaded the way the service loads it; outputs
must equal the PyTorch original's. Decoding, NMS and ArcFace alignment are checked against
hand-computed values.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
pytest.importorskip("onnxruntime")

from models.backends.geometry import (
    ARCFACE,
    ARCFACE_TEMPLATE_112,
    DLIB,
    GeometryError,
    face_region,
    warp_chips,
)
from models.backends.onnx_file import (
    OnnxModelError,
    add_model,
    list_models,
    read_onnx_manifest,
)
from models.backends.scrfd import (
    anchor_centres,
    decode_outputs,
    letterbox,
    load_scrfd,
)
from models.embedding_model import chip_geometry_of, load_embedding_model
from tests.onnx_nets import export_embedder, export_scrfd

TOL = 1e-4


def _reference(net: torch.nn.Module, chips: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        out = net((x - 127.5) / 127.5)
    return torch.nn.functional.normalize(out, dim=1).numpy()


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_embedder_equals_the_pytorch_original_in_batches(
    tmp_path: Path, dynamic_batch: bool
) -> None:
    src, net = export_embedder(tmp_path / "r.onnx", embedding_size=48,
                               dynamic_batch=dynamic_batch)
    info = add_model(src, tmp_path / "models", "arcface", name="tiny-r", licence="MIT",
                     source_url="https://example.org/tiny-r")
    assert info.manifest["embedding_size"] == 48
    assert info.manifest["licence"] == "MIT"
    assert info.manifest["source"] == "https://example.org/tiny-r"
    model = load_embedding_model("tiny-r", "cpu", model_dir=tmp_path / "models")
    assert model.backend == "onnx2torch"
    assert model.geometry == ARCFACE and model.embedding_size == 48
    assert model.version.startswith("onnx-tiny-r-")
    chips = np.random.default_rng(1).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    got = model.embed_chips(chips, batch_size=2)  # batches of 2, 2, 1
    assert got.shape == (5, 48)
    np.testing.assert_allclose(got, _reference(net, chips), atol=TOL)
    # Batching does not change a chip's vector.
    np.testing.assert_allclose(model.embed_chips(chips[3:4]), got[3:4], atol=TOL)


def test_onnxruntime_runs_what_onnx2torch_cannot_convert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx2torch

    src, net = export_embedder(tmp_path / "r.onnx", embedding_size=32)
    add_model(src, tmp_path / "m", "arcface", name="r")

    def refuse(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("Converter is not implemented")

    monkeypatch.setattr(onnx2torch, "convert", refuse)
    model = load_embedding_model("r", "cpu", model_dir=tmp_path / "m")
    assert model.backend == "onnxruntime"
    chips = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(model.embed_chips(chips, batch_size=2), _reference(net, chips),
                               atol=TOL)


class _FailsAtRunTime(torch.nn.Module):
    """What onnx2torch can hand back: a module built without complaint that raises on its
    first real tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args: object) -> torch.Tensor:
        raise RuntimeError("Expected all tensors to be on the same device")


def test_a_conversion_that_fails_on_its_first_batch_falls_back_to_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import onnx2torch

    src, net = export_embedder(tmp_path / "r.onnx", embedding_size=32)
    add_model(src, tmp_path / "m", "arcface", name="r")
    det_src, det_net = export_scrfd(tmp_path / "d.onnx", size=320)
    det_info = add_model(det_src, tmp_path / "m", "scrfd", name="d")
    monkeypatch.setattr(onnx2torch, "convert", lambda *a, **k: _FailsAtRunTime())

    model = load_embedding_model("r", "cpu", model_dir=tmp_path / "m")
    assert model.backend == "onnx2torch"  # converted, not yet run
    chips = np.random.default_rng(4).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    with caplog.at_level("WARNING", logger="faceserve"):
        got = model.embed_chips(chips, batch_size=2)
    np.testing.assert_allclose(got, _reference(net, chips), atol=TOL)
    assert model.backend == "onnxruntime"
    assert any("fails on its first batch" in r.getMessage() and "ONNX Runtime" in r.getMessage()
               for r in caplog.records), caplog.text
    # The detector too: its outputs are the PyTorch original's, through ONNX Runtime.
    det = load_scrfd(det_info.path, torch.device("cpu"))
    image = torch.from_numpy(
        np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    outs, _, _ = det._forward(image)
    blob, _ = letterbox(image, 320)
    with torch.no_grad():
        expected = det_net((blob - 127.5) / 128.0)
    for out, want in zip(outs, expected, strict=True):
        np.testing.assert_allclose(out.numpy(), want.numpy(), atol=TOL)
    assert det.net.backend == "onnxruntime"


def test_a_runtime_failure_after_a_good_first_batch_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.backends.onnx_embedder import FirstRunFallback

    src, _ = export_embedder(tmp_path / "r.onnx", embedding_size=32)
    model = load_embedding_model(add_model(src, tmp_path / "m", "arcface", name="r").path,
                                 "cpu")
    chips = np.zeros((1, 112, 112, 3), np.uint8)
    model.embed_chips(chips)
    fallback = model.module.core
    assert isinstance(fallback, FirstRunFallback) and fallback.proven
    monkeypatch.setattr(fallback, "inner", _FailsAtRunTime())
    with pytest.raises(RuntimeError, match="same device"):
        model.embed_chips(chips)
    assert model.backend == "onnx2torch"


def test_an_embedder_for_another_chip_size_is_refused(tmp_path: Path) -> None:
    src, _ = export_embedder(tmp_path / "r96.onnx", size=96)
    with pytest.raises(OnnxModelError, match=r"wrong input shape .*96.*\(N, 3, 112, 112\)"):
        add_model(src, tmp_path / "m", "arcface")
    assert list_models(tmp_path / "m") == []


def test_a_detector_added_as_an_embedder_is_refused(tmp_path: Path) -> None:
    src, _ = export_scrfd(tmp_path / "det.onnx", size=64)
    with pytest.raises(OnnxModelError, match="wrong input shape"):
        add_model(src, tmp_path / "m", "arcface")


def test_a_file_without_manifest_is_refused(tmp_path: Path) -> None:
    src, _ = export_embedder(tmp_path / "r.onnx")
    with pytest.raises(OnnxModelError, match=r"no manifest .*faceserve models add"):
        load_embedding_model(src, "cpu")


def test_a_file_changed_after_it_was_added_is_refused(tmp_path: Path) -> None:
    src, _ = export_embedder(tmp_path / "r.onnx", seed=0)
    info = add_model(src, tmp_path / "m", "arcface", name="r")
    other, _ = export_embedder(tmp_path / "other.onnx", seed=1)
    shutil.copyfile(other, info.path)  # same name, other weights
    with pytest.raises(OnnxModelError, match="hash mismatch"):
        load_embedding_model("r", "cpu", model_dir=tmp_path / "m")
    with pytest.raises(OnnxModelError, match="hash mismatch"):
        read_onnx_manifest(info.path)


def test_two_files_are_two_model_versions_and_their_geometry_is_known(tmp_path: Path) -> None:
    a = add_model(export_embedder(tmp_path / "a.onnx", seed=0)[0], tmp_path / "m", "arcface",
                  name="a")
    b = add_model(export_embedder(tmp_path / "b.onnx", seed=1)[0], tmp_path / "m", "arcface",
                  name="b")
    assert a.version != b.version
    assert [m.name for m in list_models(tmp_path / "m")] == ["a", "b"]
    assert chip_geometry_of(a.version, tmp_path / "m") == ARCFACE
    assert chip_geometry_of("dlib-resnet-v1") == DLIB
    assert chip_geometry_of("onnx-gone-0123456789ab", tmp_path / "m") is None


def test_scrfd_equals_the_pytorch_original(tmp_path: Path) -> None:
    src, net = export_scrfd(tmp_path / "det.onnx", size=320)
    info = add_model(src, tmp_path / "m", "scrfd", name="det", licence="MIT")
    assert info.kind == "detector"
    det = load_scrfd(info.path, torch.device("cpu"))
    image = torch.from_numpy(
        np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    assert det.input_size == 320  # the graph's, not the preset's 640
    outs, (_, scale), canvas = det._forward(image)
    assert canvas == (320, 320)  # the graph's input is fixed
    blob, _ = letterbox(image, 320)
    with torch.no_grad():
        expected = net((blob - 127.5) / 128.0)
    assert scale == int(200 * 320 / 300) / 200  # SCRFD's det_scale: new / old height
    assert len(outs) == 9
    for got, want in zip(outs, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=TOL)


def test_anchor_centres_are_row_major_with_anchors_together() -> None:
    c = anchor_centres(2, 3, 8, 2)
    assert c.tolist() == [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0],
                          [0, 8], [0, 8], [8, 8], [8, 8], [16, 8], [16, 8]]


def _synthetic(size: int = 64) -> list[torch.Tensor]:
    """Outputs of a 64x64 input: strides 8/16/32 -> 8x8, 4x4, 2x2 locations, 2 anchors."""
    outs = []
    for kind, cols in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            n = (size // stride) ** 2 * 2
            outs.append(torch.zeros(n, cols) if kind != "score" else torch.full((n, 1), 0.01))
    return outs


def test_scrfd_decoding_and_nms_against_hand_computed_boxes() -> None:
    outs = _synthetic()
    s8, s16, b8, b16, k8 = outs[0], outs[1], outs[3], outs[4], outs[6]
    # Stride 8, row 2, column 3, anchor 1: index (2*8 + 3)*2 + 1 = 39, centre (24, 16).
    s8[39, 0] = 0.9
    b8[39] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # x 24-8, y 16-16, x 24+24, y 16+32
    k8[39] = torch.tensor([0.5, 0.25, 1.5, 0.25, 1.0, 1.0, 0.5, 2.0, 1.5, 2.0])
    # The same place's other anchor, a little less sure, nearly the same box: suppressed.
    s8[38, 0] = 0.8
    b8[38] = torch.tensor([1.0, 2.0, 3.0, 4.5])
    # Stride 16, row 3, column 0, anchor 1: index (3*4 + 0)*2 + 1 = 25, centre (0, 48).
    s16[25, 0] = 0.7
    b16[25] = torch.tensor([0.25, 0.25, 0.5, 0.5])  # (-4, 44, 8, 56)
    # Below the score threshold: never seen.
    s16[0, 0] = 0.49
    boxes, scores, points = decode_outputs(outs, (64, 64), score_threshold=0.5, nms_iou=0.4)
    assert scores.tolist() == pytest.approx([0.9, 0.7])
    assert boxes.tolist() == [[16.0, 0.0, 48.0, 48.0], [-4.0, 44.0, 8.0, 56.0]]
    assert points[0].tolist() == [[28, 18], [36, 18], [32, 24], [28, 32], [36, 32]]
    assert points[1].tolist() == [[0, 48]] * 5
    # Another export's order (points first) with a batch dimension: the same result.
    shuffled = [o[None] for o in outs[6:] + outs[:3] + outs[3:6]]
    again = decode_outputs(shuffled, (64, 64), score_threshold=0.5, nms_iou=0.4)
    assert again[0].tolist() == boxes.tolist()


def test_scrfd_refuses_outputs_that_do_not_fit_the_input() -> None:
    with pytest.raises(OnnxModelError, match="anchors"):
        decode_outputs(_synthetic(64), (96, 96))


def _blob_image(points: np.ndarray, h: int = 300, w: int = 400,
                sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for x, y in points:
        img += 250 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat(np.clip(img, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.mark.parametrize(("scale", "angle", "shift"),
                         [(2.3, 20.0, (80.0, 40.0)), (0.9, -35.0, (150.0, 120.0))])
def test_arcface_alignment_puts_the_points_on_the_template(
    scale: float, angle: float, shift: tuple[float, float]
) -> None:
    a = math.radians(angle)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    points = ARCFACE_TEMPLATE_112 @ rot.T + np.array(shift)
    chip = warp_chips(_blob_image(points), points[None], ARCFACE)[0].numpy()[:, :, 0]
    assert chip.shape == (112, 112)
    yy, xx = np.mgrid[0:112, 0:112]
    for tx, ty in ARCFACE_TEMPLATE_112:
        win = (np.abs(xx - tx) <= 6) & (np.abs(yy - ty) <= 6)
        w = chip.astype(np.float64) * win
        cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        assert math.hypot(cx - tx, cy - ty) <= 0.5, (tx, ty, cx, cy)


def test_the_face_region_is_the_same_part_of_the_face_in_both_chips() -> None:
    assert face_region(DLIB) == (slice(30, 120), slice(30, 120))  # quality.py's own
    rows, cols = face_region(ARCFACE)
    assert 20 <= cols.start < 30 and 83 <= cols.stop <= 92
    assert 35 <= rows.start < 45 and 95 <= rows.stop <= 106


def test_an_arcface_model_behind_dlibs_detector_is_refused(tmp_path: Path) -> None:
    from models.pipeline import FacePipeline

    add_model(export_embedder(tmp_path / "r.onnx")[0], tmp_path / "m", "arcface", name="r")
    with pytest.raises(GeometryError, match="FACESERVE_DETECTOR"):
        FacePipeline(device="cpu", model="r", model_dir=tmp_path / "m")


def test_arcface_chips_equal_an_independent_norm_crop() -> None:
    """InsightFace's norm_crop (skimage's SimilarityTransform fitted landmarks -> template,
    warped bilinearly, black outside) done with scikit-image, on points that no similarity
    fits exactly: the same chips, up to rounding."""
    skimage_transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    a = math.radians(12.0)
    rot = 1.6 * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    points = ARCFACE_TEMPLATE_112 @ rot.T + np.array([90.0, 30.0]) + rng.normal(0, 2.0, (5, 2))
    ours = warp_chips(image, points[None], ARCFACE)[0].numpy().astype(int)
    similarity = skimage_transform.SimilarityTransform
    if hasattr(similarity, "from_estimate"):  # scikit-image >= 0.26
        tform = similarity.from_estimate(points, ARCFACE_TEMPLATE_112)
    else:
        tform = similarity()
        assert tform.estimate(points, ARCFACE_TEMPLATE_112)
    ref = skimage_transform.warp(image.astype(np.float64), tform.inverse, output_shape=(112, 112),
                                 order=1, mode="constant", cval=0.0, preserve_range=True)
    assert np.abs(ours - np.round(ref)).max() <= 1


def test_without_the_optional_packages_the_service_imports_and_says_what_to_install(
    tmp_path: Path,
) -> None:
    """In a fresh interpreter where onnx, onnx2torch and onnxruntime cannot be imported."""
    import subprocess
    import sys

    src, _ = export_embedder(tmp_path / "r.onnx")
    code = (
        "import sys\n"
        "for m in ('onnx', 'onnx2torch', 'onnxruntime'): sys.modules[m] = None\n"
        "import models.pipeline, service.api.app, service.model_commands, models.quality\n"
        "from models.backends.onnx_file import OnnxModelError, add_model\n"
        "try:\n"
        f"    add_model({str(src)!r}, {str(tmp_path / 'm')!r}, 'arcface')\n"
        "except OnnxModelError as exc:\n"
        "    print(exc)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={"PYTHONPATH": f"{root}:{root / 'clients/python'}",
                                        "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                         timeout=300, check=True)
    assert "pip install 'faceserve[onnx]'" in out.stdout, out.stdout + out.stderr


def test_dlibs_model_behind_scrfd_gets_dlibs_points_from_its_boxes(tmp_path: Path) -> None:
    from models.pipeline import FacePipeline

    add_model(export_scrfd(tmp_path / "d.onnx", bright=True)[0], tmp_path / "m", "scrfd",
              name="det")
    pipeline = FacePipeline(device="cpu", detector="det", model_dir=tmp_path / "m")
    assert pipeline.landmark_scheme == "dlib5" and pipeline.chip_size == 150
    image = np.random.default_rng(0).integers(0, 40, (640, 640, 3), dtype=np.uint8)
    image[160:192, 224:256] = 230  # the detector's one face: this square
    faces = pipeline.embed_image(image)
    assert len(faces) == 1 and faces[0].box.as_tuple() == (224, 160, 255, 191)
    assert faces[0].chip.shape == (150, 150, 3) and faces[0].embedding.shape == (128,)
    # dlib's predictor placed its points near the box, and they are not SCRFD's.
    points = np.asarray(faces[0].landmarks)
    assert np.all((points >= (200, 136)) & (points <= (280, 216)))
    scrfd_points = np.array([224.0, 160.0]) + ARCFACE_TEMPLATE_112 * 32 / 112
    assert not np.allclose(points, scrfd_points, atol=1.0)

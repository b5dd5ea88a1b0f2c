"""The pipeline on a GPU gives what it gives on the CPU (skipped without CUDA).

Run by ``benchmarks/gpu_check.sh`` on a lent GPU machine; on a machine without CUDA every
test here skips with that reason. Boxes must match (the same faces, IoU >= 0.99) and
embeddings agree to cosine 0.999 (float32 convolutions on a GPU differ in the last bits).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.boxes import box_iou
from models.faces import Box
from models.pipeline import FacePipeline
from models.self_test import run_self_test

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.fixture(scope="module")
def pipelines() -> tuple[FacePipeline, FacePipeline]:
    return FacePipeline(device="cuda"), FacePipeline(device="cpu")


def _iou(a: Box, b: Box) -> float:
    return float(box_iou(torch.tensor([a.as_tuple()]), torch.tensor([b.as_tuple()]))[0, 0])

def _photos() -> list[np.ndarray]:
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut())
    big = np.kron(astronaut, np.ones((3, 3, 1), dtype=np.uint8))  # 1536 px, one large face
    return [astronaut, big]


def test_the_same_faces_and_embeddings_as_on_the_cpu(pipelines) -> None:
    gpu, cpu = pipelines
    for photo in _photos():
        on_gpu, on_cpu = gpu.embed([photo])[0], cpu.embed([photo])[0]
        assert len(on_gpu) == len(on_cpu) >= 1
        for a, b in zip(on_gpu, on_cpu, strict=True):
            assert _iou(a.box, b.box) >= 0.99
            assert float(a.embedding @ b.embedding) >= 0.999


def test_large_batches_match_the_cpu(pipelines) -> None:
    gpu, cpu = pipelines
    photo = _photos()[0]
    chip = cpu.align(photo, cpu.detect(photo)[:1])
    rng = np.random.default_rng(0)
    noise = rng.integers(-8, 9, (256, 150, 150, 3))
    chips = np.clip(chip.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    a, b = gpu.embed_chips(chips), cpu.embed_chips(chips)
    assert a.shape == (256, 128)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.999


def test_min_face_px_on_the_gpu(pipelines) -> None:
    gpu, cpu = pipelines
    big = _photos()[1]
    assert [f.box for f in gpu.detect(big, 200)] == [f.box for f in cpu.detect(big, 200)] or all(
        _iou(a.box, b.box) >= 0.99
        for a, b in zip(gpu.detect(big, 200), cpu.detect(big, 200), strict=True)
    )


def test_the_self_test_passes_on_the_gpu(pipelines) -> None:
    result = run_self_test(pipelines[0])
    assert result.device.startswith("cuda")
    assert result.embedding_cosine is not None and result.embedding_cosine >= 0.999

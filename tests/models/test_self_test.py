"""The start-up self-test passes on a working device and refuses a wrong one."""

from __future__ import annotations

import pytest
import torch

from models.pipeline import FacePipeline
from models.self_test import SelfTestFailed, run_self_test


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(device="cpu")


def test_on_the_cpu_it_reports_what_runs(pipeline: FacePipeline) -> None:
    result = run_self_test(pipeline)
    assert result.device == "cpu"
    assert result.torch == torch.__version__
    assert result.detect_ms > 0 and result.embed_ms_per_face > 0
    assert result.score_deviation is None and result.embedding_cosine is None


def test_agreeing_with_the_reference_passes(pipeline: FacePipeline) -> None:
    result = run_self_test(pipeline, reference=FacePipeline(device="cpu"))
    assert result.score_deviation is not None and result.score_deviation < 1e-4
    assert result.embedding_cosine is not None and result.embedding_cosine > 0.9999


def test_a_device_that_computes_differently_is_refused(pipeline: FacePipeline) -> None:
    """Stands in for a broken GPU: the same networks with their weights disturbed, as
    wrong kernels or memory would, checked against the true CPU networks."""
    broken = FacePipeline(device="cpu")
    with torch.no_grad():
        for p in broken.model.module.parameters():
            p.add_(torch.randn_like(p) * 0.05 * p.abs().mean())
    with pytest.raises(SelfTestFailed, match="different results"):
        run_self_test(broken, reference=pipeline)


def test_nan_outputs_are_refused() -> None:
    broken = FacePipeline(device="cpu")
    with torch.no_grad():
        next(broken.detector.net.parameters()).fill_(float("nan"))
    with pytest.raises(SelfTestFailed, match="NaN"):
        run_self_test(broken)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        FacePipeline(device="cuda")

"""bf16 screening of the detector (models/detector_screening.py): the float32 detector's boxes
and confidences, whatever the CPU.

bf16 arithmetic is emulated where the CPU lacks bf16 units, so these tests run (slower)
everywhere; they force screening on and off rather than relying on the CPU's choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.detector import FaceDetector, MMODNet, build_pyramid, load_detector
from models.detector_screening import (
    DEFAULT_MARGIN,
    ScreenedScorer,
    candidate_rects,
    exact_scores,
)
from models.imageio import decode_image


@pytest.fixture(scope="module")
def plain() -> FaceDetector:
    return load_detector(device="cpu", screening=False)


@pytest.fixture(scope="module")
def screened() -> FaceDetector:
    return load_detector(device="cpu", screening=True)


def _photos(shared: Path) -> list[Path]:
    lfw = sorted((shared / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))[::661]
    return sorted((shared / "detect").glob("*.jpg")) + lfw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_crop_scores_exactly_like_the_whole_map(seed: int) -> None:
    """Random network, random pyramid: every rectangle (corners, edges, middle, a whole
    column) scored from its crop equals the full pass there. A context one cell short, or
    a crop off by one stride, fails this."""
    torch.manual_seed(seed)
    net = MMODNet().eval()
    tensor = torch.randn(1, 3, 8 * 40 + 29 + seed, 8 * 27 + 29 + 3 * seed)
    with torch.inference_mode():
        full = net(tensor)[0, 0]
        h, w = full.shape
        rng = np.random.default_rng(seed)
        rects = [(0, 0, 0, 0), (h - 1, w - 1, h - 1, w - 1), (0, w - 3, 4, w - 1),
                 (h // 2, 0, h // 2 + 2, 1), (0, w // 2, h - 1, w // 2)]  # fmt: skip
        for _ in range(10):
            r0, c0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            rects.append((r0, c0, min(h - 1, r0 + int(rng.integers(0, 6))),
                          min(w - 1, c0 + int(rng.integers(0, 6)))))  # fmt: skip
        for r0, c0, r1, c1 in rects:
            got = exact_scores(net, tensor, (r0, c0, r1, c1), (h, w))
            torch.testing.assert_close(got, full[r0 : r1 + 1, c0 : c1 + 1], rtol=0, atol=1e-5)


def test_candidate_rectangles_cover_every_cell_and_merge_neighbours() -> None:
    mask = torch.zeros(40, 30, dtype=torch.bool)
    mask[2:5, 3:6] = True  # a cluster
    mask[7, 4] = True  # 3 rows below it: same rectangle at gap 3
    mask[30, 25] = True  # far away: its own
    rects = candidate_rects(mask, gap=3)
    assert sorted(map(tuple, rects.tolist())) == [(2, 3, 7, 5), (30, 25, 30, 25)]
    covered = torch.zeros_like(mask)
    for r0, c0, r1, c1 in rects:
        covered[r0 : r1 + 1, c0 : c1 + 1] = True
    assert bool(covered[mask].all())
    assert len(candidate_rects(mask, gap=0)) == 3
    assert candidate_rects(torch.zeros(5, 5, dtype=torch.bool), gap=3).shape == (0, 4)


def test_windows_near_the_threshold_are_float32_and_the_rest_bf16(
    plain: FaceDetector, astronaut: np.ndarray
) -> None:
    """The map the screen returns: float32 at every cell within the margin of the
    threshold, bf16 (so not equal to float32) in the background; the screen did run."""
    tensor, _ = build_pyramid(torch.from_numpy(astronaut), plain._avg)
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    scorer = ScreenedScorer(plain.net)
    with torch.inference_mode():
        full = plain.net(tensor)[0, 0]
        got = scorer.scores(tensor, 0.0)
    near = got >= -DEFAULT_MARGIN
    assert 0 < int(near.sum()) < near.numel() // 20
    torch.testing.assert_close(got[near], full[near], rtol=0, atol=1e-5)
    assert not torch.equal(got[~near], full[~near])  # bf16 there: screening was used
    assert torch.equal(got > 0, full > 0)


def test_screened_detector_finds_the_same_boxes_and_confidences(
    plain: FaceDetector, screened: FaceDetector, shared_data: Path
) -> None:
    """The group photos and a spread of LFW photos, at upsample 0 and 1: the same boxes in
    the same order, confidences within float32 rounding."""
    photos = _photos(shared_data)
    assert len(photos) > 20
    for path in photos:
        img = decode_image(path.read_bytes())
        for upsample in (0, 1) if max(img.shape) <= 500 else (0,):
            a = plain.detect(img, upsample=upsample, max_side=2048)
            b = screened.detect(img, upsample=upsample, max_side=2048)
            assert [box for box, _ in a] == [box for box, _ in b], (path.name, upsample)
            np.testing.assert_allclose([c for _, c in a], [c for _, c in b], atol=1e-4)


def test_the_margin_is_several_times_the_bf16_error(plain: FaceDetector, shared_data: Path) -> None:
    """The margin's premise: bf16 moves no score by more than a third of it on real photos.
    A margin below the error would drop float32 faces; this says so first."""
    scorer = ScreenedScorer(plain.net)
    worst = 0.0
    for path in _photos(shared_data):
        img = torch.from_numpy(np.array(decode_image(path.read_bytes())))
        if max(img.shape) > 1000:
            continue
        tensor, _ = build_pyramid(img, plain._avg)
        tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            full = plain.net(tensor)[0, 0]
            bf16 = scorer._bf16(tensor.to(torch.bfloat16))[0, 0].float()
        worst = max(worst, float((full - bf16).abs().max()))
    assert 0 < worst < DEFAULT_MARGIN / 3, worst

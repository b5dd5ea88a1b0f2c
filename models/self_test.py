"""A start-up self-test: the models run, on the device the operator asked for, correctly.

GPU set-ups fail quietly in other face services: a CUDA wheel without a usable driver, a
kernel image built for another architecture, numerics that differ on the card. Each of
these either falls back to the CPU unnoticed or answers wrong. So, before the service says
it is ready, a synthetic photo goes through the detector and a batch of synthetic chips
through the embedder on the configured device; on a GPU the same inputs also go through CPU
copies of the networks, and the outputs must agree. The measured times and versions are
reported (``/readyz``, the log), so what is really running is on record.

No face photo is needed (none ships with the package): the check compares the device with
the CPU on the same input, which is what a broken set-up gets wrong.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from models.detector import FaceDetector
from models.embedder import CHIP_SIZE

__all__ = ["SelfTest", "SelfTestFailed", "run_self_test"]

# Device and CPU must agree this closely: raw detector scores (dlib's threshold is 0, real
# faces score ~1) and embedding cosine (two photos of one person score ~0.95).
MAX_SCORE_DEVIATION = 1e-2
MIN_EMBEDDING_COSINE = 0.999
PHOTO_SHAPE = (480, 640)
CHIPS = 8


class SelfTestFailed(RuntimeError):
    """The models do not run correctly on the configured device."""


@dataclass(frozen=True)
class SelfTest:
    """What the self-test ran on and measured."""

    device: str
    device_name: str
    torch: str
    cuda: str | None
    detect_ms: float  # one 640x480 photo, the whole detector
    embed_ms_per_face: float  # a batch of 8 chips
    score_deviation: float | None  # device vs CPU, max |score difference|; None on a CPU
    embedding_cosine: float | None  # device vs CPU, the least cosine; None on a CPU

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(seed: int = 0, chip_size: int = CHIP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A textured 640x480 'photo' and 8 chips: smooth gradients plus noise, like images."""
    rng = np.random.default_rng(seed)
    h, w = PHOTO_SHAPE
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200
    photo = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    chips = rng.integers(0, 256, (CHIPS, chip_size, chip_size, 3), dtype=np.uint8)
    return photo, chips


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up: lazy initialisation, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def _scores(detector: Any, photo: np.ndarray) -> np.ndarray:
    scores, _ = detector.score_map(torch.from_numpy(photo).to(detector.device))
    return scores.float().cpu().numpy()


def run_self_test(pipeline: Any, reference: Any = None) -> SelfTest:
    """Run the check on ``pipeline`` (a ``models.pipeline.FacePipeline``); raise
    ``SelfTestFailed`` saying what went wrong. ``reference``: what to compare with (a
    pipeline on the CPU); by default CPU copies of the pipeline's own networks, and only
    when the pipeline is not on the CPU already."""
    device = torch.device(pipeline.device)
    photo, chips = _inputs(chip_size=getattr(pipeline, "chip_size", CHIP_SIZE))
    try:
        detect_ms = _timed(lambda: pipeline.detector.detect(photo))
        embed_ms = _timed(lambda: pipeline.embed_chips(chips)) / CHIPS
        embeddings = pipeline.embed_chips(chips)
        scores = _scores(pipeline.detector, photo)
    except Exception as exc:
        raise SelfTestFailed(
            f"the models fail on {device}: {type(exc).__name__}: {exc}"
        ) from exc
    if not (np.isfinite(embeddings).all() and np.isfinite(scores).all()):
        raise SelfTestFailed(f"the models give NaN or infinite values on {device}")
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise SelfTestFailed(f"embeddings on {device} are not unit vectors (norms {norms})")

    deviation = cosine = None
    if reference is not None or device.type != "cpu":
        cpu = torch.device("cpu")
        if reference is None:
            if hasattr(pipeline.detector, "on_device"):  # SCRFD (models.backends.scrfd)
                detector = pipeline.detector.on_device(cpu)
            else:
                detector = FaceDetector(
                    copy.deepcopy(pipeline.detector.net).to(cpu), pipeline.detector.config, cpu
                )
            module = copy.deepcopy(pipeline.model.module).to(cpu)
        else:
            detector, module = reference.detector, reference.model.module
        deviation = float(np.abs(_scores(detector, photo) - scores).max())
        from models.embedder import embed_chips

        expected = embed_chips(module, chips, flip=pipeline.flip).numpy()
        cosine = float(np.min(np.sum(expected * embeddings, axis=1)))
        if deviation > MAX_SCORE_DEVIATION or cosine < MIN_EMBEDDING_COSINE:
            raise SelfTestFailed(
                f"the models compute different results on {device} than on the CPU "
                f"(detector scores differ by up to {deviation:.3g}, embeddings agree only "
                f"to cosine {cosine:.5f}): the GPU set-up is broken"
            )

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return SelfTest(
        device=str(device),
        device_name=name,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        detect_ms=round(detect_ms, 2),
        embed_ms_per_face=round(embed_ms, 2),
        score_deviation=deviation,
        embedding_cosine=cosine,
    )


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

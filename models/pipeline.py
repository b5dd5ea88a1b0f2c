"""The face pipeline façade: image -> faces (box, landmarks) -> aligned chips -> embeddings.

Every caller (the HTTP service, evaluation, training data preparation, the CLI) goes through
``FacePipeline`` so that all of them see the same detector settings, alignment and model
version. Detection and alignment are per image; embedding is batched across images and faces,
which is what the service's micro-batcher relies on (``embed_chips``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.align import extract_chips
from models.detector import load_detector
from models.device import resolve_device
from models.embedder import CHIP_SIZE
from models.embedding_model import EmbeddingModel, load_embedding_model
from models.faces import Face
from models.landmarks import load_shape_predictor

__all__ = ["FacePipeline"]

CHIP_PADDING = 0.25  # dlib's padding for descriptor chips


class FacePipeline:
    """Loads the three converted dlib models once and runs them on one device.

    ``model`` picks the embedder: ``None``/``"dlib"`` for the published dlib ResNet, or the path
    of a file written by ``faceserve export`` (detection and alignment stay dlib's, which is
    what such a model was trained on). ``upsample`` doubles the photo before detection (finds
    faces below ~80 px, 4x slower); ``max_side`` shrinks very large photos before detection
    (boxes are mapped back), which bounds detection time and memory for 12-megapixel phone
    photos; ``flip`` averages each embedding with that of the mirrored chip.
    """

    chip_size = CHIP_SIZE

    def __init__(
        self,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        flip: bool = False,
        upsample: int = 0,
        max_side: int | None = 2048,
        batch_size: int = 64,
        model: str | Path | None = None,
    ) -> None:
        self.device = resolve_device(device)
        cache = Path(cache_dir) if cache_dir is not None else None
        self.detector = load_detector(device=self.device, cache_dir=cache)
        self.landmarker = load_shape_predictor(cache_dir=cache)
        self.model: EmbeddingModel = load_embedding_model(model, self.device, cache)
        self.embedder = self.model.module
        self.model_version = self.model.version
        self.embedding_size = self.model.embedding_size
        self.model_manifest = self.model.manifest  # {} for the dlib model
        self.flip = flip
        self.upsample = upsample
        self.max_side = max_side
        self.batch_size = batch_size

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces with boxes, confidences and 5-point landmarks, most confident first."""
        image = _as_rgb(image)
        dets = self.detector.detect(image, upsample=self.upsample, max_side=self.max_side)
        if not dets:
            return []
        boxes = [box for box, _ in dets]
        points = self.landmarker.predict(image, boxes)
        return [
            Face(box=box, confidence=float(conf), landmarks=points[i])
            for i, (box, conf) in enumerate(dets)
        ]

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Aligned 150x150 RGB chips, one per face, all faces of the image in one call."""
        if not faces:
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
        landmarks = np.stack([np.asarray(f.landmarks, dtype=np.float64) for f in faces])
        chips = extract_chips(
            _as_rgb(image), landmarks, size=CHIP_SIZE, padding=CHIP_PADDING, device=self.device
        )
        return chips.cpu().numpy()

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """L2-normalised float32 embeddings ``(N, D)`` of aligned chips ``(N, 150, 150, 3)``."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"chips must be (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {chips.shape}")
        return self.model.embed_chips(chips, flip=self.flip, batch_size=self.batch_size)

    def embed(
        self, images: Sequence[np.ndarray], max_faces: int | None = None
    ) -> list[list[Face]]:
        """Detect, align and embed every face of every image; one embedding pass for all."""
        per_image: list[list[Face]] = []
        chip_batches: list[np.ndarray] = []
        for image in images:
            faces = self.detect(image)
            if max_faces is not None:
                faces = faces[:max_faces]
            per_image.append(faces)
            chip_batches.append(self.align(image, faces))
        chips = np.concatenate(chip_batches) if chip_batches else np.zeros((0, 150, 150, 3))
        vectors = self.embed_chips(chips.astype(np.uint8)) if len(chips) else None
        out: list[list[Face]] = []
        i = 0
        for faces in per_image:
            done = []
            for face in faces:
                assert vectors is not None
                done.append(
                    Face(
                        box=face.box,
                        confidence=face.confidence,
                        landmarks=face.landmarks,
                        embedding=vectors[i],
                        chip=chips[i],
                        model=self.model_version,
                    )
                )
                i += 1
            out.append(done)
        return out

    def embed_image(self, image: np.ndarray, max_faces: int | None = None) -> list[Face]:
        return self.embed([image], max_faces=max_faces)[0]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W) greyscale or (H, W, 3) RGB uint8; anything else is a caller bug."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    return np.ascontiguousarray(image)

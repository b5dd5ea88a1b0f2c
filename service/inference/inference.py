"""Image bytes -> embedded faces, off the event loop.

Decoding, detection, landmarks and alignment of one upload run together in one call on the
inference thread pool (they are per image and cannot be merged across requests); the aligned
chips then go to the embedder, which micro-batches them with other requests' chips. The event
loop only awaits.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from models.cpu_share import CoreShare
from models.face_selection import Selection, primary_face
from models.faces import Face
from models.imageio import DecodedImage, decode_reduced
from models.quality import FaceQuality, assess
from service.api.errors import NotAFace
from service.inference.batcher import Embedder
from service.inference.memory import PixelBudget

__all__ = [
    "EmbeddedFaces", "FacePicker", "Inference", "Pipeline", "RequestGone", "keep_all",
    "most_confident",
]

# Chooses which detected faces to embed; may raise a ServiceError (e.g. several faces).
FaceSelector = Callable[[list[Face]], list[Face]]
# Chooses the one face (faces in the client's pixels, image height, width); None: no face.
FacePicker = Callable[[list[Face], int, int], Selection | None]


class Pipeline(Protocol):
    """What the service needs of ``models.pipeline.FacePipeline``."""

    model_version: str
    embedding_size: int

    def detect(self, image: np.ndarray, min_face_px: int | None = None) -> list[Face]: ...

    def detect_face_crop(self, image: np.ndarray) -> list[Face]: ...

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray: ...

    def embed_chips(self, chips: np.ndarray) -> np.ndarray: ...


@dataclass
class EmbeddedFaces:
    """The chosen faces of one image, with their embeddings (rows match ``faces``)."""

    faces: list[Face]
    embeddings: np.ndarray  # (N, 128) float32, L2-normalised
    chips: np.ndarray  # (N, S, S, 3) uint8, S the model's chip size (150 for dlib's)
    faces_detected: int
    image_sha256: str
    # How the one face was chosen (``Inference.primary_face``); None for multi-face calls.
    selection: Selection | None = None
    quality: list[FaceQuality] = field(default_factory=list)  # rows match ``faces``


class RequestGone(Exception):
    """Raised on the inference thread between stages once the request was cancelled (timed
    out, client gone): the rest of its work is skipped rather than done for nobody."""


def _check(gone: threading.Event | None) -> None:
    if gone is not None and gone.is_set():
        raise RequestGone("the request was cancelled")


def keep_all(faces: list[Face]) -> list[Face]:
    return faces


def most_confident(limit: int) -> FaceSelector:
    def select(faces: list[Face]) -> list[Face]:
        return faces[:limit]  # the pipeline returns faces most confident first

    return select


class Inference:
    def __init__(
        self,
        pipeline: Pipeline,
        embedder: Embedder,
        executor: Executor,
        *,
        max_pixels: int,
        pixel_budget: PixelBudget | None = None,
        cores: CoreShare | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.embedder = embedder
        self.executor = executor
        self.max_pixels = max_pixels
        self.pixel_budget = pixel_budget
        # Detection and alignment run as one stage of the CPU's share (models.cpu_share).
        self.cores = cores

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _decode(
        self, data: bytes, min_face_px: int | None, held: list[int] | None = None
    ) -> DecodedImage:
        """The upload, decoded at the smallest size the pipeline says loses nothing. With a
        pixel budget, the decoded pixels are taken from it first and appended to ``held``
        (the caller gives them back once the image is no longer needed)."""
        plan = getattr(self.pipeline, "decode_reduction", None)  # fakes in tests have none
        reduction = None if plan is None else (lambda w, h: plan(w, h, min_face_px))
        admit = None
        budget = self.pixel_budget
        if budget is not None and held is not None:
            def admit(pixels: int) -> None:
                budget.take(pixels)
                held.append(pixels)
        return decode_reduced(data, max_pixels=self.max_pixels, reduction=reduction,
                              admit=admit)

    def _detect_and_align(
        self,
        data: bytes,
        select: FaceSelector,
        primary: bool,
        face_crop: bool = False,
        min_face_px: int | None = None,
        gone: threading.Event | None = None,
        pick: FacePicker | None = None,
    ) -> tuple[list[Face], np.ndarray, int, str, Selection | None, list[FaceQuality]]:
        _check(gone)  # cancelled while it waited for a thread
        held: list[int] = []
        try:
            return self._detect_and_align_held(
                data, select, primary, face_crop, min_face_px, gone, held, pick
            )
        finally:
            if held and self.pixel_budget is not None:
                self.pixel_budget.give(held[0])

    def _detect_and_align_held(
        self,
        data: bytes,
        select: FaceSelector,
        primary: bool,
        face_crop: bool,
        min_face_px: int | None,
        gone: threading.Event | None,
        held: list[int],
        pick: FacePicker | None = None,
    ) -> tuple[list[Face], np.ndarray, int, str, Selection | None, list[FaceQuality]]:
        digest = hashlib.sha256(data).hexdigest()
        decoded = self._decode(data, None if face_crop else min_face_px, held)
        _check(gone)
        pixels = decoded.image.shape[0] * decoded.image.shape[1]
        with self.cores.photo_stage(pixels) if self.cores is not None else nullcontext():
            faces = self._detect_and_align_image(
                decoded, select, primary, face_crop, min_face_px, gone, pick
            )
        chosen, chips, detected, selection, quality = faces
        return chosen, chips, detected, digest, selection, quality

    def _detect_and_align_image(
        self,
        decoded: DecodedImage,
        select: FaceSelector,
        primary: bool,
        face_crop: bool,
        min_face_px: int | None,
        gone: threading.Event | None,
        pick: FacePicker | None,
    ) -> tuple[list[Face], np.ndarray, int, Selection | None, list[FaceQuality]]:
        image = decoded.image
        if face_crop:
            detected = self.pipeline.detect_face_crop(image)
            if not detected:
                raise NotAFace(
                    "face_crop=true but the image is not a face: the detector finds no face "
                    "in it, even aligned or upsampled"
                )
        else:
            # The request's minimum, else the server's (FACESERVE_MIN_FACE_PX), which the
            # decode was reduced for: both are the client's pixels, told to the pipeline in
            # the decoded image's (the pipeline's own minimum would be taken as those).
            wanted = (min_face_px if min_face_px is not None
                      else getattr(self.pipeline, "min_face_px", None))  # fakes have none
            if wanted is None:
                detected = self.pipeline.detect(image)
            else:
                detected = self.pipeline.detect(image, min_face_px=local_size(wanted, decoded))
        # Selection, quality and the response speak the client's pixels; chips come from
        # the decoded image, in its own.
        sx, sy = decoded.scale
        reduced = (sx, sy) != (1.0, 1.0)
        told = [f.scaled(sx, sy) for f in detected] if reduced else detected
        chosen = select(told)
        selection = None
        if primary:
            selection = (pick or primary_face)(chosen, decoded.height, decoded.width)
            chosen = [selection.face] if selection is not None else []
        if reduced:  # selection returns the very objects it was given
            where = {id(f): i for i, f in enumerate(told)}
            local = [detected[where[id(f)]] for f in chosen]
        else:
            local = chosen
        _check(gone)  # detection is the long stage: skip alignment for a request gone since
        chips = self.pipeline.align(image, local)
        # The model's chip geometry (ArcFace chips are cut otherwise than dlib's); fakes: dlib.
        quality = assess(chosen, chips, getattr(self.pipeline, "geometry", None))
        return chosen, chips, len(detected), selection, quality

    async def faces(
        self,
        data: bytes,
        select: FaceSelector,
        face_crop: bool = False,
        min_face_px: int | None = None,
    ) -> EmbeddedFaces:
        """Decode ``data``, detect, keep ``select(faces)``, align and embed them.

        Raises ``models.imageio.ImageError`` for undecodable bytes; no face is not an error
        here (``faces`` is empty) — each endpoint decides what that means. ``face_crop``:
        the image is one cropped face (``FacePipeline.detect_face_crop``); one that is not
        a face is ``NotAFace`` (422), since the client said it was one. ``min_face_px``: the
        smallest face that must be found (``FacePipeline.detect``); None is the server's.
        """
        return await self._embed(data, select, primary=False, face_crop=face_crop,
                                 min_face_px=min_face_px)

    async def primary_face(
        self,
        data: bytes,
        check: FaceSelector = keep_all,
        face_crop: bool = False,
        min_face_px: int | None = None,
        pick: FacePicker | None = None,
    ) -> EmbeddedFaces:
        """Like ``faces``, for the photo's one primary face (``models.face_selection``):
        ``faces`` holds it (or nothing) and ``selection`` says why it was chosen. ``check``
        sees every detection first (it may refuse the photo). ``pick`` replaces the primary
        face rule (a face the client chose, ``models.face_selection.requested_face``)."""
        return await self._embed(data, check, primary=True, face_crop=face_crop,
                                 min_face_px=min_face_px, pick=pick)

    async def _embed(
        self,
        data: bytes,
        select: FaceSelector,
        *,
        primary: bool,
        face_crop: bool,
        min_face_px: int | None = None,
        pick: FacePicker | None = None,
    ) -> EmbeddedFaces:
        # Cancelling the awaits below (the request timeout, a client gone) drops work still
        # queued (the executor's and the batcher's futures are cancelled with them); ``gone``
        # tells the stage already running on a thread to stop at its next step.
        gone = threading.Event()
        try:
            chosen, chips, detected, digest, selection, quality = await self._run(
                self._detect_and_align, data, select, primary, face_crop, min_face_px, gone,
                pick,
            )
            embeddings = await self.embedder.embed(chips)
        except asyncio.CancelledError:
            gone.set()
            raise
        return EmbeddedFaces(chosen, embeddings, chips, detected, digest, selection, quality)

    async def encode_chip(self, chip: np.ndarray) -> bytes:
        return await self._run(encode_jpeg, chip)


def local_size(pixels: int, decoded: DecodedImage) -> int:
    """A length in the client's photo, in pixels of the (possibly reduced) decoded image."""
    return max(1, int(pixels / max(decoded.scale)))


CHIP_JPEG_QUALITY = 95


def encode_jpeg(chip: np.ndarray, quality: int = CHIP_JPEG_QUALITY) -> bytes:
    """The stored form of an aligned chip. Quality 95 because ``faceserve reembed`` computes
    new models' embeddings from it: over 500 LFW chips the dlib embedding of the decoded JPEG
    is within cosine 0.9997 of the original's (mean 0.99991; 7 KiB a chip), against 0.9995
    at quality 92 (``benchmarks/bench_reembed.py``)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chip, dtype=np.uint8), "RGB").save(
        buf, format="JPEG", quality=quality
    )
    return buf.getvalue()

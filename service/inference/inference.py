"""Image bytes -> embedded faces, off the event loop.

Decoding, detection, landmarks and alignment of one upload run together in one call (they are
per image and cannot be merged across requests): in a detection worker process on a busy
CPU (``service.inference.workers``), else on the inference thread pool. The faces wanted are
chosen from what it found, and their aligned chips go to the embedder, which micro-batches
them with other requests' chips. The event loop only awaits.
"""

from __future__ import annotations

import asyncio
import functools
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
from models.imageio import decoded_pixels
from models.photo_faces import (
    PhotoJob,
    decode_photo,
    detect_faces,
    in_client_pixels,
    reduction_for,
)
from models.quality import FaceQuality, assess
from service.api.errors import NotAFace
from service.inference.batcher import Embedder
from service.inference.memory import PixelBudget
from service.inference.workers import DetectionWorkers

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
        workers: DetectionWorkers | None = None,
        admitted: Callable[[], int] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.embedder = embedder
        self.executor = executor
        self.max_pixels = max_pixels
        self.pixel_budget = pixel_budget
        # Detection and alignment run as one stage of the CPU's share (models.cpu_share).
        self.cores = cores
        self.workers = workers  # None: the photo's stage runs on ``executor``
        # With workers, a photo arriving while no other stage runs stays in this process:
        # alone, it has the GIL to itself and saves the hand-over (~2 ms of a 50 ms request).
        self.inline_when_idle = True
        # Image requests inside the inference stage (``AdmissionGate.inside``): a photo is
        # alone only when its request is the one admitted (at concurrency 4, photos kept
        # inline in the gaps between others cost ~2% of identify's throughput against
        # always using the workers, three interleaved runs).
        self.admitted = admitted
        self._photos = 0  # photos between admission and the end of their detection

    def photos_on_their_way(self) -> bool:
        """Whether some photo is being detected now (its chips will soon want embedding)."""
        return self._photos > 0

    def _idle(self) -> bool:
        """No other request admitted, no other photo on its way through detection and no
        stage running anywhere."""
        return (self.inline_when_idle and self._photos == 0
                and (self.admitted is None or self.admitted() <= 1)
                and self.cores is not None and self.cores.running == 0)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _detect_and_align(
        self,
        data: bytes,
        select: FaceSelector,
        primary: bool,
        face_crop: bool = False,
        min_face_px: int | None = None,
        gone: threading.Event | None = None,
        pick: FacePicker | None = None,
        alone: bool = False,
    ) -> Chosen:
        """Decode, detect, choose and align on this process's threads. ``alone``: kept from
        the workers because nothing else runs, so a mid-sized photo takes every core
        (``CoreShare.photo_stage``)."""
        _check(gone)  # cancelled while it waited for a thread
        held: list[int] = []
        budget = self.pixel_budget

        def admit(pixels: int) -> None:
            assert budget is not None
            budget.take(pixels)
            held.append(pixels)

        try:
            decoded = decode_photo(self.pipeline, data, self.max_pixels, face_crop, min_face_px,
                                   admit if budget is not None else None)
            digest = hashlib.sha256(data).hexdigest()
            _check(gone)
            pixels = decoded.image.shape[0] * decoded.image.shape[1]
            cores = self.cores
            with cores.photo_stage(pixels, alone) if cores is not None else nullcontext():
                local = detect_faces(self.pipeline, decoded, face_crop, min_face_px)
                _require_face(face_crop, local)
                told = in_client_pixels(local, decoded)
                rows, chosen, selection = _choose(told, decoded.width, decoded.height, select,
                                                  primary, pick)
                _check(gone)  # detection is the long stage: skip alignment for a request gone
                chips = self.pipeline.align(decoded.image, [local[i] for i in rows])
            # The model's chip geometry (ArcFace chips are cut otherwise than dlib's); fakes:
            # dlib's.
            quality = assess(chosen, chips, getattr(self.pipeline, "geometry", None))
            return Chosen(chosen, chips, len(local), digest, selection, quality)
        finally:
            if held and budget is not None:
                budget.give(held[0])

    async def _detect_in_worker(
        self,
        workers: DetectionWorkers,
        data: bytes,
        select: FaceSelector,
        primary: bool,
        face_crop: bool,
        min_face_px: int | None,
        pick: FacePicker | None,
    ) -> Chosen:
        """``_detect_and_align`` with the photo's stage in a worker process, which aligns and
        assesses every face it finds; the choice of faces is made here. The pixel budget is
        taken from the header before the photo leaves for the worker."""
        budget = self.pixel_budget
        release = None
        if budget is not None:
            reduction = reduction_for(self.pipeline, face_crop, min_face_px)
            pixels = decoded_pixels(data, self.max_pixels, reduction)
            budget.take(pixels)
            release = functools.partial(budget.give, pixels)
        job = PhotoJob(data, self.max_pixels, face_crop, min_face_px)
        photo = await workers.faces(job, release)
        _require_face(face_crop, photo.faces)
        rows, chosen, selection = _choose(photo.faces, photo.width, photo.height, select,
                                          primary, pick)
        return Chosen(chosen, photo.chips[rows], len(photo.faces), photo.image_sha256,
                      selection, [photo.quality[i] for i in rows])

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
            workers = self.workers if self.workers is not None and not self._idle() else None
            self._photos += 1  # before the first await: a second photo of a verify sees it
            try:
                if workers is not None:
                    found = await self._detect_in_worker(workers, data, select, primary,
                                                         face_crop, min_face_px, pick)
                else:
                    found = await self._run(self._detect_and_align, data, select, primary,
                                            face_crop, min_face_px, gone, pick,
                                            self.workers is not None)  # alone
            finally:
                self._photos -= 1
            embeddings = await self.embedder.embed(found.chips)
        except asyncio.CancelledError:
            gone.set()
            raise
        return EmbeddedFaces(found.faces, embeddings, found.chips, found.detected,
                             found.image_sha256, found.selection, found.quality)

    async def encode_chip(self, chip: np.ndarray) -> bytes:
        return await self._run(encode_jpeg, chip)


@dataclass
class Chosen:
    """The faces chosen from one photo, before embedding."""

    faces: list[Face]
    chips: np.ndarray
    detected: int
    image_sha256: str
    selection: Selection | None
    quality: list[FaceQuality]


def _require_face(face_crop: bool, faces: list[Face]) -> None:
    if face_crop and not faces:
        raise NotAFace(
            "face_crop=true but the image is not a face: the detector finds no face in it, "
            "even aligned or upsampled"
        )


def _choose(
    faces: list[Face], width: int, height: int, select: FaceSelector, primary: bool,
    pick: FacePicker | None,
) -> tuple[list[int], list[Face], Selection | None]:
    """Which of ``faces`` (the client's pixels) to embed: their rows, the faces, and for a
    primary-face call how the one face was chosen."""
    chosen = select(faces)
    selection = None
    if primary:
        selection = (pick or primary_face)(chosen, height, width)
        chosen = [selection.face] if selection is not None else []
    where = {id(f): i for i, f in enumerate(faces)}  # selection returns the objects it got
    return [where[id(f)] for f in chosen], chosen, selection


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

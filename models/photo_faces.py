"""One upload to the faces in it, ready to embed: decode, detect, landmarks, align, quality.

This is the per-photo half of the service's work (the other half, embedding, batches faces
across requests). ``detect_faces`` is the part the service's inference threads run between
decoding and choosing faces. ``photo_faces`` runs all of it for every face found, as one
picklable job: the detection worker processes (``models.photo_worker``) run it away from the
server's GIL and send back every face with its chip and quality, and the server chooses
among them (selection rules are the server's, and may refuse a photo).
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.cpu_share import CoreShare
from models.faces import Face
from models.imageio import Admit, DecodedImage, Reduction, decode_reduced
from models.quality import FaceQuality, assess

__all__ = [
    "PhotoFaces", "PhotoJob", "decode_photo", "detect_faces", "in_client_pixels",
    "local_size", "photo_faces", "reduction_for",
]


@dataclass(frozen=True)
class PhotoJob:
    """One upload and how to look at it (the request's fields that change detection)."""

    data: bytes
    max_pixels: int
    face_crop: bool = False
    min_face_px: int | None = None  # the request's; None: the pipeline's


@dataclass
class PhotoFaces:
    """Every face of one photo, in the client's pixels, most confident first, each with its
    aligned chip and quality measures (rows match ``faces``)."""

    faces: list[Face]
    chips: np.ndarray  # (N, S, S, 3) uint8
    quality: list[FaceQuality] = field(default_factory=list)
    width: int = 0  # the client's photo, upright
    height: int = 0
    image_sha256: str = ""


def reduction_for(
    pipeline: Any, face_crop: bool, min_face_px: int | None
) -> Reduction | None:
    """By how much the pipeline lets the upload be decoded smaller (``decode_reduction``);
    None for pipelines without the rule (the tests' fakes). A face crop is decoded for the
    pipeline's own minimum: the request's is about photos."""
    plan = getattr(pipeline, "decode_reduction", None)
    wanted = None if face_crop else min_face_px
    return None if plan is None else (lambda w, h: plan(w, h, wanted))


def decode_photo(
    pipeline: Any, data: bytes, max_pixels: int, face_crop: bool, min_face_px: int | None,
    admit: Admit | None = None,
) -> DecodedImage:
    """The upload, decoded at the smallest size the pipeline says loses nothing."""
    reduction = reduction_for(pipeline, face_crop, min_face_px)
    return decode_reduced(data, max_pixels=max_pixels, reduction=reduction, admit=admit)


def local_size(pixels: int, decoded: DecodedImage) -> int:
    """A length in the client's photo, in pixels of the (possibly reduced) decoded image."""
    return max(1, int(pixels / max(decoded.scale)))


def detect_faces(
    pipeline: Any, decoded: DecodedImage, face_crop: bool, min_face_px: int | None
) -> list[Face]:
    """The faces of the decoded image, in its pixels, most confident first; for a face crop,
    its one face or nothing (``FacePipeline.detect_face_crop``)."""
    image = decoded.image
    if face_crop:
        return pipeline.detect_face_crop(image)
    # The request's minimum, else the server's, which the decode was reduced for: both are
    # the client's pixels, told to the pipeline in the decoded image's (the pipeline's own
    # minimum would be taken as those).
    wanted = min_face_px if min_face_px is not None else getattr(pipeline, "min_face_px", None)
    if wanted is None:
        return pipeline.detect(image)
    return pipeline.detect(image, min_face_px=local_size(wanted, decoded))


def in_client_pixels(faces: list[Face], decoded: DecodedImage) -> list[Face]:
    """``faces`` of the decoded image, in the client's photo (the same objects when the photo
    was decoded at full size)."""
    sx, sy = decoded.scale
    if (sx, sy) == (1.0, 1.0):
        return faces
    return [f.scaled(sx, sy) for f in faces]


def photo_faces(pipeline: Any, job: PhotoJob, cores: CoreShare | None = None) -> PhotoFaces:
    """Decode, detect, align and assess every face of ``job``'s photo. Image errors
    (``models.imageio.ImageError``) propagate; no face is an empty result."""
    decoded = decode_photo(pipeline, job.data, job.max_pixels, job.face_crop, job.min_face_px)
    pixels = decoded.image.shape[0] * decoded.image.shape[1]
    # A worker process runs one photo at a time: its stage has the process's torch to itself.
    with cores.photo_stage(pixels, alone=True) if cores is not None else nullcontext():
        local = detect_faces(pipeline, decoded, job.face_crop, job.min_face_px)
        chips = pipeline.align(decoded.image, local)
    faces = in_client_pixels(local, decoded)
    quality = assess(faces, chips, getattr(pipeline, "geometry", None))
    return PhotoFaces(faces, chips, quality, decoded.width, decoded.height,
                      hashlib.sha256(job.data).hexdigest())


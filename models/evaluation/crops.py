"""Cropped probes: LFW faces cut out the way phone apps send them, and what the pipeline does
with them.

Client apps often run the phone's own face detector and upload only the face: a tight crop
of about 100x100 px in which the face is ~60 px wide, under the MMOD detector's ~80 px
minimum at ``upsample=0``. These probes reproduce that from LFW: the face eval lfw used
(the cache entry's chosen detection) is cut around its detected box padded by
:data:`CROP_PAD` of the box width on every side (edge pixels repeated where the crop leaves
the image), resized to ``size`` x ``size`` and JPEG-encoded (quality 90), so the face is
``size / (1 + 2 * CROP_PAD)`` px wide (~59 px at 100).

``crop_probe_embeddings`` runs them through a pipeline as the service would (largest face;
or ``face_crop=True``, the whole image taken as one face) for the open-set benchmark;
``measure_crops`` is the table of ``faceserve eval crops``.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from models.faces import Box, Face

if TYPE_CHECKING:
    from models.evaluation.lfw import EmbeddingCache, _Entry
    from models.pipeline import FacePipeline

__all__ = [
    "CROP_JPEG_QUALITY",
    "CROP_PAD",
    "CROP_SIZES",
    "chosen_face",
    "crop_bounds",
    "crop_face",
    "crop_probe_embeddings",
    "crop_probes",
    "cut_face",
    "markdown_table",
    "measure_crops",
    "negative_images",
    "sample_paths",
]

CROP_PAD = 0.35  # of the box width, on every side
CROP_SIZES = (100, 150)
CROP_JPEG_QUALITY = 90


def chosen_face(entry: _Entry) -> Face | None:
    """The detection eval lfw used for this image (its landmarks are the entry's), or None
    for a template fallback or a cache row without detections."""
    if entry.fallback:
        return None
    for face in entry.faces():
        if np.array_equal(np.asarray(face.landmarks, np.float32),
                          np.asarray(entry.landmarks, np.float32)):
            return face
    return None


def crop_bounds(box: Box, pad: float = CROP_PAD) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, end-exclusive: ``box`` grown by ``pad`` x its width on every
    side (the same margin vertically, so a square box gives a square crop)."""
    margin = pad * box.width
    x0 = round(box.left - margin)
    y0 = round(box.top - margin)
    x1 = round(box.right + 1 + margin)
    y1 = round(box.bottom + 1 + margin)
    return x0, y0, x1, y1


def cut_face(
    image: np.ndarray, box: Box, size: int, *, pad: float = CROP_PAD, fill: str = "edge"
) -> np.ndarray:
    """The RGB crop around ``box`` (:func:`crop_bounds`) resized to ``size`` x ``size``
    (bilinear, antialiased). ``fill``: ``edge`` repeats the border pixels where the crop
    leaves the image, ``black`` pads with zeros."""
    if fill not in ("edge", "black"):
        raise ValueError(f"fill must be 'edge' or 'black', got {fill!r}")
    h, w = image.shape[:2]
    x0, y0, x1, y1 = crop_bounds(box, pad)
    before_y, after_y = max(0, -y0), max(0, y1 - h)
    before_x, after_x = max(0, -x0), max(0, x1 - w)
    padding = ((before_y, after_y), (before_x, after_x), (0, 0))
    padded = np.pad(image, padding, mode="edge" if fill == "edge" else "constant")
    cut = padded[y0 + before_y : y1 + before_y, x0 + before_x : x1 + before_x]
    resized = Image.fromarray(np.ascontiguousarray(cut)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def crop_face(
    image: np.ndarray,
    box: Box,
    size: int,
    *,
    pad: float = CROP_PAD,
    fill: str = "edge",
    quality: int = CROP_JPEG_QUALITY,
) -> bytes:
    """:func:`cut_face` as a JPEG file, the way an app uploads it."""
    buf = io.BytesIO()
    Image.fromarray(cut_face(image, box, size, pad=pad, fill=fill)).save(
        buf, format="JPEG", quality=quality
    )
    return buf.getvalue()


def negative_images(
    images: Sequence[np.ndarray], per_image: int = 20, seed: int = 0
) -> list[np.ndarray]:
    """Non-face test images for ``face_crop``: ``per_image`` seeded random square crops of each
    of ``images`` (photos without people: side 25-100% of the shorter side), and as many
    synthetic ones (uniform noise, flat colours, smooth gradients)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for image in images:
        h, w = image.shape[:2]
        for _ in range(per_image):
            side = int(rng.integers(max(1, min(h, w) // 4), min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            out.append(np.ascontiguousarray(image[y : y + side, x : x + side]))
    ramp = np.linspace(0, 255, 128)
    for i in range(per_image):
        kind = i % 3
        if kind == 0:
            out.append(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
        elif kind == 1:
            out.append(np.full((128, 128, 3), rng.integers(0, 256, 3), dtype=np.uint8))
        else:
            a, b = rng.uniform(-1, 1, 2)
            g = np.clip(np.add.outer(a * ramp, b * ramp) + 128, 0, 255)
            out.append(np.repeat(g[:, :, None], 3, axis=2).astype(np.uint8))
    return out


def sample_paths(cache: EmbeddingCache, n: int | None, seed: int = 0) -> list[str]:
    """Cache keys (absolute LFW paths) whose chosen face is a detection, sorted, then a
    seeded random ``n`` of them (all when ``n`` is None or larger)."""
    keys = sorted(k for k, e in cache.entries.items() if chosen_face(e) is not None)
    if n is None or n >= len(keys):
        return keys
    return sorted(random.Random(seed).sample(keys, n))


def crop_probes(cache: EmbeddingCache, paths: Sequence[str | Path], size: int) -> list[bytes]:
    """The JPEG crop probe of each image (its chosen face, see :func:`crop_face`).

    Raises ``KeyError``/``ValueError`` for an image missing from the cache or without a
    detected face: pick paths with :func:`sample_paths`.
    """
    from models.imageio import decode_image

    out = []
    for path in paths:
        key = str(Path(path).resolve())
        face = chosen_face(cache.entries[key])
        if face is None:
            raise ValueError(f"{key}: no detected face in the cache (template fallback)")
        out.append(crop_face(decode_image(Path(key).read_bytes()), face.box, size))
    return out


def _primary(faces: list[Face], image: np.ndarray) -> Face | None:
    """The face the service would take (``models.face_selection.primary_face``)."""
    from models.face_selection import primary_face

    chosen = primary_face(faces, image.shape[0], image.shape[1])
    return None if chosen is None else chosen.face


def crop_probe_embeddings(
    pipeline: FacePipeline,
    cache: EmbeddingCache,
    paths: Sequence[str | Path],
    size: int,
    *,
    face_crop: bool = False,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """``(found, vectors)`` of the crop probes of ``paths`` at ``size``: ``found`` (N,) bool;
    ``vectors`` (found.sum(), D) float32, one row per found crop in order (a crop without a
    face has no vector). The face is what the service uses: the primary detection (with the
    pipeline's small-image retry), or with ``face_crop`` the whole crop
    (``FacePipeline.detect_face_crop``)."""
    from models.imageio import decode_image

    found = np.zeros(len(paths), dtype=bool)
    chips: list[np.ndarray] = []
    for i, jpeg in enumerate(crop_probes(cache, paths, size)):
        image = decode_image(jpeg)
        faces = pipeline.detect_face_crop(image) if face_crop else pipeline.detect(image)
        face = _primary(faces, image)
        if face is not None:
            found[i] = True
            chips.append(pipeline.align(image, [face])[0])
    vectors = _embed(pipeline, chips, batch_size)
    return found, vectors


def _embed(pipeline: FacePipeline, chips: list[np.ndarray], batch_size: int) -> np.ndarray:
    if not chips:
        return np.zeros((0, pipeline.embedding_size), np.float32)
    return np.concatenate([
        pipeline.embed_chips(np.stack(chips[i : i + batch_size]))
        for i in range(0, len(chips), batch_size)
    ])


@dataclass
class _Tally:
    """Per crop size: what each mode found, its embeddings' cosines to the original's."""

    n: int = 0
    found_default: int = 0
    found_retry: int = 0
    found_face_crop: int = 0
    cos_retry: list[float] | None = None
    cos_face_crop: list[float] | None = None
    boxes: list[tuple[float, float, float, float]] | None = None
    seconds: dict[str, float] | None = None


def measure_crops(
    pipeline: FacePipeline,
    cache: EmbeddingCache,
    paths: Sequence[str | Path],
    sizes: Sequence[int] = CROP_SIZES,
    *,
    negatives: Sequence[np.ndarray] = (),
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """The crop-probe table: per size, the share of crops with a face found (a) by the
    detector at the pipeline's upsampling alone (before the retry), (b) by
    ``pipeline.detect`` (with its small-image retry), (c) by ``detect_face_crop``; the cosine
    of (b)'s and (c)'s embeddings with the original image's (the cache's ``plain``); where
    the MMOD box of (b) sits on the crop (fractions of the side; compare ``FACE_CROP_BOX``);
    and the mean time per crop of each. ``negatives``: non-face images, each given to
    ``detect_face_crop`` at every size: the share it wrongly takes for a face."""
    from tqdm import tqdm

    from models.imageio import decode_image

    if pipeline.flip:
        raise ValueError("pass a pipeline with flip=False: the cache's plain embeddings are")
    if pipeline.model_version != cache.model:
        raise ValueError(f"the cache is for {cache.model}, the pipeline {pipeline.model_version}")
    if pipeline.small_image_retry_px <= max(sizes):
        raise ValueError(f"the pipeline's small_image_retry_px ({pipeline.small_image_retry_px}) "
                         f"must exceed the largest crop size ({max(sizes)}) to measure the retry")
    start = time.perf_counter()
    tallies = {
        s: _Tally(cos_retry=[], cos_face_crop=[], boxes=[],
                  seconds=dict.fromkeys(("default", "retry", "face_crop"), 0.0))
        for s in sizes
    }
    keys = [str(Path(p).resolve()) for p in paths]
    with tqdm(total=len(keys) * len(sizes), desc="crop probes", unit="crop",
              disable=not progress, smoothing=0.05) as bar:
        for key in keys:
            entry = cache.entries[key]
            face = chosen_face(entry)
            if face is None or entry.plain is None:
                raise ValueError(f"{key}: no detected face or no embedding in the cache")
            original = decode_image(Path(key).read_bytes())
            for size in sizes:
                t = tallies[size]
                image = decode_image(crop_face(original, face.box, size))
                assert t.seconds is not None and t.boxes is not None
                t0 = time.perf_counter()
                default = pipeline.detector.detect(
                    image, upsample=pipeline.upsample, max_side=pipeline.max_side
                )
                t1 = time.perf_counter()
                retry = _primary(pipeline.detect(image), image)
                t2 = time.perf_counter()
                whole = _primary(pipeline.detect_face_crop(image), image)
                t3 = time.perf_counter()
                t.seconds["default"] += t1 - t0
                t.seconds["retry"] += t2 - t1
                t.seconds["face_crop"] += t3 - t2
                t.n += 1
                t.found_default += bool(default)
                chips, which = [], []
                if retry is not None:
                    t.found_retry += 1
                    b = retry.box
                    t.boxes.append((b.left / size, b.top / size,
                                    (b.right + 1) / size, (b.bottom + 1) / size))
                    chips.append(pipeline.align(image, [retry])[0])
                    which.append(t.cos_retry)
                if whole is not None:
                    t.found_face_crop += 1
                    chips.append(pipeline.align(image, [whole])[0])
                    which.append(t.cos_face_crop)
                if chips:
                    vectors = pipeline.embed_chips(np.stack(chips))
                    for out, v in zip(which, vectors, strict=True):
                        assert out is not None
                        out.append(float(v @ entry.plain))
                bar.update(1)

    rejected: dict[str, Any] = {}
    if negatives:
        for size in sizes:
            taken = 0
            for image in negatives:
                small = np.asarray(Image.fromarray(image).resize((size, size),
                                                                 Image.Resampling.BILINEAR))
                taken += bool(pipeline.detect_face_crop(small))
            rejected[str(size)] = {"images": len(negatives), "taken_for_a_face": taken}

    return {
        "images": len(keys),
        "crop": {"pad": CROP_PAD, "jpeg_quality": CROP_JPEG_QUALITY, "fill": "edge"},
        "pipeline": {"model": pipeline.model_version, "upsample": pipeline.upsample,
                     "small_image_retry_px": pipeline.small_image_retry_px,
                     "device": str(pipeline.device)},
        "sizes": {str(s): _summary(t) for s, t in tallies.items()},
        "negatives": rejected,
        "total_s": round(time.perf_counter() - start, 1),
    }


def _summary(t: _Tally) -> dict[str, Any]:
    def cos(values: list[float] | None) -> dict[str, float] | None:
        if not values:
            return None
        v = np.asarray(values)
        return {"mean": round(float(v.mean()), 4), "p5": round(float(np.percentile(v, 5)), 4),
                "p1": round(float(np.percentile(v, 1)), 4), "min": round(float(v.min()), 4),
                "below_0.95": int((v < 0.95).sum()), "n": len(v)}

    assert t.seconds is not None
    boxes = np.asarray(t.boxes) if t.boxes else np.zeros((0, 4))
    return {
        "crops": t.n,
        "found": {
            "default": round(t.found_default / t.n, 4),
            "retry": round(t.found_retry / t.n, 4),
            "face_crop": round(t.found_face_crop / t.n, 4),
        },
        "cosine_to_original": {"retry": cos(t.cos_retry), "face_crop": cos(t.cos_face_crop)},
        # median and quartiles: the detector's box widths come in pyramid steps, so the
        # mean mixes two or three discrete sizes
        "mmod_box_on_crop": {
            q: [round(float(v), 3) for v in np.percentile(boxes, pct, axis=0)]
            if len(boxes) else None
            for q, pct in (("p25", 25), ("median", 50), ("p75", 75))
        },
        "ms_per_crop": {k: round(1000 * v / t.n, 1) for k, v in t.seconds.items()},
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The README table of a :func:`measure_crops` report."""
    lines = [
        "| crop | found: before (no retry) | found: retry (default now) | found: `face_crop` "
        "| cosine, retry (mean / p1 / min) | cosine, `face_crop` (mean / p1 / min) "
        "| ms per crop (before / retry / `face_crop`) |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, s in report["sizes"].items():
        f, c, ms = s["found"], s["cosine_to_original"], s["ms_per_crop"]

        def fmt(x: dict[str, float] | None) -> str:
            return "–" if x is None else f"{x['mean']:.4f} / {x['p1']:.4f} / {x['min']:.4f}"

        lines.append(
            f"| {size}×{size} | {100 * f['default']:.1f}% | {100 * f['retry']:.2f}% "
            f"| {100 * f['face_crop']:.2f}% | {fmt(c['retry'])} | {fmt(c['face_crop'])} "
            f"| {ms['default']} / {ms['retry']} / {ms['face_crop']} |"
        )
    return "\n".join(lines)

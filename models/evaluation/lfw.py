"""LFW View-2 verification through the service's own pipeline, with an embedding cache.

Each distinct image of the pairs file is embedded once: decode -> detect -> 5-point
landmarks -> aligned 150x150 chip -> 128-d embedding, exactly as the service does it (one
``FacePipeline``). When the detector finds several faces, the one the service would use is
taken (``models.face_selection.primary_face``: largest visible face, then confidence, then
nearness to the centre), so eval and ``POST /verify`` agree; when it finds none, the chip is
aligned from :data:`LFW_TEMPLATE_250` (where the 5 landmarks of an LFW face usually are) and
the image is counted as a fallback in the report. Chips are embedded in batches.

The cache (default ``<out>/embeddings-<model>.npz``, keyed by absolute image path) keeps, per
image, the landmarks used and the embeddings of the chip and of its mirror image. A second
run, another subset or an interrupted run only computes what is missing, and a ``--flip``
run after a plain one (or the reverse) re-uses all detections: detection, not embedding, is
most of the cost on a CPU. It is checkpointed every few hundred images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.evaluation.pairs import PairSet, read_pairs
from models.evaluation.profile import build_profile, write_profile
from models.evaluation.report import plot_roc, report_dict, summarise, write_json, write_markdown
from models.face_selection import primary_face
from models.faces import Box, Face

if TYPE_CHECKING:
    from models.pipeline import FacePipeline

__all__ = [
    "LFW_TEMPLATE_250",
    "EmbeddingCache",
    "ImageEmbeddings",
    "embed_images",
    "evaluate_lfw",
    "fallback_face",
    "flip_average",
    "pair_scores",
    "resolve_layout",
]

log = logging.getLogger(__name__)

# dlib's 5 points (two corners of the eye on the image's right, two of the eye on its left,
# base of the nose) on a 250x250 deep-funneled LFW image: the mean over 300 random View-2
# images as found by dlib's CNN detector + 5-point shape predictor (per-point std 2-5 px),
# made left-right symmetric about x = 125 (the mean over all 7,700 detected View-2 images is
# within 1 px of it). Scaled with the image for other sizes.
LFW_TEMPLATE_250 = np.array(
    [[153.6, 113.5], [137.3, 113.8], [96.4, 113.5], [112.7, 113.8], [125.5, 144.6]],
    dtype=np.float64,
)

_CHECKPOINT_EVERY = 500
EMBEDDING_DIM = 128  # only to pad cache rows whose vector is not computed yet


# Whose detections a cache holds: the detector and its landmark scheme. Caches written before
# ONNX detectors existed hold dlib's.
DLIB_DETECTIONS = "dlib-mmod/dlib5"


def detections_key(pipeline: Any) -> str:
    """The detector and landmark scheme of ``pipeline``: caches share detections only when
    these are equal (an SCRFD's points are not dlib's)."""
    return (f"{getattr(pipeline, 'detector_version', 'dlib-mmod')}/"
            f"{getattr(pipeline, 'landmark_scheme', 'dlib5')}")


def _lfw_template(scheme: str) -> np.ndarray:
    """The fallback points of a 250x250 LFW image in ``scheme``: dlib's measured ones, or
    ArcFace's template placed by the similarity that puts its eye centres on theirs."""
    if scheme == "dlib5":
        return LFW_TEMPLATE_250
    from models.backends.geometry import ARCFACE_TEMPLATE_112

    right = complex(*LFW_TEMPLATE_250[0:2].mean(axis=0))
    left = complex(*LFW_TEMPLATE_250[2:4].mean(axis=0))
    a_left, a_right = (complex(*p) for p in ARCFACE_TEMPLATE_112[:2])
    z = (right - left) / (a_right - a_left)
    pts = [left + z * (complex(*p) - a_left) for p in ARCFACE_TEMPLATE_112]
    return np.array([[p.real, p.imag] for p in pts])


def fallback_face(height: int, width: int, scheme: str = "dlib5") -> Face:
    """The face an LFW image is assumed to contain when the detector finds none."""
    points = _lfw_template(scheme) * np.array([width / 250.0, height / 250.0])
    # A box around the template, only for the record; alignment uses the landmarks.
    cx, cy = width / 2, height / 2
    half = 0.19 * width  # the detector's boxes on LFW are ~95 px wide on 250 px
    box = Box(round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1)
    return Face(box=box, confidence=0.0, landmarks=points.astype(np.float32))


def _chosen_face(
    faces: Sequence[Face], height: int, width: int, scheme: str = "dlib5"
) -> Face:
    """The face used for an image: the service's rule, or the template when none is found."""
    selection = primary_face(faces, height, width)
    return selection.face if selection is not None else fallback_face(height, width, scheme)


def _reselect(cache: EmbeddingCache, keys: Sequence[str]) -> int:
    """Bring rows chosen under another face rule (an older cache) to the current one.

    A row whose landmarks are not those of the face the rule picks from its detections gets
    that face's landmarks and loses its embeddings (re-embedded, not re-detected). A row
    with several faces but no kept detections (written before they were kept) is dropped,
    so the image is detected again. Returns how many rows changed.
    """
    changed = 0
    for key in keys:
        entry = cache.entries.get(key)
        if entry is None or entry.faces_found < 2:
            continue
        if entry.detections is None or entry.image_size is None:
            del cache.entries[key]
            changed += 1
            continue
        face = _chosen_face(entry.faces(), *entry.image_size, cache.detector.split("/")[-1])
        if not np.allclose(face.landmarks, entry.landmarks, atol=1e-3):
            entry.landmarks = np.asarray(face.landmarks, np.float32)
            entry.plain = entry.mirror = None
            changed += 1
    return changed


def resolve_layout(root: Path, pairs_file: Path | None) -> tuple[Path, Path]:
    """(image directory, pairs file) from what the user gave.

    ``root`` may be the image directory itself (``Name/Name_0001.jpg`` inside) or the
    directory above it (LFW archives unpack to ``lfw/``, ``lfw-deepfunneled/``...); the pairs
    file defaults to ``pairs.txt`` in ``root`` or its parent.
    """
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"LFW root {root} is not a directory")
    if pairs_file is None:
        candidates = [root / "pairs.txt", root.parent / "pairs.txt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"no pairs.txt in {root} or {root.parent}; pass --pairs FILE"
            )
        pairs_file = found
    pairs = read_pairs(pairs_file)
    probe = pairs.pairs[0].left
    if (root / probe).is_file():
        return root, pairs_file
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / probe).is_file():
            return sub, pairs_file
    raise FileNotFoundError(
        f"{probe} (the first image of {pairs_file}) is neither under {root} nor under one of "
        "its subdirectories; --root must be the LFW image directory"
    )


@dataclass(frozen=True)
class ImageEmbeddings:
    paths: list[str]  # as given
    vectors: np.ndarray  # (N, 128) float32, L2-normalised (flip-averaged when flip)
    fallback: np.ndarray  # (N,) bool: aligned from the template, no face detected
    faces_found: np.ndarray  # (N,) int: detections in the image
    detected: int  # images detected in this call (the rest reused cached landmarks)
    embedded: int  # images with at least one forward pass in this call
    timing: dict[str, float]  # seconds spent in decode / detect / align / embed this call


@dataclass
class _Entry:
    landmarks: np.ndarray  # (5, 2) float32: the face used (detected, or the template)
    fallback: bool
    faces_found: int
    plain: np.ndarray | None = None  # (128,) embedding of the chip
    mirror: np.ndarray | None = None  # (128,) embedding of the mirrored chip
    # Every detection of the image (boxes (M, 4) left/top/right/bottom, confidences (M,),
    # landmarks (M, 5, 2)) and the image's (height, width): face-selection rules, crops and
    # quality measures are recomputed from these without detecting again. None in caches
    # written before they were kept.
    detections: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    image_size: tuple[int, int] | None = None

    def faces(self) -> list[Face]:
        """The image's detections as faces (empty for old cache rows or no detection)."""
        if self.detections is None:
            return []
        boxes, conf, marks = self.detections
        return [Face(box=Box(*(int(v) for v in b)), confidence=float(c), landmarks=m)
                for b, c, m in zip(boxes, conf, marks, strict=True)]


class EmbeddingCache:
    """Per image: the landmarks used, and the embeddings of its chip and mirrored chip.

    One file per model version, shared by runs with and without flip: the flip embedding is
    the renormalised sum of the two (what the pipeline's ``flip=True`` computes), so a
    ``--flip`` run after a plain one re-uses every detection and plain embedding and only
    embeds the mirrors. Keys are absolute image paths.
    """

    def __init__(self, path: Path | None, model: str, detector: str = DLIB_DETECTIONS) -> None:
        self.path = path  # None: in memory only
        self.model = model
        self.detector = detector  # detections_key() of the pipeline that fills it
        self.entries: dict[str, _Entry] = {}

    @classmethod
    def for_run(cls, out_dir: Path, model: str, detector: str = DLIB_DETECTIONS
                ) -> EmbeddingCache:
        return cls(out_dir / f"embeddings-{model}.npz", model, detector)

    def load(self) -> EmbeddingCache:
        if self.path is None or not self.path.is_file():
            return self
        arrays = _read_cache(self.path)
        if arrays is None:
            return self
        if str(arrays["model"]) != self.model:
            log.warning("ignoring %s: made for model %s", self.path, arrays["model"])
            return self
        if str(arrays.get("detector", DLIB_DETECTIONS)) != self.detector:
            log.warning("ignoring %s: made with detector %s", self.path, arrays.get("detector"))
            return self
        for i, key in enumerate(arrays["keys"].tolist()):
            self.entries[key] = _entry(arrays, i, embeddings=True)
        return self

    def seed_detections(self, other: Path) -> int:
        """Take the detections (landmarks, fallback, face count) of images this cache lacks
        from another model's cache: detection and alignment do not depend on the embedding
        model, and they are most of the cost. Returns how many images were taken."""
        arrays = _read_cache(other)
        if arrays is None or str(arrays.get("detector", DLIB_DETECTIONS)) != self.detector:
            return 0  # another detector's points may be another scheme
        taken = 0
        for i, key in enumerate(arrays["keys"].tolist()):
            if key not in self.entries:
                self.entries[key] = _entry(arrays, i, embeddings=False)
                taken += 1
        return taken

    def save(self) -> None:
        """Write atomically (an interrupted run keeps the previous checkpoint)."""
        if self.path is None or not self.entries:
            return
        keys = list(self.entries)
        entries = [self.entries[k] for k in keys]
        dim = next((len(e.plain) for e in entries if e.plain is not None), EMBEDDING_DIM)
        zeros = np.zeros(dim, np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(
            tmp,
            keys=np.array(keys),
            landmarks=np.stack([e.landmarks for e in entries]).astype(np.float32),
            fallback=np.array([e.fallback for e in entries], dtype=bool),
            faces_found=np.array([e.faces_found for e in entries], dtype=np.int32),
            plain=np.stack([zeros if e.plain is None else e.plain for e in entries]),
            mirror=np.stack([zeros if e.mirror is None else e.mirror for e in entries]),
            has_plain=np.array([e.plain is not None for e in entries], dtype=bool),
            has_mirror=np.array([e.mirror is not None for e in entries], dtype=bool),
            model=np.array(self.model),
            detector=np.array(self.detector),
            **_pack_detections(entries),
        )
        tmp.replace(self.path)


def _pack_detections(entries: Sequence[_Entry]) -> dict[str, np.ndarray]:
    """Every image's detections as flat arrays; ``det_image`` names each row's image."""
    boxes, conf, marks, owner = [], [], [], []
    for i, e in enumerate(entries):
        if e.detections is not None:
            b, c, m = e.detections
            boxes.append(np.asarray(b, np.int32).reshape(-1, 4))
            conf.append(np.asarray(c, np.float32).reshape(-1))
            marks.append(np.asarray(m, np.float32).reshape(-1, 5, 2))
            owner.append(np.full(len(c), i, np.int32))
    return {
        "det_boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32),
        "det_confidence": np.concatenate(conf) if conf else np.zeros(0, np.float32),
        "det_landmarks": np.concatenate(marks) if marks else np.zeros((0, 5, 2), np.float32),
        "det_image": np.concatenate(owner) if owner else np.zeros(0, np.int32),
        "has_detections": np.array([e.detections is not None for e in entries], dtype=bool),
        "image_size": np.array([e.image_size or (0, 0) for e in entries], dtype=np.int32),
    }



_CACHE_ARRAYS = ("keys", "landmarks", "fallback", "faces_found", "plain", "mirror",
                 "has_plain", "has_mirror", "model")
_DETECTION_ARRAYS = ("det_boxes", "det_confidence", "det_landmarks", "det_image",
                     "has_detections", "image_size")


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Every array of a cache file, or None (logged) when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            # Read each array once: ``data[name]`` decompresses the whole array on every
            # access, and a row of it would keep that whole copy alive.
            arrays = {name: data[name] for name in _CACHE_ARRAYS}
            if "detector" in data:
                arrays["detector"] = data["detector"]
            if all(name in data for name in _DETECTION_ARRAYS):
                arrays.update({name: data[name] for name in _DETECTION_ARRAYS})
                # Rows of det_* per image, found once (det_image is sorted by image).
                owner = arrays["det_image"]
                starts = np.searchsorted(owner, np.arange(len(arrays["keys"]) + 1))
                arrays["det_starts"] = starts
            return arrays
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable embedding cache %s: %s", path, exc)
        return None


def _entry(arrays: dict[str, np.ndarray], i: int, *, embeddings: bool) -> _Entry:
    """Row ``i`` of a cache file: its detection, and its embeddings when ``embeddings``
    (another model's embeddings are no use; its detection is)."""
    entry = _Entry(
        landmarks=arrays["landmarks"][i].copy(),
        fallback=bool(arrays["fallback"][i]),
        faces_found=int(arrays["faces_found"][i]),
    )
    if embeddings:
        entry.plain = arrays["plain"][i].copy() if arrays["has_plain"][i] else None
        entry.mirror = arrays["mirror"][i].copy() if arrays["has_mirror"][i] else None
    if "det_starts" in arrays and arrays["has_detections"][i]:
        a, b = arrays["det_starts"][i], arrays["det_starts"][i + 1]
        entry.detections = (arrays["det_boxes"][a:b].copy(),
                            arrays["det_confidence"][a:b].copy(),
                            arrays["det_landmarks"][a:b].copy())
        h, w = (int(v) for v in arrays["image_size"][i])
        entry.image_size = (h, w)
    return entry


def _detections_of(faces: Sequence[Face]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array([f.box.as_tuple() for f in faces], np.int32).reshape(-1, 4),
        np.array([f.confidence for f in faces], np.float32),
        np.array([np.asarray(f.landmarks, np.float32) for f in faces],
                 np.float32).reshape(-1, 5, 2),
    )


def flip_average(plain: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """The flip embedding from the two views: ``normalize(e(chip) + e(mirror))``.

    The same formula as ``models.embedder.embed_chips(flip=True)``; a test holds them equal.
    """
    s = np.asarray(plain, np.float64) + np.asarray(mirror, np.float64)
    return (s / np.linalg.norm(s, axis=-1, keepdims=True)).astype(np.float32)


def embed_images(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    cache: EmbeddingCache | None = None,
    *,
    flip: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    decode: Callable[[bytes], np.ndarray] | None = None,
) -> ImageEmbeddings:
    """One embedding per image (see the module docstring for the face rule and the fallback).

    ``pipeline`` must have ``flip=False``: with ``flip`` the chip and its mirror are embedded
    separately (both are cached) and combined by :func:`flip_average`.
    """
    from tqdm import tqdm

    if pipeline.flip:
        raise ValueError("pass a pipeline with flip=False; embed_images(flip=True) mirrors")
    if decode is None:
        from models.imageio import decode_image as decode
    keys = [str(Path(p).resolve()) for p in paths]
    cache = cache if cache is not None else EmbeddingCache(None, pipeline.model_version,
                                                           detections_key(pipeline))

    def needs(key: str) -> tuple[bool, bool]:
        e = cache.entries.get(key)
        return (e is None or e.plain is None), (flip and (e is None or e.mirror is None))

    reselected = _reselect(cache, list(dict.fromkeys(keys)))
    if reselected:
        log.info("%d cached images re-embedded: their face was chosen by another rule",
                 reselected)
    todo = [k for k in dict.fromkeys(keys) if any(needs(k))]
    missing = [k for k in todo if not Path(k).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images missing, e.g. {missing[:3]}")

    timing = dict.fromkeys(("decode_s", "detect_s", "align_s", "embed_s"), 0.0)
    pending: list[tuple[str, np.ndarray, bool, bool]] = []  # key, chip, want plain, want mirror
    detected = 0

    def flush() -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        views = [chip for _, chip, p, _ in pending if p]
        views += [chip[:, ::-1] for _, chip, _, m in pending if m]  # mirror: flip the width
        vectors = iter(pipeline.embed_chips(np.ascontiguousarray(np.stack(views))))
        for key, _, want_plain, _ in pending:
            if want_plain:
                cache.entries[key].plain = next(vectors).astype(np.float32)
        for key, _, _, want_mirror in pending:
            if want_mirror:
                cache.entries[key].mirror = next(vectors).astype(np.float32)
        timing["embed_s"] += time.perf_counter() - t0
        pending.clear()

    since_save = 0
    with tqdm(total=len(todo), desc="embedding LFW images", unit="img", disable=not progress,
              smoothing=0.05) as bar:
        for key in todo:
            want_plain, want_mirror = needs(key)
            t0 = time.perf_counter()
            image = decode(Path(key).read_bytes())
            t1 = time.perf_counter()
            timing["decode_s"] += t1 - t0
            entry = cache.entries.get(key)
            if entry is None:
                faces = pipeline.detect(image)
                h, w = image.shape[:2]
                face = _chosen_face(faces, h, w, getattr(pipeline, "landmark_scheme", "dlib5"))
                entry = _Entry(np.asarray(face.landmarks, np.float32), not faces, len(faces),
                               detections=_detections_of(faces), image_size=(h, w))
                cache.entries[key] = entry
                detected += 1
                t2 = time.perf_counter()
                timing["detect_s"] += t2 - t1
                t1 = t2
            face = Face(box=Box(0, 0, 0, 0), confidence=0.0, landmarks=entry.landmarks)
            chip = pipeline.align(image, [face])[0]
            timing["align_s"] += time.perf_counter() - t1
            pending.append((key, chip, want_plain, want_mirror))
            if len(pending) >= batch_size:
                flush()
            since_save += 1
            if since_save >= _CHECKPOINT_EVERY:
                flush()
                cache.save()
                since_save = 0
            bar.update(1)
        flush()
    if todo:
        cache.save()
    entries = [cache.entries[k] for k in keys]
    if entries:
        plain = np.stack([e.plain for e in entries])
        vectors = (flip_average(plain, np.stack([e.mirror for e in entries])) if flip
                   else plain.astype(np.float32))
    else:
        vectors = np.zeros((0, pipeline.embedding_size), np.float32)
    return ImageEmbeddings(
        paths=[str(p) for p in paths],
        vectors=vectors,
        fallback=np.array([e.fallback for e in entries], dtype=bool),
        faces_found=np.array([e.faces_found for e in entries], dtype=np.int32),
        detected=detected,
        embedded=len(todo),
        timing={k: round(v, 2) for k, v in timing.items()},
    )


def pair_scores(pairs: PairSet, index: dict[str, int], vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair (vectors re-normalised in float64 for exactness)."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    left = np.fromiter((index[p.left] for p in pairs.pairs), dtype=np.int64, count=len(pairs))
    right = np.fromiter((index[p.right] for p in pairs.pairs), dtype=np.int64, count=len(pairs))
    return np.einsum("ij,ij->i", v[left], v[right])


def evaluate_lfw(
    root: Path,
    out_dir: Path,
    *,
    pairs_file: Path | None = None,
    flip: bool = False,
    limit_folds: int | None = None,
    per_fold: int | None = None,
    device: str | None = None,
    weights_cache: Path | None = None,
    batch_size: int = 64,
    profile_path: Path | None = None,
    cache_path: Path | None = None,
    pipeline: FacePipeline | None = None,
    progress: bool = True,
    model: str | Path | None = None,
    detections_from: Sequence[Path] = (),
    detector: str | Path | None = None,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the protocol, write report.json / report.md / roc.png / the profile; return the report.

    ``limit_folds`` keeps the first N folds, ``per_fold`` the first N same-person and N
    different-person pairs of each fold: quicker runs of the same protocol (the report's
    ``dataset`` names the subset, and so does the profile). ``model``: an exported or ONNX
    model instead of dlib's, ``detector`` an SCRFD model instead of MMOD, ``model_dir`` where
    ONNX names are looked up (``FacePipeline(model=..., detector=..., model_dir=...)``).
    Detections missing from this model's cache are taken from ``detections_from`` and from
    the other models' caches in ``out_dir`` that hold the same detector's.
    """
    start = time.perf_counter()
    image_dir, pairs_file = resolve_layout(root, pairs_file)
    pairs = read_pairs(pairs_file)
    full = (pairs.n_folds, pairs.per_half)
    if limit_folds is not None:
        if limit_folds < 2:
            raise ValueError("--limit-folds must be at least 2 (a fold's threshold is chosen on "
                             "the others)")
        pairs = pairs.limit_folds(limit_folds)
    if per_fold is not None:
        pairs = pairs.limit_per_fold(per_fold)
    if pipeline is None:
        from models.pipeline import FacePipeline

        pipeline = FacePipeline(device=device, cache_dir=weights_cache, flip=False, model=model,
                                detector=detector, model_dir=model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rel = pairs.images()
    if cache_path is None:
        cache = EmbeddingCache.for_run(out_dir, pipeline.model_version, detections_key(pipeline))
    else:
        cache = EmbeddingCache(cache_path, pipeline.model_version, detections_key(pipeline))
    cache.load()
    siblings = sorted(out_dir.glob("embeddings-*.npz"))
    seeded = 0
    for other in [*detections_from, *siblings]:
        if cache.path is None or Path(other).resolve() != cache.path.resolve():
            seeded += cache.seed_detections(Path(other))
    if seeded:
        log.info("took the detections of %d images from other models' caches", seeded)
    t_embed = time.perf_counter()
    emb = embed_images(pipeline, [image_dir / p for p in rel], cache, flip=flip,
                       batch_size=batch_size, progress=progress)
    embed_s = time.perf_counter() - t_embed

    scores = pair_scores(pairs, {p: i for i, p in enumerate(rel)}, emb.vectors)
    summary = summarise(scores, pairs.labels, pairs.folds)
    base = "lfw-view2" if full == (10, 300) else f"lfw-pairs-{full[0]}x{full[1]}"
    if (pairs.n_folds, pairs.per_half) == full:
        dataset = base
    else:
        dataset = f"{base}-subset-{pairs.n_folds}x{pairs.per_half}"

    profile = build_profile(
        summary.roc,
        model=pipeline.model_version,
        dataset=dataset,
        flip=flip,
        notes=[
            f"Thresholds measured on all {len(pairs)} pairs of {dataset} ({image_dir.name}), "
            f"full pipeline {'with' if flip else 'without'} flip averaging, cosine similarity; "
            "accept iff similarity >= threshold. Valid only for a service running the same "
            f"model with flip={'true' if flip else 'false'}. LFW is celebrity press photos: "
            "the FAR on other populations and capture conditions can differ.",
        ],
    )
    profile_path = profile_path or out_dir / "operating_points.json"
    write_profile(profile, profile_path)

    fallback_images = [p for p, fb in zip(rel, emb.fallback, strict=True) if fb]
    report = report_dict(
        summary,
        model=pipeline.model_version,
        dataset=dataset,
        flip=flip,
        device=str(pipeline.device),
        root=str(image_dir),
        pairs_file=str(pairs_file),
        images={
            "count": len(rel),
            "fallbacks": len(fallback_images),
            "fallback_images": fallback_images,
            "multiple_faces": int(np.sum(emb.faces_found > 1)),
        },
        profile={"path": str(profile_path), **profile.to_dict()},
        cache=str(cache.path),
        timing={
            "embed_s": round(embed_s, 2),
            "detected": emb.detected,
            "embedded": emb.embedded,
            "cached": len(rel) - emb.embedded,
            "detections_reused": seeded,
            "per_image_ms": round(1000 * embed_s / emb.embedded, 1) if emb.embedded else None,
            **emb.timing,
        },
    )
    plot_roc(summary, out_dir / "roc.png",
             f"LFW ({dataset}) {pipeline.model_version}{' + flip' if flip else ''}")
    report["timing"]["total_s"] = round(time.perf_counter() - start, 2)
    write_json(report, out_dir / "report.json")
    write_markdown(report, out_dir / "report.md")
    return report

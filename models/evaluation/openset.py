"""Open-set identification on LFW: does a decision rule hold its false-positive rate?

Protocol (seeded, repeatable; ``faceserve eval openset``):

* People with at least two photos are the *candidates*; people with one photo are only ever
  strangers.
* A gallery of ``G`` subjects is a random draw of ``G`` candidates. Each enrolls its first
  ``k`` photos after a seeded shuffle (``k`` = 1, or up to 3 keeping at least one photo back);
  their other photos are the *mated* probes.
* *Non-mated* probes (strangers) are every photo of every person not in the gallery: the
  single-photo people and the candidates not drawn.
* Small galleries are drawn several times (``repeats``): one draw of 10 people says little.
  Rates are pooled over the draws (total errors / total probes).

For each gallery size the report gives rank-1, the DET curve (FNIR vs FPIR, every threshold),
DIR at FPIR 10%, 1%, 0.1% (the threshold chosen *after* seeing the strangers: the best any
threshold can do), and for each decision rule the FPIR and DIR it actually achieves when asked
for those targets, its threshold chosen *before* seeing any stranger. A rule that holds its
target keeps the measured FPIR near it at every gallery size.

The embeddings come from the ``eval lfw`` cache (detection is most of the cost); images the
cache lacks are embedded first.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation.identification import (
    Rank1,
    det_curve,
    dir_at_fpir,
    rank1,
    rates_at,
    subject_scores,
)
from models.fpir import CohortStats, FpirRule, ImpostorSample, ImpostorTail

__all__ = [
    "DEFAULT_SIZES",
    "TARGETS",
    "Draw",
    "ThresholdRule",
    "draw_gallery",
    "evaluate_draws",
    "lfw_people",
]

log = logging.getLogger(__name__)

TARGETS: tuple[float, ...] = (0.1, 0.01, 0.001)
# How many subjects' worth of evidence the model's reference counts for against a gallery's
# own impostor statistics (models.fpir): a gallery of 10 subjects decides half of it.
PRIOR_SUBJECTS = 10
DEFAULT_SIZES: tuple[int | str, ...] = (10, 100, 1000, "max")

# (gallery vectors (F, D), face -> subject (F,), subject count, target FPIR) -> threshold.
ThresholdRule = Callable[[np.ndarray, np.ndarray, int, float], float]


def lfw_people(image_dir: Path) -> dict[str, list[str]]:
    """Every person of an LFW image directory and their photos (paths relative to it)."""
    people: dict[str, list[str]] = {}
    for path in sorted(image_dir.glob("*/*.jpg")):
        people.setdefault(path.parent.name, []).append(f"{path.parent.name}/{path.name}")
    if not people:
        raise FileNotFoundError(f"no <Name>/<image>.jpg under {image_dir}")
    return people


@dataclass(frozen=True)
class Draw:
    """One gallery and its probes, as indices into the list of all images."""

    enrolled: np.ndarray  # (F,) image index of each enrolled face
    face_subject: np.ndarray  # (F,) subject index (0..G-1) of each enrolled face
    mated: np.ndarray  # (M,) image index of each mated probe
    truth: np.ndarray  # (M,) its subject index
    nonmated: np.ndarray  # (S,) image index of each stranger probe
    n_subjects: int


def draw_gallery(
    people: dict[str, list[int]],
    size: int,
    photos: int,
    rng: np.random.Generator,
) -> Draw:
    """One seeded draw of the protocol (see the module docstring). ``people`` maps a name to
    its images' indices; ``photos`` is the most photos a subject enrolls."""
    names = sorted(people)
    candidates = [n for n in names if len(people[n]) >= 2]
    if not 1 <= size <= len(candidates):
        raise ValueError(f"gallery size {size} out of range: {len(candidates)} candidates")
    chosen = set(rng.choice(len(candidates), size=size, replace=False).tolist())
    enrolled: list[int] = []
    face_subject: list[int] = []
    mated: list[int] = []
    truth: list[int] = []
    for subject, i in enumerate(sorted(chosen)):
        images = list(people[candidates[i]])
        rng.shuffle(images)
        k = min(photos, len(images) - 1)
        enrolled += images[:k]
        face_subject += [subject] * k
        mated += images[k:]
        truth += [subject] * (len(images) - k)
    in_gallery = {candidates[i] for i in chosen}
    nonmated = [img for n in names if n not in in_gallery for img in people[n]]
    return Draw(
        enrolled=np.array(enrolled, np.int64),
        face_subject=np.array(face_subject, np.int64),
        mated=np.array(mated, np.int64),
        truth=np.array(truth, np.int64),
        nonmated=np.array(nonmated, np.int64),
        n_subjects=size,
    )


def _rank1(
    gallery: np.ndarray, probe_vectors: np.ndarray, probes: np.ndarray, draw: Draw, how: str
) -> Rank1:
    """Rank-1 of the images ``probes`` (rows of ``probe_vectors``) against ``gallery``."""
    best_subject, best_score = [], []
    for start in range(0, len(probes), 4096):  # bounded memory at any gallery size
        face = probe_vectors[probes[start:start + 4096]] @ gallery.T
        r = rank1(subject_scores(face, draw.face_subject, draw.n_subjects, how))
        best_subject.append(r.subject)
        best_score.append(r.score)
    if not best_subject:
        return Rank1(np.zeros(0, np.int64), np.zeros(0))
    return Rank1(np.concatenate(best_subject), np.concatenate(best_score))


@dataclass
class _Pool:
    """Pooled results of several draws of one gallery size."""

    mated_subject: list[np.ndarray] = field(default_factory=list)
    mated_score: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)
    nonmated: list[np.ndarray] = field(default_factory=list)
    # rule -> target -> [(threshold, false positives, strangers, hits, mated)]
    rules: dict[str, dict[float, list[tuple[float, int, int, int, int]]]] = field(
        default_factory=dict
    )

    def joined(self) -> tuple[Rank1, np.ndarray, np.ndarray]:
        # subject indices are per draw; correctness is what pools, so store it as truth==subj
        return (
            Rank1(np.concatenate(self.mated_subject), np.concatenate(self.mated_score)),
            np.concatenate(self.truth),
            np.concatenate(self.nonmated),
        )


def evaluate_draws(
    vectors: np.ndarray,
    people: dict[str, list[int]],
    size: int,
    *,
    photos: int,
    repeats: int,
    rules: dict[str, ThresholdRule],
    seed: int,
    how: str = "max",
    targets: Sequence[float] = TARGETS,
    probe_vectors: np.ndarray | None = None,
    probe_subset: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run ``repeats`` draws of one gallery size and pool their results.

    ``probe_subset`` (bool per image) keeps only those images as probes (the gallery is
    drawn from everyone as usual): for probe sets too costly to make for every image.

    ``probe_vectors`` (same rows as ``vectors``; NaN rows = no face found) replaces the
    probes' embeddings, e.g. by those of cropped copies of the photos; a probe without a face
    counts as a miss when mated and as no false positive when a stranger.
    """
    vectors = np.asarray(vectors, np.float32)
    probes_from = vectors if probe_vectors is None else np.asarray(probe_vectors, np.float32)
    found = ~np.isnan(probes_from[:, 0])
    probes_from = np.where(found[:, None], probes_from, 0.0).astype(np.float32)
    pool = _Pool()
    for r in range(repeats):
        draw = draw_gallery(people, size, photos, np.random.default_rng([seed, size, photos, r]))
        if probe_subset is not None:
            keep_m = probe_subset[draw.mated]
            draw = Draw(draw.enrolled, draw.face_subject, draw.mated[keep_m], draw.truth[keep_m],
                        draw.nonmated[probe_subset[draw.nonmated]], draw.n_subjects)
        gallery = vectors[draw.enrolled]
        mated = _rank1(gallery, probes_from, draw.mated, draw, how)
        mated_score = np.where(found[draw.mated], mated.score, -np.inf)
        mated = Rank1(mated.subject, mated_score)
        strangers = _rank1(gallery, probes_from, draw.nonmated, draw, how).score
        strangers = np.where(found[draw.nonmated], strangers, -np.inf)
        # Pool correctness, not subject indices (those restart at 0 in every draw).
        correct = mated.subject == draw.truth
        pool.mated_subject.append(np.where(correct, 0, 1))
        pool.mated_score.append(mated.score)
        pool.truth.append(np.zeros(len(correct), np.int64))
        pool.nonmated.append(strangers)
        for name, rule in rules.items():
            for target in targets:
                t = float(rule(gallery, draw.face_subject, draw.n_subjects, target))
                fp = int(np.sum(strangers >= t))
                hits = int(np.sum(correct & (mated.score >= t)))
                pool.rules.setdefault(name, {}).setdefault(target, []).append(
                    (t, fp, len(strangers), hits, len(correct))
                )
    all_mated, truth, nonmated = pool.joined()
    out: dict[str, Any] = {
        "gallery_size": size,
        "photos_per_subject": photos,
        "repeats": repeats,
        "combination": how,
        "mated_probes": len(truth),
        "nonmated_probes": len(nonmated),
        "probes_without_face": int(np.sum(~np.isfinite(all_mated.score)))
        + int(np.sum(~np.isfinite(nonmated))),
        "rank1": float(np.mean(all_mated.subject == truth)) if len(truth) else None,
        "dir_at_fpir": {},
        "rules": {},
    }
    for target in targets:
        best = dir_at_fpir(target, all_mated, truth, nonmated)
        out["dir_at_fpir"][f"{target:g}"] = None if best is None else {
            "dir": best[0], "threshold": best[1], "fpir": best[2]}
    for name, per_target in pool.rules.items():
        out["rules"][name] = {}
        for target, rows in per_target.items():
            ts = np.array([row[0] for row in rows])
            fp, n_s, hits, n_m = (sum(row[i] for row in rows) for i in range(1, 5))
            out["rules"][name][f"{target:g}"] = {
                "fpir": fp / n_s if n_s else None,
                "fpir_over_target": (fp / n_s) / target if n_s else None,
                "dir": hits / n_m if n_m else None,
                "threshold_mean": float(ts.mean()),
                "threshold_min": float(ts.min()),
                "threshold_max": float(ts.max()),
                "false_positives": fp,
                "strangers": n_s,
            }
    det = det_curve(all_mated, truth, nonmated)
    out["_det"] = det  # for the plot; dropped from the JSON
    out["fixed_thresholds"] = {
        f"{t:g}": dict(zip(("fpir", "dir"), rates_at(t, all_mated, truth, nonmated), strict=True))
        for t in FIXED_THRESHOLDS
    }
    return out


# ---------------------------------------------------------------- the model's reference

# The old default (LFW's per-comparison FAR 1e-3 point), reported as "before".
FIXED_THRESHOLDS: tuple[float, ...] = (0.915,)
_TAIL_GRID = tuple(np.round(np.arange(-1.0, -7.01, -0.5), 2).tolist())
_BINS = np.linspace(-1.0, 1.0, 200_001)  # 1e-5 wide: far below the impostor spread (~0.035)


def build_reference(
    vectors: np.ndarray, labels: np.ndarray, model: str, source: str, prior_subjects: int
) -> FpirRule:
    """The impostor reference of a model: mean, std and standardised tail quantiles of the
    similarities between every pair of images of different people (chunked: all 87 million
    pairs of LFW's 13,233 images in a few seconds, in bounded memory)."""
    v = np.asarray(vectors, np.float32)
    labels = np.asarray(labels)
    counts = np.zeros(len(_BINS) - 1, np.int64)
    n = 0
    total = 0.0
    total_sq = 0.0
    for start in range(0, len(v), 1024):
        block = v[start:start + 1024] @ v.T
        rows = np.arange(start, min(start + 1024, len(v)))
        upper = np.arange(len(v))[None, :] > rows[:, None]  # each pair once
        mask = upper & (labels[rows][:, None] != labels[None, :])
        values = block[mask].astype(np.float64)
        counts += np.histogram(values, _BINS)[0]
        n += len(values)
        total += float(values.sum())
        total_sq += float(np.dot(values, values))
    mean = total / n
    std = float(np.sqrt(max(total_sq / n - mean * mean, 0.0)))
    above = np.cumsum(counts[::-1])[::-1]  # pairs at or above each bin's lower edge
    z = []
    for log_p in _TAIL_GRID:
        k = 10.0**log_p * n
        i = int(np.searchsorted(-above, -k, side="left"))  # last edge with >= k pairs above
        i = max(min(i, len(counts) - 1), 0)
        z.append(round((float(_BINS[i]) - mean) / std, 4))
    return FpirRule(
        model=model,
        reference=CohortStats(n, round(mean, 6), round(std, 6), len(np.unique(labels))),
        tail=ImpostorTail(_TAIL_GRID, tuple(z), source),
        prior_subjects=prior_subjects,
    )


# ---------------------------------------------------------------- rules


def fixed_rule(threshold: float) -> ThresholdRule:
    """One threshold whatever the gallery: what the service did before ``identify_fpir``."""
    return lambda _v, _s, _n, _target: threshold


def reference_rule(rule: FpirRule) -> ThresholdRule:
    """Gallery size only: the model's reference distribution, corrected for N comparisons."""
    return lambda v, _s, _n, target: rule.threshold(target, len(v)).threshold


def service_rule(rule: FpirRule, capacity: int = 2000) -> ThresholdRule:
    """Exactly what the service computes: gallery size plus the gallery's own impostor
    statistics from an ``ImpostorSample`` filled in enrollment order."""

    last: list[Any] = [None, None]  # (gallery array, its stats): one sample per draw

    def threshold(v: np.ndarray, subjects: np.ndarray, _n: int, target: float) -> float:
        if last[0] is not v:
            sample = ImpostorSample(v.shape[1], capacity)
            for row, (vector, subject) in enumerate(zip(v, subjects, strict=True)):
                sample.add(row, vector, str(subject))
            last[:] = [v, sample.stats()]
        return rule.threshold(target, len(v), last[1]).threshold

    return threshold


# ---------------------------------------------------------------- the whole run


def resolve_sizes(sizes: Sequence[int | str], candidates: int) -> list[int]:
    out = []
    for size in sizes:
        n = candidates if size == "max" else int(size)
        if n > candidates:
            log.warning("gallery size %d > %d candidates: skipped", n, candidates)
            continue
        if n not in out:
            out.append(n)
    return out


def default_repeats(size: int) -> int:
    """Enough draws that each size rests on about 200+ enrolled subjects (and >= 1)."""
    return max(1, min(20, 2000 // max(size, 1)))


def evaluate_population(
    vectors: np.ndarray,
    people: dict[str, list[int]],
    *,
    sizes: Sequence[int],
    photos: Sequence[int],
    rules: dict[str, ThresholdRule],
    seed: int,
    repeats: int | None = None,
    probe_vectors: np.ndarray | None = None,
    probe_subset: np.ndarray | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every (gallery size, photos per subject) of one population of embeddings."""
    from tqdm import tqdm

    runs = [(size, k) for k in photos for size in sizes]
    out = []
    for size, k in tqdm(runs, desc="open-set galleries", disable=not progress):
        out.append(evaluate_draws(
            vectors, people, size, photos=k,
            repeats=repeats or default_repeats(size), rules=rules, seed=seed,
            probe_vectors=probe_vectors, probe_subset=probe_subset,
        ))
    return out


# ---------------------------------------------------------------- other capture conditions

# Whole-population changes of capture conditions, applied to every photo (gallery and probes)
# before alignment at the landmarks found on the original: the same people as seen by another
# camera. They test whether a decision rule holds its FPIR when the impostor distribution
# moves, which a rule fitted to LFW alone cannot promise.
VARIANTS: dict[str, str] = {
    "grey": "greyscale (luminance), as from an infrared or monochrome camera",
    "dark": "under-exposed: gamma 1.8 then x0.6, with sensor noise (sigma 4 levels)",
    "lowres": "low resolution: shrunk 4x (the face ~25 px wide) and enlarged back",
}


def apply_variant(image: np.ndarray, variant: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` (H, W, 3) uint8 as captured under ``variant`` (see ``VARIANTS``)."""
    from PIL import Image

    if variant == "grey":
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.repeat(np.clip(grey.round(), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    if variant == "dark":
        x = (image.astype(np.float32) / 255.0) ** 1.8 * 0.6 * 255.0
        x += rng.normal(0.0, 4.0, size=x.shape)
        return np.clip(x.round(), 0, 255).astype(np.uint8)
    if variant == "lowres":
        h, w = image.shape[:2]
        small = Image.fromarray(image).resize((max(w // 4, 1), max(h // 4, 1)), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR))
    raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")


def variant_embeddings(
    pipeline: Any,
    keys: Sequence[str],
    landmarks: np.ndarray,
    variant: str,
    cache_file: Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of every image under ``variant``, aligned at the original's landmarks
    (detection is not re-run: the question is the embedding's behaviour). Cached in
    ``cache_file`` by image key."""
    from tqdm import tqdm

    from models.faces import Box, Face
    from models.imageio import decode_image

    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            if list(data["keys"]) == list(keys) and str(data["model"]) == pipeline.model_version:
                return data["vectors"]
    rng = np.random.default_rng([seed, len(keys)])
    out = np.zeros((len(keys), pipeline.embedding_size), np.float32)
    chips: list[np.ndarray] = []
    done = 0
    for i, key in enumerate(tqdm(keys, desc=f"embedding LFW ({variant})", unit="img",
                                 disable=not progress)):
        image = apply_variant(decode_image(Path(key).read_bytes()), variant, rng)
        face = Face(box=Box(0, 0, 0, 0), confidence=0.0, landmarks=landmarks[i])
        chips.append(pipeline.align(image, [face])[0])
        if len(chips) == batch_size or i == len(keys) - 1:
            out[done:done + len(chips)] = pipeline.embed_chips(np.stack(chips))
            done += len(chips)
            chips.clear()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + ".tmp.npz")
    np.savez(tmp, keys=np.array(list(keys)), vectors=out, model=np.array(pipeline.model_version))
    tmp.replace(cache_file)
    return out


# ---------------------------------------------------------------- the command


def evaluate_openset(
    root: Path,
    out_dir: Path,
    *,
    sizes: Sequence[int | str] = DEFAULT_SIZES,
    photos: Sequence[int] = (1, 3),
    variants: Sequence[str] = (),
    seed: int = 0,
    repeats: int | None = None,
    limit_people: int | None = None,
    reference_path: Path | None = None,
    write_reference: Path | None = None,
    crops: Sequence[int] = (),
    crop_images: int = 2000,
    pipeline: Any = None,
    device: str | None = None,
    progress: bool = True,
    model: str | None = None,
    detector: str | None = None,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """The whole benchmark: embed (cache), draw galleries, score every rule, write reports.

    ``model``, ``detector``, ``model_dir``: another embedder or detector than dlib's (as
    ``faceserve eval lfw``); a model with no shipped impostor reference needs
    ``write_reference`` (or ``reference_path``).

    ``reference_path``: the impostor reference to test (default: the one shipped for the
    model). ``write_reference``: build the reference from these embeddings and write it there
    (how ``models/calibration/<model>.json`` is made), then evaluate with it.
    ``limit_people``: a seeded subset of people, for quick runs.
    """
    from models.evaluation.lfw import EmbeddingCache, detections_key, embed_images
    from models.fpir import load_reference

    start = time.perf_counter()
    image_dir = root if any(root.glob("*/*.jpg")) else next(
        (d for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*/*.jpg"))), root)
    names = lfw_people(image_dir)
    if limit_people is not None:
        keep = np.random.default_rng(seed).permutation(sorted(names))[:limit_people]
        names = {n: names[n] for n in sorted(keep)}
    rel = [p for n in sorted(names) for p in names[n]]
    if pipeline is None:
        from models.pipeline import FacePipeline

        pipeline = FacePipeline(device=device, flip=False, model=model, detector=detector,
                                model_dir=model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache.for_run(out_dir, pipeline.model_version,
                                   detections_key(pipeline)).load()
    emb = embed_images(pipeline, [image_dir / p for p in rel], cache, progress=progress)
    vectors = emb.vectors
    people: dict[str, list[int]] = {}
    for i, p in enumerate(rel):
        people.setdefault(p.split("/")[0], []).append(i)
    labels = np.array([p.split("/")[0] for p in rel])

    if write_reference is not None:
        reference = build_reference(vectors, labels, pipeline.model_version,
                                    f"lfw-{len(rel)}-images", prior_subjects=PRIOR_SUBJECTS)
        write_reference.parent.mkdir(parents=True, exist_ok=True)
        write_reference.write_text(json.dumps(reference.to_dict(), indent=2) + "\n")
    else:
        reference = load_reference(pipeline.model_version, reference_path)
        if reference is None:
            raise FileNotFoundError(
                f"no impostor reference for {pipeline.model_version}; pass --reference FILE "
                "or --write-reference FILE")
    rules: dict[str, ThresholdRule] = {
        **{f"fixed {t:g}": fixed_rule(t) for t in FIXED_THRESHOLDS},
        "size only (reference)": reference_rule(reference),
        "service (size + gallery)": service_rule(reference),
    }
    candidates = sum(1 for v in people.values() if len(v) >= 2)
    gallery_sizes = resolve_sizes(sizes, candidates)
    populations: dict[str, dict[str, Any]] = {}

    def run(name: str, description: str, vecs: np.ndarray,
            probe_vectors: np.ndarray | None = None,
            probe_subset: np.ndarray | None = None) -> None:
        results = evaluate_population(vecs, people, sizes=gallery_sizes, photos=photos,
                                      rules=rules, seed=seed, repeats=repeats,
                                      probe_vectors=probe_vectors, probe_subset=probe_subset,
                                      progress=progress)
        for r in results:
            det = r.pop("_det")
            suffix = f"{name}-g{r['gallery_size']}-k{r['photos_per_subject']}"
            r["det_png"] = str(plot_det(det, r, out_dir / f"det-{suffix}.png",
                                        f"{name}: {r['gallery_size']} subjects x "
                                        f"{r['photos_per_subject']} photo(s)"))
        populations[name] = {"description": description, "results": results}

    run("lfw", "LFW deep-funneled as published", vectors)
    keys = [str((image_dir / p).resolve()) for p in rel]
    landmarks = np.stack([cache.entries[k].landmarks for k in keys])
    for variant in variants:
        vecs = variant_embeddings(pipeline, keys, landmarks, variant,
                                  out_dir / f"variant-{variant}-{pipeline.model_version}.npz",
                                  seed=seed, progress=progress)
        run(variant, VARIANTS[variant], vecs)
    if crops:
        from models.evaluation.crops import crop_probe_embeddings, sample_paths

        sampled = set(sample_paths(cache, crop_images, seed))
        subset = np.array([k in sampled for k in keys])
        chosen = [k for k in keys if k in sampled]
    for size in crops:
        found, crop_vecs = crop_probe_embeddings(pipeline, cache, chosen, size)
        probe = np.full((len(keys), vectors.shape[1]), np.nan, np.float32)
        rows = np.flatnonzero(subset)[found]
        probe[rows] = crop_vecs
        run(f"crops{size}", f"probes: {len(chosen)} seeded photos cut around the face (box + "
            f"35% of its width each side), resized to {size}x{size}, JPEG 90, detected as the "
            f"service does; gallery: the original photos; {int(found.sum())}/{len(chosen)} "
            "crops with a face found", vectors, probe_vectors=probe, probe_subset=subset)

    report = {
        "benchmark": "open-set identification (LFW)",
        "model": pipeline.model_version,
        "image_dir": str(image_dir),
        "images": len(rel),
        "people": len(people),
        "candidates": candidates,
        "seed": seed,
        "targets": list(TARGETS),
        "reference": reference.to_dict(),
        "populations": populations,
        "timing_s": round(time.perf_counter() - start, 1),
    }
    (out_dir / "openset.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "openset.md").write_text(openset_markdown(report))
    return report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def openset_markdown(report: dict[str, Any]) -> str:
    """The tables a person reads: per population, per gallery, per rule."""
    lines = [
        f"# Open-set identification: {report['model']}",
        "",
        f"{report['images']} images of {report['people']} people ({report['candidates']} with "
        f"two or more photos); seed {report['seed']}. FPIR: share of strangers matched to "
        "anyone; DIR: share of enrolled people's other photos matched to the right subject "
        "at or above the threshold. *Best possible*: DIR at the threshold chosen after seeing "
        "the strangers' scores.",
    ]
    for name, pop in report["populations"].items():
        lines += ["", f"## {name}: {pop['description']}", ""]
        rule_names = list(pop["results"][0]["rules"]) if pop["results"] else []
        head = "| subjects × photos | draws | rank-1 | target FPIR | best possible DIR | "
        head += " | ".join(f"{r}: FPIR / DIR" for r in rule_names) + " |"
        lines += [head, "|" + "---|" * (5 + len(rule_names))]
        for r in pop["results"]:
            for target in report["targets"]:
                key = f"{target:g}"
                best = r["dir_at_fpir"].get(key)
                cells = [
                    f"{r['gallery_size']} × {r['photos_per_subject']}",
                    str(r["repeats"]),
                    _pct(r["rank1"]),
                    f"{100 * target:g}%",
                    _pct(best["dir"]) if best else "not resolvable",
                ]
                for rule in rule_names:
                    x = r["rules"][rule][key]
                    cells.append(f"{_pct(x['fpir'])} / {_pct(x['dir'])}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_det(det: Any, result: dict[str, Any], path: Path, title: str) -> Path:
    """FNIR against FPIR on log axes, with each rule's operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_non = max(result["nonmated_probes"], 1)
    floor = 0.5 / n_non
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    try:
        ax.step(np.maximum(det.fpir, floor), np.maximum(det.fnir, 1e-4), where="post", lw=1.5,
                label=f"DET (rank-1 {_pct(result['rank1'])})")
        markers = iter("osD^v<>")
        for name, per_target in result["rules"].items():
            m = next(markers, "o")
            xs = [max(x["fpir"], floor) for x in per_target.values()]
            ys = [max(1 - x["dir"], 1e-4) for x in per_target.values()]
            ax.plot(xs, ys, m, ms=6, label=name)
        for target in TARGETS:
            ax.axvline(target, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor / 1.5, 1.0)
        ax.set_xlabel("FPIR: strangers matched (log; dotted: targets 10%, 1%, 0.1%)")
        ax.set_ylabel("FNIR: enrolled people missed (log)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path

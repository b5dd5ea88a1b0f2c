"""``faceserve eval quality``: which face-quality measures predict recognition errors.

Two parts, both from the LFW embedding cache that ``faceserve eval lfw`` writes (no
detection is run again; chips are re-aligned from each image's cached landmarks, which is
cheap):

1. **LFW error analysis.** Every image of the View-2 pairs gets its quality measures
   (``models.quality``; the face is the one ``eval lfw`` used, its confidence that of the
   matching detection, 0 for template fallbacks). For each measure, the pairs with a face in
   the worst 5% of that measure are compared with the rest: error rate at each fold's
   ten-fold threshold (chosen on the other nine folds), and FNMR / FMR at the threshold that
   holds FAR 1e-3 on all pairs.
2. **Degradation sweep.** LFW holds few poor photos, and the limits must hold on other face
   sets, so a few hundred View-2 pairs are re-scored with the first photo degraded
   synthetically (Gaussian blur, downscaling, under- and over-exposure, greyscale, JPEG
   compression): per condition, how each measure moves and what happens to the genuine
   pairs' TAR and the impostors' FMR at the FAR 1e-3 threshold (the detection confidence
   is the clean photo's: nothing is detected again). Downscaled photos are
   re-aligned from the scaled landmarks (the detector without upsampling would not find
   faces that small), so the sweep isolates what the chip resolution costs.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from models.backends.geometry import ChipGeometry
from models.evaluation.lfw import EmbeddingCache, detections_key, pair_scores, resolve_layout
from models.evaluation.metrics import roc_curve, tar_at_far, ten_fold_accuracy
from models.evaluation.pairs import PairSet, read_pairs
from models.faces import Box, Face
from models.quality import DEFAULT_LIMITS, MEASURES, FaceQuality, failed_limits, measure

__all__ = ["DEGRADATIONS", "Degradation", "evaluate_quality", "write_markdown"]

log = logging.getLogger(__name__)

FAR = 1e-3
WORST = 0.05


@dataclass(frozen=True)
class Degradation:
    name: str
    apply: Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> degraded uint8
    scale: float = 1.0  # image scale factor (landmarks are scaled with it)


def _pil(fn: Callable[[Image.Image], Image.Image]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.asarray(fn(Image.fromarray(a)).convert("RGB"))


def _blur(sigma: float) -> Degradation:
    return Degradation(f"blur sigma={sigma:g}px", _pil(lambda im: im.filter(
        ImageFilter.GaussianBlur(sigma))))


def _downscale(f: float) -> Degradation:
    def apply(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        size = (max(1, round(w * f)), max(1, round(h * f)))
        return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR))

    return Degradation(f"downscale x{f:g}", apply, scale=f)


def _gain(k: float) -> Degradation:
    what = "darken" if k < 1 else "overexpose"
    return Degradation(f"{what} x{k:g}", lambda a: np.clip(
        np.rint(a.astype(np.float32) * k), 0, 255).astype(np.uint8))


def _grey(a: np.ndarray) -> np.ndarray:
    g = np.asarray(Image.fromarray(a).convert("L"))
    return np.repeat(g[:, :, None], 3, axis=2)


def _jpeg(q: int) -> Degradation:
    def apply(a: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=q)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    return Degradation(f"jpeg q={q}", apply)


DEGRADATIONS: tuple[Degradation, ...] = (
    Degradation("clean", lambda a: a),
    *(_blur(s) for s in (1, 1.5, 2, 3, 4)),
    *(_downscale(f) for f in (0.75, 0.6, 0.5, 0.42, 0.35, 0.25, 0.18)),
    *(_gain(k) for k in (0.5, 0.25, 0.18, 0.12, 0.06)),
    *(_gain(k) for k in (1.5, 1.75, 2.0, 3.0)),
    Degradation("greyscale", _grey),
    *(_jpeg(q) for q in (10, 5)),
)

# Measure -> which end is worse ("low" or "high"); pose by magnitude.
_WORSE: tuple[tuple[str, str, str], ...] = (
    ("eye_distance", "eye_distance", "low"),
    ("sharpness", "sharpness", "low"),
    ("|yaw|", "yaw", "high"),
    ("|roll|", "roll", "high"),
    ("detection_confidence", "detection_confidence", "low"),
    ("brightness (dark)", "brightness", "low"),
    ("brightness (bright)", "brightness", "high"),
    ("contrast", "contrast", "low"),
    ("dark_share", "dark_share", "high"),
    ("bright_share", "bright_share", "high"),
)


def _used_confidence(entry: Any) -> float:
    """Confidence of the detection ``eval lfw`` used (its landmarks are the entry's)."""
    if entry.fallback:
        return 0.0
    for face in entry.faces():
        if np.allclose(np.asarray(face.landmarks, np.float32), entry.landmarks, atol=1e-3):
            return float(face.confidence)
    return float("nan")


def _image_measures(
    keys: list[str], cache: EmbeddingCache, align: Callable, progress: bool,
    geometry: ChipGeometry | None = None,
) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    from models.imageio import decode_image

    columns: dict[str, list[float]] = {name: [] for name in MEASURES}
    for key in tqdm(keys, desc="quality of LFW faces", unit="img", disable=not progress):
        entry = cache.entries[key]
        image = decode_image(Path(key).read_bytes())
        face = Face(Box(0, 0, 0, 0), 0.0, entry.landmarks)
        chip = align(image, [face])
        values = measure(np.array([_used_confidence(entry)]), entry.landmarks[None], chip,
                         geometry)
        for name in MEASURES:
            columns[name].append(float(values[name][0]))
    return {name: np.array(v) for name, v in columns.items()}


def _rates(mask: np.ndarray, scores: np.ndarray, labels: np.ndarray,
           fold_thr: np.ndarray, far_thr: float) -> dict[str, Any]:
    s, y, t = scores[mask], labels[mask], fold_thr[mask]
    wrong = int(np.sum((s >= t) != y))
    gen, imp = int(y.sum()), int((~y).sum())
    fn = int(np.sum(y & (s < far_thr)))
    fp = int(np.sum(~y & (s >= far_thr)))
    return {
        "pairs": int(mask.sum()),
        "errors": wrong,
        "error_rate": wrong / max(int(mask.sum()), 1),
        "genuine": gen,
        "false_non_matches": fn,
        "fnmr_at_far": fn / gen if gen else None,
        "impostor": imp,
        "false_matches": fp,
        "fmr_at_far": fp / imp if imp else None,
    }


def lfw_error_analysis(
    pairs: PairSet, rel: list[str], keys: list[str], cache: EmbeddingCache,
    values: dict[str, np.ndarray], worst: float = WORST,
) -> dict[str, Any]:
    """Per measure: the pairs with a face in the worst ``worst`` share vs the rest."""
    vectors = np.stack([cache.entries[k].plain for k in keys])
    index = {p: i for i, p in enumerate(rel)}
    scores = pair_scores(pairs, index, vectors)
    labels, folds = pairs.labels, pairs.folds
    ten = ten_fold_accuracy(scores, labels, folds)
    by_fold = {r.fold: r.threshold for r in ten.folds}
    fold_thr = np.array([by_fold[int(f)] for f in folds])
    point = tar_at_far(roc_curve(scores, labels), FAR)
    left = np.array([index[p.left] for p in pairs.pairs])
    right = np.array([index[p.right] for p in pairs.pairs])
    n_worst = int(np.ceil(worst * len(rel)))
    rows = []
    for label, name, end in _WORSE:
        v = values[name]
        v = np.abs(v) if label.startswith("|") else v
        key = np.nan_to_num(v, nan=-np.inf if end == "low" else np.inf)
        order = np.argsort(key if end == "low" else -key, kind="stable")
        bad_images = np.zeros(len(rel), bool)
        bad_images[order[:n_worst]] = True
        cut = float(v[order[n_worst - 1]])
        bad = bad_images[left] | bad_images[right]
        rows.append({
            "measure": label,
            "worse": end,
            "cut": cut,
            "worst_images": n_worst,
            "worst": _rates(bad, scores, labels, fold_thr, point.threshold),
            "rest": _rates(~bad, scores, labels, fold_thr, point.threshold),
        })
    everything = np.ones(len(scores), bool)
    return {
        "pairs": len(scores),
        "images": len(rel),
        "worst_share": worst,
        "ten_fold_accuracy": ten.mean,
        "far": FAR,
        "far_threshold": point.threshold,
        "all": _rates(everything, scores, labels, fold_thr, point.threshold),
        "rows": rows,
    }


def _describe(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for name in MEASURES:
        v = values[name]
        v = np.abs(v) if name in ("yaw", "roll") else v
        out[name] = {"p05": float(np.percentile(v, 5)), "p50": float(np.median(v)),
                     "p95": float(np.percentile(v, 95))}
    return out


def _default_gate(values: dict[str, np.ndarray]) -> dict[str, Any]:
    """How many of these faces the default enrollment limits would refuse, and why."""
    n = len(values["eye_distance"])
    refused: dict[str, int] = {}
    total = 0
    for i in range(n):
        q = FaceQuality(**{name: float(values[name][i]) for name in MEASURES})
        failed = failed_limits(q, DEFAULT_LIMITS)
        total += bool(failed)
        for f in failed:
            refused[f.measure] = refused.get(f.measure, 0) + 1
    return {"faces": n, "refused": total, "by_measure": refused}


def degradation_sweep(
    pairs: PairSet, rel: list[str], keys: list[str], cache: EmbeddingCache, pipeline: Any,
    far_threshold: float, n_pairs: int, progress: bool,
) -> dict[str, Any]:
    """Re-score ``n_pairs`` genuine and ``n_pairs`` impostor pairs with the left photo
    degraded (the right photo stays clean, from the cache)."""
    from tqdm import tqdm

    from models.imageio import decode_image

    index = {p: i for i, p in enumerate(rel)}
    usable = [p for p in pairs.pairs
              if not cache.entries[keys[index[p.left]]].fallback
              and not cache.entries[keys[index[p.right]]].fallback]
    chosen = []
    for same in (True, False):
        group = [p for p in usable if p.same == same]
        step = max(1, len(group) // n_pairs)
        chosen += group[::step][:n_pairs]
    lefts = [keys[index[p.left]] for p in chosen]
    rights = np.stack([cache.entries[keys[index[p.right]]].plain for p in chosen])
    same = np.array([p.same for p in chosen])
    clean_left = np.stack([cache.entries[k].plain for k in lefts])
    images = {k: decode_image(Path(k).read_bytes()) for k in dict.fromkeys(lefts)}
    conditions = []
    for deg in tqdm(DEGRADATIONS, desc="degradation sweep", unit="condition",
                    disable=not progress):
        chips, marks, conf = [], [], []
        for key in lefts:
            entry = cache.entries[key]
            image = deg.apply(images[key])
            lm = entry.landmarks * deg.scale
            chips.append(pipeline.align(image, [Face(Box(0, 0, 0, 0), 0.0, lm)])[0])
            marks.append(lm)
            conf.append(_used_confidence(entry))
        chips_a = np.stack(chips)
        values = measure(np.array(conf), np.stack(marks), chips_a,
                         getattr(pipeline, "geometry", None))
        emb = pipeline.embed_chips(chips_a)
        sim = np.einsum("ij,ij->i", emb.astype(np.float64), rights.astype(np.float64))
        self_sim = np.einsum("ij,ij->i", emb.astype(np.float64), clean_left.astype(np.float64))
        gen, imp = sim[same], sim[~same]
        conditions.append({
            "condition": deg.name,
            "measures": _describe(values),
            "genuine_pairs": int(same.sum()),
            "tar_at_far": float(np.mean(gen >= far_threshold)),
            "mean_genuine_similarity": float(gen.mean()),
            "impostor_pairs": int((~same).sum()),
            "false_matches": int(np.sum(imp >= far_threshold)),
            "mean_impostor_similarity": float(imp.mean()),
            "mean_similarity_to_clean": float(self_sim.mean()),
            "default_gate": _default_gate(values),
        })
    return {"pairs_per_class": n_pairs, "far_threshold": far_threshold,
            "conditions": conditions}


def evaluate_quality(
    root: Path, cache_path: Path, out_dir: Path, *, pairs_file: Path | None = None,
    model: str = "dlib", sweep_pairs: int = 200, progress: bool = True,
    detector: str | None = None, model_dir: Path | None = None,
) -> dict[str, Any]:
    """Run both parts; write ``quality.json``, ``quality.md`` and ``quality_values.npz``
    (every image's measures) in ``out_dir``. ``model``, ``detector``, ``model_dir``: as for
    ``eval lfw`` (``FacePipeline``): the cache must be that model's, its landmarks that
    detector's; chips are cut and measured with the model's geometry."""
    from models.pipeline import FacePipeline

    start = time.perf_counter()
    image_dir, pairs_file = resolve_layout(root, pairs_file)
    pairs = read_pairs(pairs_file)
    pipeline = FacePipeline(device="cpu", model=None if model == "dlib" else model,
                            detector=detector, model_dir=model_dir)
    cache = EmbeddingCache(cache_path, pipeline.model_version, detections_key(pipeline)).load()
    rel = pairs.images()
    keys = [str((image_dir / p).resolve()) for p in rel]
    missing = [k for k in keys if k not in cache.entries or cache.entries[k].plain is None]
    if missing:
        raise SystemExit(
            f"{len(missing)} of {len(keys)} pair images are not in {cache_path} (e.g. "
            f"{missing[0]}); run `faceserve eval lfw` with --cache {cache_path} first"
        )
    values = _image_measures(keys, cache, pipeline.align, progress, pipeline.geometry)
    analysis = lfw_error_analysis(pairs, rel, keys, cache, values)
    report = {
        "dataset": "lfw-view2",
        "model": pipeline.model_version,
        "detector": pipeline.detector_version,
        "cache": str(cache_path),
        "fallback_images": int(sum(cache.entries[k].fallback for k in keys)),
        "distribution": _describe(values),
        "default_limits": {k: v for k, v in vars(DEFAULT_LIMITS).items() if v is not None},
        "default_gate_on_lfw": _default_gate(values),
        "error_analysis": analysis,
    }
    if sweep_pairs > 0:
        report["degradation"] = degradation_sweep(
            pairs, rel, keys, cache, pipeline, analysis["far_threshold"], sweep_pairs, progress)
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    # Every image's measures, for analyses beyond the table (rows follow ``images``).
    np.savez(out_dir / "quality_values.npz", images=np.array(rel), **values)
    write_markdown(report, out_dir / "quality.md")
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def write_markdown(report: dict[str, Any], path: Path) -> Path:
    a = report["error_analysis"]
    lines = [
        f"# Face quality on {report['dataset']} ({report['model']})",
        "",
        f"{a['pairs']} pairs, {a['images']} images ({report['fallback_images']} template "
        f"fallbacks); ten-fold accuracy {100 * a['ten_fold_accuracy']:.2f}%; FAR {a['far']:g} "
        f"threshold {a['far_threshold']:.4f}. A pair is in *worst* when either face is among "
        f"the worst {100 * a['worst_share']:.0f}% of images for the measure.",
        "",
        "| measure | worst 5% cut | pairs worst / rest | error worst | error rest "
        "| FNMR@FAR worst | FNMR@FAR rest | false matches worst / rest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in a["rows"]:
        w, o = r["worst"], r["rest"]
        lines.append(
            f"| {r['measure']} | {'<=' if r['worse'] == 'low' else '>='} {r['cut']:.3g} "
            f"| {w['pairs']} / {o['pairs']} "
            f"| {_pct(w['error_rate'])} ({w['errors']}) | {_pct(o['error_rate'])} ({o['errors']}) "
            f"| {_pct(w['fnmr_at_far'])} ({w['false_non_matches']}/{w['genuine']}) "
            f"| {_pct(o['fnmr_at_far'])} ({o['false_non_matches']}/{o['genuine']}) "
            f"| {w['false_matches']}/{w['impostor']} / {o['false_matches']}/{o['impostor']} |"
        )
    al = a["all"]
    lines += [
        f"| all pairs | | {al['pairs']} | {_pct(al['error_rate'])} ({al['errors']}) | "
        f"| {_pct(al['fnmr_at_far'])} ({al['false_non_matches']}/{al['genuine']}) | "
        f"| {al['false_matches']}/{al['impostor']} |",
        "",
        "Default enrollment limits: "
        + (", ".join(f"`{k}={v:g}`" for k, v in report["default_limits"].items()) or "none"),
        f"; on these LFW faces they refuse {report['default_gate_on_lfw']['refused']} of "
        f"{report['default_gate_on_lfw']['faces']} "
        f"({report['default_gate_on_lfw']['by_measure']}).",
    ]
    deg = report.get("degradation")
    if deg:
        lines += [
            "",
            f"## Degradation sweep ({deg['pairs_per_class']} genuine + "
            f"{deg['pairs_per_class']} impostor pairs, first photo degraded)",
            "",
            "Medians over the degraded faces; TAR and false matches at the FAR "
            f"{a['far']:g} threshold {deg['far_threshold']:.4f}.",
            "",
            "| condition | eye dist | sharpness | brightness | contrast | dark share "
            "| bright share | TAR | false matches | cos to clean | refused by defaults |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in deg["conditions"]:
            m = c["measures"]
            lines.append(
                f"| {c['condition']} | {m['eye_distance']['p50']:.1f} "
                f"| {m['sharpness']['p50']:.3f} | {m['brightness']['p50']:.3f} "
                f"| {m['contrast']['p50']:.3f} | {m['dark_share']['p50']:.3f} "
                f"| {m['bright_share']['p50']:.3f} | {_pct(c['tar_at_far'])} "
                f"| {c['false_matches']}/{c['impostor_pairs']} "
                f"| {c['mean_similarity_to_clean']:.3f} "
                f"| {c['default_gate']['refused']}/{c['default_gate']['faces']} |"
            )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

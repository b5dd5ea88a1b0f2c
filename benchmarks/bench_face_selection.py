"""Face-selection rules compared on LFW View-2, from the eval-lfw cache, without detecting again.

The eval-lfw cache keeps every detection of every image (box, confidence, landmarks) and the
embedding of the face eval lfw chose. Each rule picks a face per image; for an image with
several detections the chosen face's embedding is computed here (decode, align with that
face's landmarks, embed: only those few hundred images, every face once, kept in a side file)
and the 6,000 pairs are scored exactly as eval lfw does (ten-fold best-threshold accuracy,
``models.evaluation.report.summarise``). Images without a detection keep their fallback
embedding under every rule.

    .venv/bin/python benchmarks/bench_face_selection.py \
        [--cache /work/cache/lfw-eval/embeddings-dlib-resnet-v1.npz] [--root LFW_DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.evaluation.lfw import EmbeddingCache, pair_scores, resolve_layout  # noqa: E402
from models.evaluation.pairs import read_pairs  # noqa: E402
from models.evaluation.report import summarise  # noqa: E402
from models.face_selection import off_centre, primary_face, visible_area  # noqa: E402
from models.faces import Face  # noqa: E402

SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
MODEL = "dlib-resnet-v1"

Rule = Callable[[Sequence[Face], int, int], int]


def _tolerant(area_ratio: float, then: str) -> Rule:
    """Visible areas within ``area_ratio`` of the largest tie, then ``then`` ("centre")."""

    def rule(faces: Sequence[Face], h: int, w: int) -> int:
        areas = [visible_area(f.box, h, w) for f in faces]
        tied = [i for i, a in enumerate(areas) if a * area_ratio >= max(areas)]
        assert then == "centre"
        return min(tied, key=lambda i: off_centre(faces[i].box, h, w))

    return rule


RULES: dict[str, Rule] = {
    # The service's rule before this change (service/inference/inference.py largest_face).
    "largest box": lambda f, h, w: max(range(len(f)), key=lambda i: (f[i].box.area,
                                                                     f[i].confidence)),
    "most confident": lambda f, h, w: max(range(len(f)), key=lambda i: f[i].confidence),
    # eval lfw's rule before this change (nearest the centre; LFW is centred by construction).
    "nearest centre": lambda f, h, w: min(range(len(f)), key=lambda i: off_centre(f[i].box, h, w)),
    "visible area (x1.15) > centre": _tolerant(1.15, "centre"),
    "visible area (x1.5) > centre": _tolerant(1.5, "centre"),
}
# models/face_selection.py's function with other tolerances: (area ratio, confidence).
VARIANTS = [(1.0, 0.1), (1.15, 0.0), (1.15, 0.1), (1.5, 0.0), (1.5, 0.1), (1.5, 0.2), (2.1, 0.1),
            (3.0, 0.1)]
for _area, _conf in VARIANTS:
    RULES[f"primary_face(area x{_area}, conf {_conf})"] = (
        lambda f, h, w, a=_area, c=_conf: primary_face(  # type: ignore[misc, union-attr]
            f, h, w, area_ratio=a, confidence_tolerance=c).index)
# The rule the service and eval lfw use, with its default tolerances.
RULES["primary_face (defaults)"] = lambda f, h, w: primary_face(f, h, w).index  # type: ignore[union-attr]


def face_embeddings(cache: EmbeddingCache, keys: list[str], side: Path) -> dict[str, np.ndarray]:
    """``(faces, 128)`` embeddings of every detection of each key, computed once."""
    stored: dict[str, np.ndarray] = {}
    if side.is_file():
        with np.load(side, allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
    todo = [k for k in keys if k not in stored]
    if todo:
        import torch

        from models.imageio import decode_image
        from models.pipeline import FacePipeline

        torch.set_num_threads(1)
        pipeline = FacePipeline(device="cpu")
        for n, key in enumerate(todo):
            image = decode_image(Path(key).read_bytes())
            chips = pipeline.align(image, cache.entries[key].faces())
            stored[key] = pipeline.embed_chips(chips)
            if n % 50 == 0:
                print(f"  embedded every face of {n + 1}/{len(todo)} images", flush=True)
        side.parent.mkdir(parents=True, exist_ok=True)
        np.savez(side, **stored)
    return stored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path,
                   default=Path("/work/cache/lfw-eval") / f"embeddings-{MODEL}.npz")
    p.add_argument("--root", type=Path, default=SHARED / "lfw" / "lfw-deepfunneled")
    p.add_argument("--out", type=Path, default=RESULTS / "face_selection.json")
    args = p.parse_args(argv)

    image_dir, pairs_file = resolve_layout(args.root, None)
    pairs = read_pairs(pairs_file)
    rel = pairs.images()
    keys = [str((image_dir / r).resolve()) for r in rel]
    cache = EmbeddingCache(args.cache, MODEL).load()
    missing = [k for k in keys if k not in cache.entries or cache.entries[k].plain is None]
    if missing:
        raise SystemExit(f"{len(missing)} View-2 images are not in {args.cache} yet")
    entries = [cache.entries[k] for k in keys]
    if any(e.image_size is None for e in entries):
        raise SystemExit(f"{args.cache} predates kept detections; run eval lfw again")
    multi = [k for k, e in zip(keys, entries, strict=True) if len(e.faces()) > 1]
    print(f"{len(keys)} View-2 images, {len(multi)} with several detections")
    per_face = face_embeddings(cache, multi, RESULTS / f"face-selection-faces-{MODEL}.npz")

    # Check: the face eval lfw chose re-embeds to the cached vector.
    worst = 1.0
    for key in multi:
        e = cache.entries[key]
        marks = np.stack([f.landmarks for f in e.faces()])
        j = int(np.argmin(np.abs(marks - e.landmarks[None]).sum(axis=(1, 2))))
        worst = min(worst, float(per_face[key][j] @ e.plain))
    print(f"re-embedded cached faces agree with the cache: min cosine {worst:.6f}")

    plain = np.stack([e.plain for e in entries]).astype(np.float32)
    index = {r: i for i, r in enumerate(rel)}
    position = {k: i for i, k in enumerate(keys)}
    central = {k: RULES["nearest centre"](cache.entries[k].faces(), *cache.entries[k].image_size)
               for k in multi}
    rows = []
    for name, rule in RULES.items():
        vectors = plain.copy()
        differs = 0
        for key in multi:
            e = cache.entries[key]
            h, w = e.image_size  # type: ignore[misc]
            j = rule(e.faces(), h, w)
            differs += j != central[key]
            vectors[position[key]] = per_face[key][j]
        summary = summarise(pair_scores(pairs, index, vectors), pairs.labels, pairs.folds)
        rows.append({
            "rule": name,
            "ten_fold_mean": summary.ten_fold.mean,
            "ten_fold_std": summary.ten_fold.std,
            "best_accuracy": summary.best_accuracy,
            "images_differing_from_centre": int(differs),
        })
    folds = f"{pairs.n_folds}-fold acc"
    print(f"\n{'rule':40} {folds:>12} {'± std':>7} {'best-thr acc':>13} {'≠ centre':>9}")
    for r in rows:
        print(f"{r['rule']:40} {100 * r['ten_fold_mean']:11.2f}% {100 * r['ten_fold_std']:6.2f} "
              f"{100 * r['best_accuracy']:12.2f}% {r['images_differing_from_centre']:9d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cache": str(args.cache),
        "pairs": len(pairs),
        "images": len(keys),
        "images_with_several_detections": len(multi),
        "rules": rows,
    }, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

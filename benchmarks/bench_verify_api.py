"""LFW View-2 through ``POST /verify``: does the HTTP API agree with ``faceserve eval lfw``?

Starts the app in-process (``TestClient`` on a temporary, empty gallery, the real pipeline
built by the service's own factory) and sends every pair of the pairs file as one
``POST /verify`` (``image_a`` + ``image_b``, multipart, the JPEG bytes as stored): two
detections per pair, nothing shared between requests. The similarities are scored exactly as
eval lfw scores its own (``models.evaluation.report.summarise``: ten-fold best-threshold
accuracy) and set next to eval lfw's figure on the same pairs, computed from the eval cache
(a temporary copy: rows picked under another face rule are re-picked and re-embedded there,
the shared file is never written). A pair the API answers with 422 ``no_face`` scores -1 (a
"no match" answer); eval lfw aligns such an image from its template instead, so these pairs
are counted and listed.

    .venv/bin/python benchmarks/bench_verify_api.py [--limit-folds 2] [--per-fold N] \
        [--workers 2] [--cache /work/cache/lfw-eval/embeddings-dlib-resnet-v1.npz]

Prints a table and writes JSON to benchmarks/results/verify_api[-subset].json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_CACHE = Path("/work/cache/lfw-eval/embeddings-dlib-resnet-v1.npz")


def api_scores(client: Any, image_dir: Path, pairs: Any, workers: int) -> dict[str, Any]:
    """Similarity of every pair from POST /verify (-1 for a 422 no_face), in pair order."""
    scores = np.full(len(pairs), np.nan)
    decided: Counter[str] = Counter()
    no_face: list[int] = []
    start = time.perf_counter()

    def one(i: int) -> None:
        pair = pairs.pairs[i]
        files = {side: (Path(rel).name, (image_dir / rel).read_bytes(), "image/jpeg")
                 for side, rel in (("image_a", pair.left), ("image_b", pair.right))}
        r = client.post("/verify", files=files)
        if r.status_code == 422 and r.json()["error"]["code"] == "no_face":
            scores[i] = -1.0
            no_face.append(i)
            return
        if r.status_code != 200:
            raise RuntimeError(f"pair {i} ({pair.left}, {pair.right}): {r.status_code} {r.text}")
        body = r.json()
        scores[i] = body["similarity"]
        for face in body["faces"]:
            decided[face["face_selection"]["decided_by"]] += 1

    with ThreadPoolExecutor(workers) as pool:
        for n, _ in enumerate(pool.map(one, range(len(pairs))), start=1):
            if n % 200 == 0 or n == len(pairs):
                rate = n / (time.perf_counter() - start)
                print(f"  {n}/{len(pairs)} pairs, {rate:.1f} pairs/s, "
                      f"{(len(pairs) - n) / rate / 60:.1f} min left", flush=True)
    return {
        "scores": scores,
        "no_face_pairs": sorted(no_face),
        "decided_by": dict(decided),
        "seconds": time.perf_counter() - start,
    }


def eval_scores(pipeline: Any, image_dir: Path, pairs: Any, cache_file: Path) -> dict[str, Any]:
    """eval lfw's similarities for the same pairs, from a temporary copy of its cache."""
    from models.evaluation.lfw import EmbeddingCache, embed_images, pair_scores

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / cache_file.name
        if cache_file.is_file():
            shutil.copyfile(cache_file, copy)
        cache = EmbeddingCache(copy, pipeline.model_version).load()
        rel = pairs.images()
        emb = embed_images(pipeline, [image_dir / p for p in rel], cache, progress=False)
    scores = pair_scores(pairs, {p: i for i, p in enumerate(rel)}, emb.vectors)
    return {"scores": scores, "embedded": emb.embedded, "detected": emb.detected,
            "fallback_images": [p for p, fb in zip(rel, emb.fallback, strict=True) if fb]}


def figures(scores: np.ndarray, pairs: Any) -> dict[str, float]:
    from models.evaluation.report import summarise

    s = summarise(scores, pairs.labels, pairs.folds)
    return {"ten_fold_mean": s.ten_fold.mean, "ten_fold_std": s.ten_fold.std,
            "best_threshold": s.best_threshold, "best_accuracy": s.best_accuracy,
            "auc": s.auc}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=SHARED / "lfw" / "lfw-deepfunneled")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="eval lfw's embedding cache (read only; copied)")
    p.add_argument("--limit-folds", type=int, help="only the first N folds (N >= 2)")
    p.add_argument("--per-fold", type=int, help="only the first N + N pairs of each fold")
    p.add_argument("--workers", type=int, default=2, help="requests in flight")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import torch

    from models.evaluation.lfw import resolve_layout
    from models.evaluation.pairs import read_pairs
    from service.api.app import create_app, default_pipeline
    from service.config import Settings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    torch.set_num_threads(args.threads)
    image_dir, pairs_file = resolve_layout(args.root, None)
    pairs = read_pairs(pairs_file)
    if args.limit_folds is not None:
        pairs = pairs.limit_folds(args.limit_folds)
    if args.per_fold is not None:
        pairs = pairs.limit_per_fold(args.per_fold)
    subset = (args.limit_folds, args.per_fold) != (None, None)
    out = args.out or RESULTS / f"verify_api{'-subset' if subset else ''}.json"

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir), device=args.device,
                            inference_threads=args.workers, request_timeout_s=0,
                            rate_limit_per_s=0)
        pipeline = default_pipeline(settings)
        app = create_app(settings, pipeline_factory=lambda s: pipeline)
        with TestClient(app) as client:
            deadline = time.monotonic() + 300
            while client.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("the service did not become ready")
                time.sleep(0.1)
            print(f"POST /verify over {len(pairs)} pairs ({args.workers} in flight)", flush=True)
            api = api_scores(client, image_dir, pairs, args.workers)
        print("eval lfw on the same pairs, from the cache", flush=True)
        ev = eval_scores(pipeline, image_dir, pairs, args.cache)

    api_fig, eval_fig = figures(api["scores"], pairs), figures(ev["scores"], pairs)
    answered = np.ones(len(pairs), bool)
    answered[api["no_face_pairs"]] = False
    delta = np.abs(api["scores"] - ev["scores"])[answered]
    threshold = eval_fig["best_threshold"]
    flips = int(np.sum((api["scores"] >= threshold) != (ev["scores"] >= threshold)))
    gap = 100 * (api_fig["ten_fold_mean"] - eval_fig["ten_fold_mean"])

    print(f"\nLFW {len(pairs)} pairs ({pairs.n_folds} folds x {pairs.per_half} + "
          f"{pairs.per_half})")
    print(f"{'':28} {f'{pairs.n_folds}-fold acc':>12} {'± std':>7} {'best-thr acc':>13} {'AUC':>8}")
    for name, fig in (("POST /verify (HTTP API)", api_fig), ("eval lfw (cache)", eval_fig)):
        print(f"{name:28} {100 * fig['ten_fold_mean']:11.2f}% {100 * fig['ten_fold_std']:6.2f} "
              f"{100 * fig['best_accuracy']:12.2f}% {fig['auc']:8.5f}")
    print(f"gap {gap:+.2f} points; pairs answered no_face: {len(api['no_face_pairs'])}; "
          f"max |similarity difference| on the others {delta.max():.2e}; decisions that "
          f"differ at eval's best threshold: {flips}")
    print(f"API faces chosen by: {api['decided_by']}; {api['seconds']:.0f} s "
          f"({len(pairs) / api['seconds']:.2f} pairs/s)")

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "pairs": len(pairs),
        "folds": pairs.n_folds,
        "per_half": pairs.per_half,
        "api": {**api_fig, "seconds": round(api["seconds"], 1),
                "no_face_pairs": [[pairs.pairs[i].left, pairs.pairs[i].right]
                                  for i in api["no_face_pairs"]],
                "faces_decided_by": api["decided_by"]},
        "eval_lfw": {**eval_fig, "cache": str(args.cache), "re_embedded": ev["embedded"],
                     "detected": ev["detected"], "fallback_images": ev["fallback_images"]},
        "gap_points": gap,
        "max_abs_similarity_difference": float(delta.max()) if delta.size else None,
        "decisions_differing_at_eval_best_threshold": flips,
        "settings": {"workers": args.workers, "threads": args.threads, "device": args.device},
    }, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

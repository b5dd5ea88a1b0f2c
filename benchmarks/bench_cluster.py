"""Clustering at scale: time and memory for 10^4 and 10^5 face embeddings.

Synthetic face-like embeddings from ``bench_search.make_gallery`` (fitted to dlib-resnet-v1
on LFW: same-person cosine ~0.95, different-person ~0.83), ``--per-id`` photos per person.
Each (size, algorithm) runs in a child process, so its peak memory is its own: the figure is
the child's peak RSS (VmHWM) minus its RSS once the embeddings are made. Agglomerative
linkage needs the condensed N x N distance matrix (8 N^2 / 2 bytes): it is run only where
that fits in ``--max-linkage-gib``, otherwise reported as skipped with what it would need.
Also reports the BCubed F against the generator's identities, and incremental assignment of
1% more faces to the clustered set. ``average+add`` is the way past the N x N matrix: average
linkage on the first 10^4 faces, then the rest added 10^4 at a time.
Prints a table, writes benchmarks/results/bench_cluster.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cluster.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

THRESHOLD = 0.93  # models.clustering.CLUSTER_THRESHOLD
INCREMENTAL_BATCH = 10_000


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_case(n: int, algorithm: str, per_id: int, seed: int) -> dict[str, Any]:
    from bench_search import Generator, make_gallery

    from models.clustering import Clustering
    from models.evaluation.cluster import scores

    add = max(1, n // 100)
    gallery, queries, _ = make_gallery(
        n, add, Generator(faces_per_id=per_id, seed=seed))
    truth = np.arange(n) % max(1, n // per_id)
    base = _rss_kib("VmRSS")
    incremental = algorithm.endswith("+add")
    algorithm = algorithm.removesuffix("+add")
    model = Clustering(threshold=THRESHOLD, algorithm=algorithm, seed=seed)
    t0 = time.perf_counter()
    if incremental:  # fit the first INCREMENTAL_BATCH faces, then add the rest in batches
        order = np.random.default_rng(seed).permutation(n)
        gallery, truth = gallery[order], truth[order]
        model.fit(gallery[:INCREMENTAL_BATCH])
        for start in range(INCREMENTAL_BATCH, n, INCREMENTAL_BATCH):
            model.add(gallery[start:start + INCREMENTAL_BATCH])
        labels = model.labels
    else:
        labels = model.fit(gallery)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.add(queries)
    add_s = time.perf_counter() - t0
    s = scores(labels, truth)
    return {"n": n, "algorithm": algorithm + ("+add" if incremental else ""),
            "fit_s": round(fit_s, 2),
            "add_faces": add, "add_s": round(add_s, 2),
            "peak_mib": round((_rss_kib("VmHWM") - base) / 1024, 1),
            "bcubed_f": s["bcubed_f"], "pairwise_precision": s["pairwise_precision"],
            "pairwise_recall": s["pairwise_recall"], "unclustered": s["unclustered"],
            "clusters": s["clusters"], "people": int(truth.max()) + 1}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--algorithms", default="chinese-whispers,average,complete,average+add",
                   help="`average+add`: average linkage on the first 10^4 faces, the rest "
                        "added 10^4 at a time (Clustering.add): how a large pool is kept")
    p.add_argument("--per-id", type=int, default=5, help="photos per synthetic person")
    p.add_argument("--max-linkage-gib", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", nargs=2, metavar=("N", "ALGORITHM"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bench_cluster.json")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1], args.per_id, args.seed)))
        return 0
    rows: list[dict[str, Any]] = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for algorithm in args.algorithms.split(","):
            need_gib = 8 * n * (n - 1) / 2 / 2**30
            if algorithm in ("average", "complete") and need_gib > args.max_linkage_gib:
                rows.append({"n": n, "algorithm": algorithm,
                             "skipped": f"distance matrix alone {need_gib:.0f} GiB"})
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--case", str(n), algorithm,
                 "--per-id", str(args.per_id), "--seed", str(args.seed)],
                capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    print("| faces | algorithm | fit s | add 1% s | peak MiB | BCubed F | pairwise P | "
          "pairwise R | unclustered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['n']:,} | {r['algorithm']} | skipped: {r['skipped']} |||||||")
            continue
        print(f"| {r['n']:,} | {r['algorithm']} | {r['fit_s']} | {r['add_s']} "
              f"| {r['peak_mib']} | {r['bcubed_f']:.3f} | {r['pairwise_precision']:.3f} "
              f"| {r['pairwise_recall']:.3f} | {r['unclustered']:.1%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "threshold": THRESHOLD, "per_id": args.per_id, "seed": args.seed,
        "machine": {"python": platform.python_version(), "cpu": platform.processor(),
                    "threads": "OMP_NUM_THREADS"},
        "rows": rows}, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

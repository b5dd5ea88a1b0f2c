"""``faceserve eval cluster``: how well clustering finds the people of an LFW subset.

The subset (:mod:`models.evaluation.cluster_subset`) is embedded through the service's
pipeline with the ``eval lfw`` embedding cache, then clustered by each algorithm of
:mod:`models.clustering` at a few thresholds around the service's verify threshold. Scores
against the true identities:

* pairwise precision / recall: of the face pairs put in one cluster, the share that are one
  person; of the pairs that are one person, the share put in one cluster;
* BCubed precision / recall / F (per face: the share of its cluster that is its person, the
  share of its person that is in its cluster; averaged): unlike pairwise scores, not
  dominated by the largest people;
* the share of faces left unclustered (alone), beside the share that truly are alone in the
  subset (people with one photo in it).

It also checks incremental assignment: fit on 80% of the faces, add the rest in five
batches, and compare with a full recluster of everything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.clustering import Clustering, cluster

__all__ = ["agreement", "evaluate_cluster", "markdown", "scores"]


def _codes(labels: Sequence[Any] | np.ndarray, *, alone_apart: bool) -> np.ndarray:
    """Integer codes; with ``alone_apart`` every -1 becomes a class of its own."""
    arr = np.asarray(labels)
    _, codes = np.unique(arr, return_inverse=True)
    codes = codes.ravel().astype(np.int64)
    if alone_apart:
        alone = np.flatnonzero(arr.astype(str) == "-1") if arr.dtype.kind in "US" else \
            np.flatnonzero(arr == -1)
        codes[alone] = codes.max() + 1 + np.arange(len(alone))
    return codes


def scores(predicted: np.ndarray, truth: Sequence[Any] | np.ndarray) -> dict[str, float]:
    """Pairwise and BCubed precision/recall/F of ``predicted`` (-1: alone) against ``truth``."""
    pred = _codes(predicted, alone_apart=True)
    true = _codes(truth, alone_apart=False)
    n = len(pred)
    if n == 0:
        raise ValueError("no faces to score")
    joint = pred * (true.max() + 1) + true
    _, nij = np.unique(joint, return_counts=True)
    _, inverse_joint = np.unique(joint, return_inverse=True)
    a = np.bincount(pred)  # predicted cluster sizes
    b = np.bincount(true)  # true class sizes

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float(np.sum(x * (x - 1) / 2))

    tp, pred_pairs, true_pairs = pairs(nij), pairs(a), pairs(b)
    pp = tp / pred_pairs if pred_pairs else 1.0
    pr = tp / true_pairs if true_pairs else 1.0
    per_face_n = nij[inverse_joint.ravel()].astype(np.float64)
    bp = float(np.mean(per_face_n / a[pred]))
    br = float(np.mean(per_face_n / b[true]))
    return {
        "pairwise_precision": round(pp, 4),
        "pairwise_recall": round(pr, 4),
        "pairwise_f": round(2 * pp * pr / (pp + pr), 4) if pp + pr else 0.0,
        "bcubed_precision": round(bp, 4),
        "bcubed_recall": round(br, 4),
        "bcubed_f": round(2 * bp * br / (bp + br), 4),
        "unclustered": round(float(np.mean(np.asarray(predicted) == -1)), 4),
        "clusters": len(np.unique(np.asarray(predicted)[np.asarray(predicted) >= 0])),
    }


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric agreement of two clusterings of the same faces: BCubed F of one against the
    other (1.0: identical partitions, alone faces counted as clusters of one)."""
    return scores(a, _codes(b, alone_apart=True))["bcubed_f"]


def incremental_check(
    vectors: np.ndarray, truth: Sequence[str], threshold: float, algorithm: str,
    *, seed: int = 0, first: float = 0.8, batches: int = 5,
) -> dict[str, Any]:
    """Fit on ``first`` of the faces (seeded order), add the rest in ``batches``; compare
    with a full recluster of all of them."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vectors))
    v, t = vectors[order], np.asarray(truth)[order]
    cut = int(first * len(v))
    model = Clustering(threshold=threshold, algorithm=algorithm, seed=seed)
    t0 = time.perf_counter()
    model.fit(v[:cut])
    for part in np.array_split(np.arange(cut, len(v)), batches):
        model.add(v[part])
    add_s = time.perf_counter() - t0
    full = cluster(v, threshold, algorithm=algorithm, seed=seed)
    inc_scores, full_scores = scores(model.labels, t), scores(full, t)
    return {
        "first_share": first,
        "batches": batches,
        "agreement_bcubed_f": agreement(model.labels, full),
        "incremental_bcubed_f": inc_scores["bcubed_f"],
        "full_bcubed_f": full_scores["bcubed_f"],
        "incremental_pairwise_f": inc_scores["pairwise_f"],
        "full_pairwise_f": full_scores["pairwise_f"],
        "seconds": round(add_s, 2),
    }


def evaluate_cluster(
    vectors: np.ndarray,
    truth: Sequence[str],
    out_dir: Path,
    *,
    thresholds: Sequence[float],
    service_threshold: float,
    cluster_threshold: float,
    algorithms: Sequence[str] = ("chinese-whispers", "average", "complete"),
    dataset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score every algorithm at every threshold; write cluster.json and cluster.md."""
    truth = list(truth)
    counts: dict[str, int] = {}
    for name in truth:
        counts[name] = counts.get(name, 0) + 1
    truly_alone = sum(1 for name in truth if counts[name] == 1) / len(truth)
    rows = []
    for algorithm in algorithms:
        for threshold in thresholds:
            t0 = time.perf_counter()
            labels = cluster(vectors, threshold, algorithm=algorithm)
            seconds = time.perf_counter() - t0
            rows.append({"algorithm": algorithm, "threshold": threshold,
                         **scores(labels, truth), "seconds": round(seconds, 2)})
    incremental = {a: incremental_check(vectors, truth, cluster_threshold, a)
                   for a in algorithms}
    report = {
        "dataset": {**(dataset or {}), "faces": len(truth), "people": len(counts),
                    "truly_alone": round(truly_alone, 4)},
        "service_threshold": service_threshold,
        "cluster_threshold": cluster_threshold,
        "results": rows,
        "incremental": incremental,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cluster.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "cluster.md").write_text(markdown(report) + "\n", encoding="utf-8")
    return report


def markdown(report: dict[str, Any]) -> str:
    d = report["dataset"]
    lines = [
        f"LFW clustering: {d['faces']} faces of {d['people']} people "
        f"({d['truly_alone']:.1%} truly alone); verify threshold {report['service_threshold']}, "
        f"clustering default {report['cluster_threshold']}",
        "",
        "| algorithm | threshold | pairwise P | pairwise R | BCubed P | BCubed R | BCubed F "
        "| unclustered | clusters | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['algorithm']} | {r['threshold']} | {r['pairwise_precision']:.3f} "
            f"| {r['pairwise_recall']:.3f} | {r['bcubed_precision']:.3f} "
            f"| {r['bcubed_recall']:.3f} | {r['bcubed_f']:.3f} | {r['unclustered']:.1%} "
            f"| {r['clusters']} | {r['seconds']} |"
        )
    lines += ["", f"Incremental (80% fitted, 20% added in 5 batches) vs full recluster, at "
              f"{report['cluster_threshold']}:", "",
              "| algorithm | agreement (BCubed F) | incremental BCubed F | full BCubed F |",
              "|---|---|---|---|"]
    for a, r in report["incremental"].items():
        lines.append(f"| {a} | {r['agreement_bcubed_f']:.3f} | {r['incremental_bcubed_f']:.3f} "
                     f"| {r['full_bcubed_f']:.3f} |")
    return "\n".join(lines)

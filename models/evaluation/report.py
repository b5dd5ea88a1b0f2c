"""Turning verification results into the three artefacts: JSON report, Markdown summary, ROC PNG.

The JSON is the record (everything needed to compare two runs); the Markdown is what a person
reads; the PNG shows the whole trade-off with the operating points on it. The FAR axis is
logarithmic because the interesting part of a face-verification ROC is FAR <= 1e-2, which a
linear axis squeezes into one pixel column.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation.metrics import (
    OperatingPoint,
    Roc,
    TenFold,
    auc,
    best_threshold,
    eer,
    roc_curve,
    tar_at_far,
    ten_fold_accuracy,
)

__all__ = ["REPORT_FARS", "VerificationSummary", "plot_roc", "summarise", "write_markdown"]

REPORT_FARS: tuple[float, ...] = (1e-2, 1e-3)


@dataclass(frozen=True)
class VerificationSummary:
    """All figures of one verification run on scored pairs."""

    ten_fold: TenFold
    roc: Roc
    auc: float
    eer: float
    eer_threshold: float
    best_threshold: float
    best_accuracy: float  # of best_threshold on all pairs (optimistic: fitted on them)
    tar_at_far: tuple[OperatingPoint, ...]
    genuine_scores: np.ndarray = field(repr=False)
    impostor_scores: np.ndarray = field(repr=False)


def summarise(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    fars: tuple[float, ...] = REPORT_FARS,
) -> VerificationSummary:
    roc = roc_curve(scores, labels)
    rate, eer_t = eer(roc)
    best_t, best_acc = best_threshold(scores, labels)
    labels = np.asarray(labels, dtype=bool)
    return VerificationSummary(
        ten_fold=ten_fold_accuracy(scores, labels, folds),
        roc=roc,
        auc=auc(roc),
        eer=rate,
        eer_threshold=eer_t,
        best_threshold=best_t,
        best_accuracy=best_acc,
        tar_at_far=tuple(tar_at_far(roc, far) for far in fars),
        genuine_scores=np.asarray(scores)[labels],
        impostor_scores=np.asarray(scores)[~labels],
    )


def report_dict(summary: VerificationSummary, **context: Any) -> dict[str, Any]:
    """The JSON report: run context first (model, data, timing...), then the figures."""
    tf = summary.ten_fold
    return {
        **context,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "metric": "cosine",
        "pairs": {"genuine": summary.roc.n_pos, "impostor": summary.roc.n_neg},
        "accuracy": {
            "mean": tf.mean,
            "std": tf.std,
            "sem": tf.sem,
            "folds": [
                {
                    "fold": r.fold + 1,
                    "accuracy": r.accuracy,
                    "threshold": r.threshold,
                    "train_accuracy": r.train_accuracy,
                    "pairs": r.pairs,
                }
                for r in tf.folds
            ],
        },
        "auc": summary.auc,
        "eer": {"rate": summary.eer, "threshold": summary.eer_threshold},
        "best_threshold": {"threshold": summary.best_threshold, "accuracy": summary.best_accuracy},
        "tar_at_far": [
            {
                "far": p.far,
                "tar": p.tar if p.resolvable else None,
                "threshold": p.threshold if p.resolvable else None,
                "far_measured": p.far_measured,
                "resolvable": p.resolvable,
            }
            for p in summary.tar_at_far
        ],
        "scores": {
            "genuine": _describe(summary.genuine_scores),
            "impostor": _describe(summary.impostor_scores),
        },
    }


# Percentiles of each score distribution that the report gives: the similarity scale users
# read thresholds against ("p01" is the 1st percentile, "p001" the 0.1th).
_PERCENTILES = {"min": 0.0, "p001": 0.001, "p01": 0.01, "p05": 0.05, "median": 0.5,
                "p95": 0.95, "p99": 0.99, "p999": 0.999, "max": 1.0}


def _describe(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, list(_PERCENTILES.values()))
    return {"mean": float(x.mean()), **{k: float(v) for k, v in zip(_PERCENTILES, q,
                                                                     strict=True)}}


def _folds_label(folds: int) -> str:
    """"ten-fold" only when it was: a ``--limit-folds 2`` run must not read as the protocol."""
    return "ten-fold" if folds == 10 else f"{folds}-fold"


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def write_markdown(report: dict[str, Any], path: Path) -> Path:
    acc = report["accuracy"]
    lines = [
        f"# LFW verification: {report.get('model', '?')}"
        f"{' + flip' if report.get('flip') else ''}",
        "",
        f"{report.get('dataset', '')}: {len(acc['folds'])} folds, "
        f"{report['pairs']['genuine']} genuine + {report['pairs']['impostor']} impostor pairs, "
        f"{report.get('images', {}).get('count', '?')} images; metric: cosine similarity "
        "(accept iff similarity >= threshold).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| accuracy ({_folds_label(len(acc['folds']))}, mean ± std) | "
        f"{100 * acc['mean']:.2f}% ± {100 * acc['std']:.2f}"
        f" (standard error {100 * acc['sem']:.2f}) |",
        f"| ROC AUC | {report['auc']:.5f} |",
        f"| EER | {100 * report['eer']['rate']:.2f}% "
        f"(threshold {report['eer']['threshold']:.4f}) |",
    ]
    for p in report["tar_at_far"]:
        if p["resolvable"]:
            lines.append(f"| TAR @ FAR={p['far']:g} | {100 * p['tar']:.2f}% "
                         f"(threshold {p['threshold']:.4f}, "
                         f"measured FAR {p['far_measured']:.2g}) |")
        else:
            lines.append(f"| TAR @ FAR={p['far']:g} | not resolvable with "
                         f"{report['pairs']['impostor']} impostor pairs |")
    for kind in ("genuine", "impostor"):
        d = report.get("scores", {}).get(kind)
        if d and "p05" in d:
            lines.append(
                f"| {kind} similarity: min / p1 / p5 / median / p95 / p99 / max | "
                + " / ".join(f"{d[k]:.3f}" for k in
                             ("min", "p01", "p05", "median", "p95", "p99", "max")) + " |")
    best = report["best_threshold"]
    lines.append(f"| best threshold (all pairs) | {best['threshold']:.4f} "
                 f"(accuracy {100 * best['accuracy']:.2f}%) |")
    images = report.get("images", {})
    if images:
        lines.append(f"| centre-crop fallbacks (no face found) | {images.get('fallbacks', 0)} |")
        lines.append(f"| images with more than one face | {images.get('multiple_faces', 0)} |")
    timing = report.get("timing", {})
    if timing:
        lines.append(f"| wall time | {timing.get('total_s', 0):.0f} s "
                     f"({timing.get('detected', 0)} images detected, "
                     f"{timing.get('embedded', 0)} embedded, "
                     f"{timing.get('cached', 0)} entirely from the cache) |")
    lines += ["", "| fold | threshold | accuracy |", "|---|---|---|"]
    lines += [f"| {f['fold']} | {f['threshold']:.4f} | {100 * f['accuracy']:.2f}% |"
              for f in acc["folds"]]
    fallbacks = images.get("fallback_images") or []
    if fallbacks:
        lines += ["", "Images evaluated from the centre-crop fallback:", ""]
        lines += [f"- `{p}`" for p in fallbacks]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_roc(summary: VerificationSummary, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roc = summary.roc
    floor = 0.5 / roc.n_neg  # where FAR = 0 is drawn: half an impostor pair below the first step
    fpr = np.maximum(roc.fpr, floor)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    try:
        ax.step(fpr, roc.tpr, where="post", lw=1.5, label=f"ROC (AUC {summary.auc:.4f})")
        for p in summary.tar_at_far:
            if p.resolvable:
                ax.plot(max(p.far_measured, floor), p.tar, "o", ms=6,
                        label=f"FAR≤{p.far:g}: TAR {100 * p.tar:.2f}% @ {p.threshold:.3f}")
        ax.plot(max(summary.eer, floor), 1 - summary.eer, "s", ms=6,
                label=f"EER {100 * summary.eer:.2f}% @ {summary.eer_threshold:.3f}")
        # The accuracy-optimal threshold's own (FAR, TAR).
        far_b = float(np.mean(summary.impostor_scores >= summary.best_threshold))
        tar_b = float(np.mean(summary.genuine_scores >= summary.best_threshold))
        ax.plot(max(far_b, floor), tar_b, "^", ms=6,
                label=f"best accuracy @ {summary.best_threshold:.3f}")
        ax.set_xscale("log")
        ax.set_xlim(floor / 1.5, 1.0)
        low = float(roc.tpr[roc.fpr == 0].max())  # the leftmost visible point
        ax.set_ylim(max(0.0, min(low, tar_b) - 0.02), 1.001)
        ax.set_xlabel(f"false accept rate (log; FAR = 0 drawn at {floor:.1g})")
        ax.set_ylabel("true accept rate")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path

"""Pipeline speed: our PyTorch port vs dlib (dlib-bin) on the same inputs, in one run.

Measures per-face embedding time at batch 1, 8 and 32 (the same aligned chips go to both),
detection time on a 640x480 and a 1920x1080 photo, and peak RSS. Prints a table and writes
JSON to benchmarks/results/bench_pipeline.json. Ratios matter more than absolute times on a
shared machine: both sides run interleaved in one process.

    .venv/bin/python benchmarks/bench_pipeline.py [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.imageio import decode_image  # noqa: E402
from models.pipeline import FacePipeline  # noqa: E402
from models.weights import dlib_model_path  # noqa: E402

SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _paired(ours, theirs, repeats: int, theirs_repeats: int | None = None) -> tuple[float, float]:
    """Median wall times of ``ours()`` and ``theirs()``, runs interleaved after a warm-up each.

    Alternating the two sides means a burst of load from another process on this shared
    machine slows both, so the ratio stays meaningful even when absolute times are noisy.
    ``theirs_repeats`` (default ``repeats``) caps the reference's runs: dlib on the CPU beside
    a GPU would otherwise take most of a short GPU lease.
    """
    theirs_repeats = repeats if theirs_repeats is None else min(repeats, theirs_repeats)
    ours()
    if theirs_repeats == repeats:  # a capped reference is timed cold: dlib has nothing to warm
        theirs()
    a: list[float] = []
    b: list[float] = []
    for i in range(repeats):
        for fn, out in ((ours, a), (theirs, b)):
            if out is b and i >= theirs_repeats:
                continue
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def _progress(row: dict) -> None:
    """One line per finished cell, at once: a run cut off by a time limit still shows them."""
    print(f"  {row['stage']} {row['input']}: ours {row['ours_ms']:.2f} ms, "
          f"dlib {row['dlib_ms']:.2f} ms", flush=True)


def _photos() -> dict[str, np.ndarray]:
    """A 640x480 and a 1920x1080 photo: real ones from shared data, else the astronaut."""
    from PIL import Image

    def resized(img: np.ndarray, w: int, h: int) -> np.ndarray:
        return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))

    src = SHARED / "people" / "misc" / "obama-1080p.jpg"
    if src.is_file():
        base = decode_image(src.read_bytes())
    else:
        from skimage import data

        base = data.astronaut()
    return {"640x480": resized(base, 640, 480), "1920x1080": resized(base, 1920, 1080)}


def _chips(pipeline: FacePipeline, n: int) -> np.ndarray:
    """``n`` real aligned chips (LFW faces when available), cycled if fewer are found."""
    chips: list[np.ndarray] = []
    lfw = SHARED / "lfw" / "lfw-deepfunneled"
    paths = sorted(lfw.glob("*/*_0001.jpg"))[: n * 2] if lfw.is_dir() else []
    for p in paths:
        img = decode_image(p.read_bytes())
        faces = pipeline.detect(img)[:1]
        if faces:
            chips.append(pipeline.align(img, faces)[0])
        if len(chips) >= n:
            break
    if not chips:
        from skimage import data

        img = data.astronaut()
        chips.append(pipeline.align(img, pipeline.detect(img)[:1])[0])
    while len(chips) < n:
        chips.append(chips[len(chips) % max(1, len(chips))])
    return np.stack(chips[:n])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--gpu-batch", type=int, default=128, help="extra batch size on CUDA")
    ap.add_argument("--dlib-repeats", type=int, default=None,
                    help="timed runs of dlib, the reference, per cell (default: --repeats)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    import dlib

    pipeline = FacePipeline(device=args.device)
    dlib_embedder = dlib.face_recognition_model_v1(str(dlib_model_path("embedder")))
    dlib_detector = dlib.cnn_face_detection_model_v1(str(dlib_model_path("detector")))

    rows: list[dict] = []
    chips = _chips(pipeline, 32)
    batches = [1, 8, 32] + ([args.gpu_batch] if pipeline.device.type == "cuda" else [])
    for b in batches:
        batch = np.stack([chips[i % len(chips)] for i in range(b)])
        chip_list = [np.ascontiguousarray(c) for c in batch]
        ours, ref = _paired(
            lambda batch=batch: pipeline.embed_chips(batch),
            lambda chip_list=chip_list: dlib_embedder.compute_face_descriptor(chip_list),
            args.repeats,
            args.dlib_repeats,
        )
        ours, ref = ours / b, ref / b
        rows.append(
            {"stage": "embed", "input": f"batch {b}", "ours_ms": ours * 1e3,
             "dlib_ms": ref * 1e3, "speedup": ref / ours, "ours_per_s": 1 / ours}
        )
        _progress(rows[-1])
    rss_after_embed = _peak_rss_mib()

    for name, photo in _photos().items():
        ours, ref = _paired(
            lambda photo=photo: pipeline.detector.detect(photo),
            lambda photo=photo: dlib_detector(photo, 0),
            max(1, args.repeats // 2),
            args.dlib_repeats,
        )
        rows.append(
            {"stage": "detect", "input": name, "ours_ms": ours * 1e3, "dlib_ms": ref * 1e3,
             "speedup": ref / ours, "ours_per_s": 1 / ours}
        )
        _progress(rows[-1])

    print(f"\nfaceserve pipeline benchmark — device {pipeline.device}, torch threads "
          f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"{'stage':8s} {'input':12s} {'ours ms':>10s} {'dlib ms':>10s} {'speedup':>8s} "
          f"{'ours /s':>9s}")
    for r in rows:
        unit = "per face" if r["stage"] == "embed" else "per photo"
        print(f"{r['stage']:8s} {r['input']:12s} {r['ours_ms']:10.2f} {r['dlib_ms']:10.2f} "
              f"{r['speedup']:7.1f}x {r['ours_per_s']:9.1f}  ({unit})")
    peak = _peak_rss_mib()
    print(f"peak RSS: {rss_after_embed:.0f} MiB after embedding, {peak:.0f} MiB at the end "
          "(both libraries loaded in this process)")

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "device": str(pipeline.device),
        "torch": torch.__version__,
        "dlib": dlib.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "peak_rss_mib": peak,
        "peak_rss_after_embed_mib": rss_after_embed,
    }
    path = args.out / f"bench_pipeline_{pipeline.device.type}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the small-image retry should stop (``FACESERVE_SMALL_IMAGE_RETRY_PX``).

1. Found. Real LFW faces are cut around their detector box with a margin of ``pad`` x the box
   width on every side (0.35: a phone app's tight crop, face ~59% of the side; 0.75: 40%;
   1.25: a loose one, 29%) and resized to sides from 100 to 400 px. For each, the share
   found by the detector at ``upsample=0`` alone, and with one retry at ``upsample=1``: the
   retry limit must cover the sizes where crops are still missed.
2. Cost. What the retry adds to an image *without* a face of each side (noise: the detector
   finds nothing, so the retry always runs): the price every faceless upload under the limit
   pays. Median of repeats.

Prints two tables and writes JSON to benchmarks/results/bench_retry_limit.json.

    .venv/bin/python benchmarks/bench_retry_limit.py [--images 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.evaluation.crops import crop_face  # noqa: E402
from models.imageio import decode_image  # noqa: E402
from models.pipeline import FacePipeline  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PADS = (0.35, 0.75, 1.25)
SIDES = (100, 150, 200, 250, 300, 400)
COST_SIDES = (100, 150, 200, 250, 300, 400, 600)


def found_table(pipeline: FacePipeline, n: int) -> list[dict]:
    root = SHARED / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        raise SystemExit(f"LFW not found at {root}")
    paths = sorted(root.glob("*/*.jpg"))[:: max(1, 13233 // n)][:n]
    faces = []
    for path in tqdm(paths, desc="detecting LFW faces", unit="img"):
        image = decode_image(path.read_bytes())
        found = pipeline.detector.detect(image)
        if found:
            box = min((b for b, _ in found), key=lambda b: abs(b.left + b.right - 250))
            faces.append((image, box))
    rows = []
    with tqdm(total=len(PADS) * len(SIDES) * len(faces), desc="crops", unit="crop") as bar:
        for pad in PADS:
            for side in SIDES:
                plain = retried = 0
                for image, box in faces:
                    crop = decode_image(crop_face(image, box, side, pad=pad))
                    if pipeline.detector.detect(crop, upsample=0):
                        plain += 1
                    elif pipeline.detector.detect(crop, upsample=1):
                        retried += 1
                    bar.update(1)
                rows.append({"pad": pad, "face_share": round(1 / (1 + 2 * pad), 2),
                             "side": side, "face_px": round(side / (1 + 2 * pad)),
                             "crops": len(faces), "found_upsample0": plain / len(faces),
                             "found_with_retry": (plain + retried) / len(faces)})
    return rows


def cost_table(pipeline: FacePipeline, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for side in COST_SIDES:
        noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        times = {}
        for up in (0, 1):
            pipeline.detector.detect(noise, upsample=up)  # warm up
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                pipeline.detector.detect(noise, upsample=up)
                samples.append(time.perf_counter() - start)
            times[up] = float(np.median(samples))
        rows.append({"side": side, "detect_ms": round(1000 * times[0], 1),
                     "retry_adds_ms": round(1000 * times[1], 1)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100, help="LFW images (evenly spaced)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats per side")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipeline = FacePipeline(device=args.device)

    found = found_table(pipeline, args.images)
    print("\n| face share of the crop | side (face px) | found at upsample 0 | with the retry |")
    print("|---|---|---|---|")
    for r in found:
        print(f"| {r['face_share']:.2f} | {r['side']} ({r['face_px']}) "
              f"| {100 * r['found_upsample0']:.0f}% | {100 * r['found_with_retry']:.0f}% |")
    cost = cost_table(pipeline, args.repeats)
    print("\n| side of a faceless image | detection (ms) | the retry adds (ms) |")
    print("|---|---|---|")
    for r in cost:
        print(f"| {r['side']} | {r['detect_ms']} | {r['retry_adds_ms']} |")

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "bench_retry_limit.json"
    out.write_text(json.dumps({
        "found": found, "cost": cost, "device": args.device, "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
    }, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

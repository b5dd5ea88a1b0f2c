"""The smallest face each detection setting finds, measured on real faces.

LFW faces (the first photo of every 400th person) are scaled so that the detector's own box
on them has a given side, pasted at the centre of a 640x480 grey canvas (large enough that
the small-image retry never runs), and detected with each setting; a face counts as found
when a detection's box holds its centre. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_smallest_face.py [--sides 140,110,90,80,70,60,50,40,35,30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"

from models.imageio import decode_image  # noqa: E402
from models.pipeline import FacePipeline  # noqa: E402

SETTINGS = {
    "upsample=0 (default)": {"upsample": 0},
    "upsample=1": {"upsample": 1},
    "min_face_px=120": {"min_face_px": 120},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", default="140,110,90,80,70,60,50,40,35,30",
                    help="box sides to scale the faces to, px")
    ap.add_argument("--faces", type=int, default=12, help="LFW faces to use")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    lfw = SHARED / "lfw" / "lfw-deepfunneled"
    if not lfw.is_dir():
        print(f"no LFW images in {lfw}", file=sys.stderr)
        return 2
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[::400][: args.faces]
    photos = [decode_image((p / f"{p.name}_0001.jpg").read_bytes()) for p in people]
    pipes = {name: FacePipeline(device=args.device, **kw) for name, kw in SETTINGS.items()}
    reference = pipes["upsample=0 (default)"]
    boxes = []
    for photo in photos:
        b = reference.detect(photo)[0].box  # every one of these photos has a face
        boxes.append((b.left, b.top, b.right + 1, b.bottom + 1))
    sides = [int(s) for s in args.sides.split(",")]
    found: dict[str, dict[int, int]] = {}
    for name, pipe in pipes.items():
        for side in sides:
            hits = 0
            for photo, (x0, y0, x1, y1) in zip(photos, boxes, strict=True):
                scale = side / (x1 - x0)
                h, w = photo.shape[:2]
                small = np.asarray(Image.fromarray(photo).resize(
                    (max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
                canvas = np.full((480, 640, 3), 128, np.uint8)
                top, left = (480 - small.shape[0]) // 2, (640 - small.shape[1]) // 2
                canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
                cx, cy = left + (x0 + x1) / 2 * scale, top + (y0 + y1) / 2 * scale
                hits += any(f.box.left <= cx <= f.box.right + 1 and f.box.top <= cy
                            <= f.box.bottom + 1 for f in pipe.detect(canvas))
            found.setdefault(name, {})[side] = hits
            print(f"{name:22} box {side:4d} px: {hits}/{len(photos)}", flush=True)
    print(f"\n{'setting':22} " + " ".join(f"{s:>6d}" for s in sides))
    for name, row in found.items():
        print(f"{name:22} " + " ".join(f"{row[s]:>3d}/{len(photos):<2d}" for s in sides))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "bench_smallest_face.json"
    out.write_text(json.dumps({"faces": len(photos), "sides": sides, "found": found},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

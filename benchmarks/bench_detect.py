"""Detection speed and reach: where a photo's time goes, and what ``min_face_px`` buys.

One run compares, on the same photos and in one process (runs interleaved, so load from
other processes slows every side alike):

* **before**: the detector as it was (``git show BASE:models/detector.py``: contiguous
  convolutions, float shrink) with a full-size decode;
* **now** at the defaults, and with ``min_face_px`` 120 and 200 (reduced JPEG decode
  included); on CPUs with bf16 units the detector screens the pyramid in bf16 and rescores
  the windows near the threshold in float32 (``models/detector_screening.py``).

The time is that of ``POST /embed`` without HTTP: decode, detect, landmarks, align, embed.
Also printed: the 640x480 photo's stages, the network's GFLOP and GFLOP/s against this CPU's
matmul rate, whether screening gives the float32 detector's boxes on the group photos and LFW
(and the largest bf16 score error it must absorb), and recall of the hand-labelled faces
(``../shared/data/detect``) and of LFW at each ``min_face_px``. Table on stdout, JSON in
benchmarks/results/bench_detect.json.

    .venv/bin/python benchmarks/bench_detect.py [--repeats 7] [--base a8168be] [--lfw 300]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.boxes import box_iou, dlib_nms  # noqa: E402
from models.detector import FaceDetector, build_pyramid, scores_to_boxes  # noqa: E402
from models.device import resolve_device  # noqa: E402
from models.imageio import decode_image, decode_reduced  # noqa: E402
from models.pipeline import FacePipeline  # noqa: E402

SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
MIN_FACES = (None, 120, 200)


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photos() -> dict[str, bytes]:
    """The issue's sizes, cut from the shared photos: one face at 640x480, three at 1280 and
    2000 px, and a 4000x3000 'phone JPEG' (faces of 300+ px)."""
    one = Image.open(SHARED / "people" / "misc" / "obama-480p.jpg").convert("RGB")
    left = (one.width - 640) // 2
    group = Image.open(SHARED / "people" / "test" / "obama_and_biden.jpg").convert("RGB")
    return {
        "640x480, 1 face": _jpeg(one.crop((left, 0, left + 640, 480))),
        "1280x914, 2 faces": _jpeg(group.resize((1280, 914), Image.LANCZOS)),
        "2000x1428, 2 faces": _jpeg(group),
        "4000x3000, 2 faces": _jpeg(group.resize((4000, 3000), Image.LANCZOS)),
    }


def old_detector(base: str, device: torch.device):
    """The detector module as committed at ``base``, loaded beside today's."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{base}:models/detector.py"],
        capture_output=True, text=True, check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "detector_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("detector_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["detector_before"] = module
    spec.loader.exec_module(module)
    return module.load_detector(device=device)


def embed_path(pipeline: FacePipeline, data: bytes, min_face_px: int | None, reduced: bool):
    """What POST /embed runs for one photo, without HTTP; returns the faces (client px)."""
    if reduced:
        decoded = decode_reduced(
            data, reduction=lambda w, h: pipeline.decode_reduction(w, h, min_face_px)
        )
        image, (sx, sy) = decoded.image, decoded.scale
    else:
        image, sx, sy = decode_image(data), 1.0, 1.0
    local = None if min_face_px is None else int(min_face_px / max(sx, sy))
    faces = pipeline.detect(image, local) if local else pipeline.detect(image)
    chips = pipeline.align(image, faces)
    if len(chips):
        pipeline.embed_chips(chips)
    return [f.scaled(sx, sy) for f in faces], image.shape


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def conv_gflop(net: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Multiply-adds x 2 of every convolution for an input of ``shape``."""
    total = 0.0
    x = torch.zeros(shape, device=next(net.parameters()).device)
    for layer in [*net.features, net.score]:
        if isinstance(layer, torch.nn.Conv2d):
            y = layer(x)
            total += 2 * y.numel() * layer.in_channels * layer.kernel_size[0] ** 2
            x = y
        else:
            x = layer(x)
    return total / 1e9


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ms, _ = timed(lambda: a @ b, 5)
    return 2 * 2048**3 / (ms / 1000) / 1e9


def stages(pipeline: FacePipeline, data: bytes, repeats: int) -> dict[str, float]:
    det = pipeline.detector
    image = decode_image(data)
    t = torch.from_numpy(np.array(image)).to(det.device)
    tensor, _ = build_pyramid(t, det._avg)
    out = {"decode": timed(lambda: decode_image(data), repeats)[0]}
    out["pyramid"] = timed(lambda: build_pyramid(t, det._avg), repeats)[0]
    cl = tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out["network float32"] = timed(lambda: det.net(cl), repeats)[0]
        if det.screener is not None:
            scorer = det.screener
            low = cl.to(torch.bfloat16)
            out["network bf16 screen"] = timed(lambda: scorer._bf16(low), repeats)[0]
            out["screen + float32 rescoring"] = timed(lambda: scorer.scores(cl, 0.0), repeats)[0]
    out["whole detector"] = timed(lambda: det.detect(image), repeats)[0]
    scores, rects = det._thresholded(t, 0.0)
    scores = scores.float().cpu()
    hits = (scores > 0).nonzero().numpy()
    out["boxes + NMS"] = timed(lambda: dlib_nms(
        torch.from_numpy(scores_to_boxes(hits[:, 0], hits[:, 1], rects)),
        scores[scores > 0], det.config.nms_iou, det.config.nms_percent_covered), repeats)[0]
    faces = pipeline.detect(image)
    boxes = [f.box for f in faces]
    out["landmarks"] = timed(lambda: pipeline.landmarker.predict(image, boxes), repeats)[0]
    out["align"] = timed(lambda: pipeline.align(image, faces), repeats)[0]
    chips = pipeline.align(image, faces)
    out["embed"] = timed(lambda: pipeline.embed_chips(chips), repeats)[0]
    gflop = conv_gflop(det.net.float(), tuple(tensor.shape))
    out["network GFLOP"] = gflop
    out["network GFLOP/s (float32)"] = gflop / (out["network float32"] / 1000)
    return out


def bfloat16(pipeline: FacePipeline, lfw: int, repeats: int) -> dict:
    """bf16 on the detector: plain autocast (tried, not kept: other boxes) against screening
    (kept): boxes and confidences against float32 on the group photos and ``lfw`` LFW
    photos, and the largest |bf16 - float32| score, which the screen's margin must exceed."""
    det = pipeline.detector
    if det.device.type != "cpu":
        return {}
    plain = FaceDetector(det.net, det.config, det.device, screening=False)
    screened = FaceDetector(det.net, det.config, det.device, screening=True)
    scorer = screened.screener
    assert scorer is not None
    image = torch.from_numpy(decode_image(photos()["640x480, 1 face"]))
    tensor = build_pyramid(image, det._avg)[0]
    with torch.inference_mode():
        fp32_ms = timed(lambda: det.net(tensor), repeats)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_ms = timed(lambda: det.net(tensor), repeats)[0]
        screen_ms = timed(lambda: scorer.scores(tensor, 0.0), repeats)[0]
    paths = sorted((SHARED / "detect").glob("*.jpg"))
    paths += sorted((SHARED / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))[::13][:lfw]
    out = {"network_fp32_ms": fp32_ms, "network_autocast_bf16_ms": autocast_ms,
           "screened_ms": screen_ms, "photos": len(paths), "autocast_same_boxes": 0,
           "autocast_worst_iou": 1.0, "screened_same_boxes": 0, "screened_worst_conf_diff": 0.0,
           "worst_bf16_score_error": 0.0, "margin": scorer.margin}
    for path in paths:
        img = decode_image(path.read_bytes())
        a = plain.detect(img, max_side=pipeline.max_side)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = plain.detect(img, max_side=pipeline.max_side)
        c = screened.detect(img, max_side=pipeline.max_side)
        ious = [max((_iou(x.as_tuple(), y.as_tuple()) for y, _ in b), default=0) for x, _ in a]
        out["autocast_worst_iou"] = min([out["autocast_worst_iou"], *ious])
        out["autocast_same_boxes"] += len(a) == len(b) and all(i >= 0.99 for i in ious)
        same = [x for x, _ in a] == [x for x, _ in c]
        out["screened_same_boxes"] += same
        if same and a:
            diff = max(abs(x - y) for (_, x), (_, y) in zip(a, c, strict=True))
            out["screened_worst_conf_diff"] = max(out["screened_worst_conf_diff"], diff)
        if max(img.shape) <= pipeline.max_side:
            t = build_pyramid(torch.from_numpy(np.array(img)), det._avg)[0]
            with torch.inference_mode():
                err = (det.net(t) - scorer._bf16(t.to(torch.bfloat16)).float()).abs().max()
            out["worst_bf16_score_error"] = max(out["worst_bf16_score_error"], float(err))
    return out


def _labels() -> dict[str, list[tuple[int, int, int, int]]]:
    out: dict[str, list[tuple[int, int, int, int]]] = {}
    for xml in ("training.xml", "testing.xml"):
        for image in ET.parse(SHARED / "detect" / xml).getroot().iter("image"):
            boxes = out.setdefault(image.get("file"), [])
            for b in image.iter("box"):
                if b.get("ignore") != "1":
                    x, y = int(b.get("left")), int(b.get("top"))
                    boxes.append((x, y, x + int(b.get("width")) - 1, y + int(b.get("height")) - 1))
    return out


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return float(box_iou(torch.tensor([a]), torch.tensor([b]))[0, 0])

def recall(pipeline: FacePipeline, lfw: int) -> list[dict]:
    """Labelled faces found (IoU >= 0.5) and LFW photos with a face, per ``min_face_px``."""
    labels = _labels()
    sizes = sorted((b[2] - b[0] + 1) for boxes in labels.values() for b in boxes)
    images = {name: decode_image((SHARED / "detect" / name).read_bytes()) for name in labels}
    lfw_files = sorted((SHARED / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))[:: 13][:lfw]
    lfw_images = [decode_image(p.read_bytes()) for p in lfw_files]
    rows = []
    for m in (None, 40, 100, 120, 160, 200):
        found = total = 0
        for name, truth in labels.items():
            dets = [f.box.as_tuple() for f in pipeline.detect(images[name], m)]
            total += len(truth)
            found += sum(max((_iou(t, d) for d in dets), default=0) >= 0.5 for t in truth)
        lfw_found = sum(bool(pipeline.detect(im, m)) for im in lfw_images)
        rows.append({"min_face_px": m, "labelled_found": found, "labelled": total,
                     "lfw_found": lfw_found, "lfw": len(lfw_images)})
    return [{"labelled_box_widths": {"min": sizes[0], "median": sizes[len(sizes) // 2],
                                     "max": sizes[-1], "under_80": sum(s < 80 for s in sizes)}},
            *rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per cell (median)")
    ap.add_argument("--base", default="a8168be", help="git revision of the 'before' detector")
    ap.add_argument("--lfw", type=int, default=300,
                    help="LFW photos in the recall check; 0 skips the check (it is the same on "
                    "every device)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    device = resolve_device(args.device)
    now = FacePipeline(device=device)
    try:
        before: FacePipeline | None = FacePipeline(device=device)
        before.detector = old_detector(args.base, device)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:  # no git history here
        print(f"no 'before' column: {args.base}:models/detector.py unavailable ({exc})")
        before = None
    shots = photos()

    speed = []
    for name, data in shots.items():
        row = {"photo": name}
        cells = [("now", now, None, True)]
        if before is not None:
            cells.insert(0, ("before", before, None, False))
        cells += [(f"now min_face_px={m}", now, m, True) for m in MIN_FACES if m]
        for label, pipe, m, reduced in cells:
            faces, shape = embed_path(pipe, data, m, reduced)
            p50, worst = timed(lambda p=pipe, d=data, m=m, r=reduced: embed_path(p, d, m, r),
                               args.repeats)
            row[label] = {"p50_ms": p50, "max_ms": worst, "faces": len(faces),
                          "decoded": f"{shape[1]}x{shape[0]}",
                          "boxes": [f.box.as_tuple() for f in faces]}
        speed.append(row)

    breakdown = stages(now, shots["640x480, 1 face"], args.repeats)
    breakdown["CPU matmul GFLOP/s (2048^2 float32)"] = matmul_gflops()
    bf16 = bfloat16(now, args.lfw, args.repeats)
    reach = recall(now, args.lfw) if args.lfw else []

    labels = [k for k in ("before", "now") if k in speed[0]]
    labels += [f"now min_face_px={m}" for m in MIN_FACES if m]
    print(f"\nPOST /embed path without HTTP, median ms (faces found), {torch.get_num_threads()} "
          f"threads, {platform.processor() or platform.machine()}")
    print("| photo | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for row in speed:
        cells = [f"{row[k]['p50_ms']:.0f} ({row[k]['faces']})" for k in labels]
        print(f"| {row['photo']} | " + " | ".join(cells) + " |")
    if bf16:
        n = bf16["photos"]
        print(f"\nbf16 on the detector ({n} photos: group photos + LFW), 640x480 pyramid:")
        print("| way | network ms | same boxes as float32 | worst |")
        print("|---|---:|---:|---|")
        print(f"| float32 | {bf16['network_fp32_ms']:.1f} | {n}/{n} | |")
        print(f"| bf16 autocast (not kept) | {bf16['network_autocast_bf16_ms']:.1f} | "
              f"{bf16['autocast_same_boxes']}/{n} | IoU {bf16['autocast_worst_iou']:.2f} |")
        print(f"| bf16 screen + float32 rescoring (kept) | {bf16['screened_ms']:.1f} | "
              f"{bf16['screened_same_boxes']}/{n} | confidence "
              f"{bf16['screened_worst_conf_diff']:.1e} |")
        print(f"largest bf16 score error {bf16['worst_bf16_score_error']:.3f} "
              f"(the screen's margin: {bf16['margin']})")
    print("\nStages of the 640x480 photo (ms unless stated)")
    for k, v in breakdown.items():
        print(f"| {k} | {v:.1f} |")
    if reach:
        print("\nReach: labelled faces found (IoU >= 0.5) and LFW photos with a face")
        print(f"labelled box widths: {reach[0]['labelled_box_widths']}")
        print("| min_face_px | labelled found | LFW with a face |")
        print("|---|---:|---:|")
    for r in reach[1:]:
        m = r["min_face_px"] or "default (80)"
        print(f"| {m} | {r['labelled_found']}/{r['labelled']} | {r['lfw_found']}/{r['lfw']} |")

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "bench_detect.json"
    out.write_text(json.dumps({"speed": speed, "stages": breakdown, "reach": reach,
                               "bfloat16": bf16,
                               "threads": torch.get_num_threads(), "base": args.base},
                              indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Re-embedding: what storing chips as JPEG costs in embedding fidelity, and how fast a gallery
moves to another model.

1. Fidelity. Real LFW faces are aligned by the pipeline; each chip is embedded as it is and
   after a JPEG round trip at several qualities. The cosine between the two embeddings says
   how far a re-embedded gallery drifts from one embedded from the original photos (with the
   same weights; another model drifts by about as much).
2. Speed. The chips (JPEG 95, as the service stores them) are enrolled into a temporary
   SQLite gallery with dlib's model, then ``reembed`` (service/gallery) moves the gallery to an
   exported copy of the same weights under another version: faces per second, end to end
   (read, decode, embed, write, commit per batch), beside the bare embedding rate.

Prints two tables and writes JSON to benchmarks/results/bench_reembed.json.

    .venv/bin/python benchmarks/bench_reembed.py [--faces 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.imageio import decode_image  # noqa: E402
from models.pipeline import FacePipeline  # noqa: E402
from service.gallery.reembed import decode_chip  # noqa: E402
from service.inference.inference import encode_jpeg  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
QUALITIES = (75, 85, 92, 95, 98)


def _lfw_chips(pipeline: FacePipeline, n: int) -> np.ndarray:
    """The central face of the first ``n`` LFW images (sorted by name) that have one."""
    root = SHARED / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        raise SystemExit(f"LFW not found at {root}")
    chips = []
    paths = sorted(root.glob("*/*.jpg"))[:: max(1, 13233 // (2 * n))]
    with tqdm(total=n, desc="aligning LFW faces", unit="face") as bar:
        for path in paths:
            image = decode_image(path.read_bytes())
            faces = pipeline.detect(image)
            if not faces:
                continue
            h, w = image.shape[:2]
            face = min(faces, key=lambda f: abs((f.box.left + f.box.right) / 2 - w / 2)
                       + abs((f.box.top + f.box.bottom) / 2 - h / 2))
            chips.append(pipeline.align(image, [face])[0])
            bar.update(1)
            if len(chips) == n:
                break
    return np.stack(chips)


def fidelity(pipeline: FacePipeline, chips: np.ndarray) -> list[dict]:
    plain = pipeline.embed_chips(chips)
    rows = []
    for q in QUALITIES:
        blobs = [encode_jpeg(c, q) for c in chips]
        back = np.stack([decode_chip(b) for b in blobs])
        cos = np.einsum("ij,ij->i", plain, pipeline.embed_chips(back))
        rows.append({
            "quality": q,
            "chip_kib": round(float(np.mean([len(b) for b in blobs])) / 1024, 1),
            "cos_mean": round(float(cos.mean()), 6),
            "cos_p01": round(float(np.quantile(cos, 0.01)), 6),
            "cos_min": round(float(cos.min()), 6),
            "pixel_mae": round(float(np.abs(back.astype(int) - chips.astype(int)).mean()), 3),
        })
    return rows


def _dlib_copy(out: Path) -> Path:
    """dlib's weights exported under another version: the same vectors, another model."""
    from models.embedder import load_embedder
    from models.model_file import EXPORT_FORMAT, weights_hash, write_model_file

    tensors = {k: v.contiguous() for k, v in load_embedder("cpu", fold=False).state_dict().items()}
    manifest = {"format": EXPORT_FORMAT, "version": "bench-dlib-copy", "embedding_size": 128,
                "architecture": "dlib-resnet", "weights_sha256": weights_hash(tensors)}
    return write_model_file(tensors, manifest, out)


def speed(pipeline: FacePipeline, chips: np.ndarray, batch_size: int) -> dict:
    from service.gallery.gallery import Gallery
    from service.gallery.reembed import exclusive_store, reembed

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "gallery"
        vectors = pipeline.embed_chips(chips)
        gallery = Gallery.open(data_dir, pipeline.model_version)
        for i, (chip, v) in enumerate(zip(chips, vectors, strict=True)):
            gallery.enroll(f"s{i}", v, bbox=(0, 0, 1, 1), landmarks=[[0.0, 0.0]] * 5,
                           detection_confidence=1.0, image_sha256=f"{i:064x}",
                           chip_jpeg=encode_jpeg(chip))
        gallery.close()
        from models.embedding_model import load_embedding_model

        model = load_embedding_model(_dlib_copy(Path(tmp) / "copy.safetensors"),
                                     pipeline.device)
        t0 = time.perf_counter()
        model.embed_chips(chips, batch_size=batch_size)
        bare = time.perf_counter() - t0
        with exclusive_store(data_dir, None) as store:
            result = reembed(store, model.embed_chips, model.version, batch_size=batch_size,
                             snapshot_dir=data_dir)
        db_mib = (data_dir / "gallery.sqlite3").stat().st_size / 2**20
    return {
        "faces": len(chips),
        "batch_size": batch_size,
        "reembed_s": round(result.seconds, 2),
        "reembed_faces_per_s": round(result.faces_per_s, 1),
        "embed_only_faces_per_s": round(len(chips) / bare, 1),
        "gallery_db_mib": round(db_mib, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bench_reembed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipeline = FacePipeline(device=args.device)
    chips = _lfw_chips(pipeline, args.faces)
    fid = fidelity(pipeline, chips)
    spd = speed(pipeline, chips, args.batch_size)

    print(f"\nJPEG round trip of {len(chips)} LFW chips, dlib-resnet-v1 embeddings "
          "(cosine of original vs decoded chip)\n")
    print("| quality | chip KiB | cos mean | cos 1st pct | cos min | pixel MAE |")
    print("|---|---|---|---|---|---|")
    for r in fid:
        print(f"| {r['quality']} | {r['chip_kib']} | {r['cos_mean']:.5f} | {r['cos_p01']:.5f} | "
              f"{r['cos_min']:.5f} | {r['pixel_mae']} |")
    print(f"\nre-embedding a {spd['faces']}-face SQLite gallery ({args.device}, "
          f"{args.threads} threads, batch {spd['batch_size']})\n")
    print("| faces | seconds | faces/s end to end | faces/s embedding only | db MiB |")
    print("|---|---|---|---|---|")
    print(f"| {spd['faces']} | {spd['reembed_s']} | {spd['reembed_faces_per_s']} | "
          f"{spd['embed_only_faces_per_s']} | {spd['gallery_db_mib']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": platform.platform(), "torch": torch.__version__, "device": args.device,
        "threads": args.threads, "fidelity": fid, "speed": spd,
    }, indent=2))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

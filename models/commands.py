"""``faceserve convert`` and ``faceserve embed``: the face pipeline from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from models.backends.options import add_detector_options

if TYPE_CHECKING:
    import numpy as np

    from models.faces import Face
    from models.pipeline import FacePipeline

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert the dlib models to PyTorch safetensors (done automatically on first use)",
        description=(
            "Read the three CC0 dlib model files installed by face_recognition_models, convert "
            "them to PyTorch weights and cache them as safetensors files named by the source "
            "file's SHA-256 (a changed source converts again). Run it at image build time so "
            "a container starts without converting."
        ),
    )
    p.add_argument("--cache-dir", type=Path, help="where converted weights go "
                   "(default: $FACESERVE_CACHE_DIR or ~/.cache/faceserve)")
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "embed",
        help="print the faces and 128-d embeddings of images as JSON",
        description=(
            "Run the full pipeline (decode, detect, 5-point landmarks, align, embed) on each "
            "image and print one JSON object per image: boxes (left, top, right, bottom; "
            "inclusive), detection confidence, landmarks and the L2-normalised embedding."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="image files (JPEG, PNG, WebP, BMP)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored face")
    p.add_argument("--upsample", type=int, default=0, help="upsample photos N times (small faces)")
    p.add_argument("--max-side", type=int, default=2048, help="shrink larger photos first")
    p.add_argument("--small-image-retry-px", type=int, default=300, metavar="PX",
                   help="detect images smaller than this again at upsample+1 when no face is "
                        "found (tightly cropped faces; default 300, 0: never)")
    p.add_argument("--face-crop", action="store_true",
                   help="each image is one cropped or aligned face: no search (an image that "
                        "is not a face gets an error record)")
    p.add_argument("--no-embedding", action="store_true", help="detect and landmark only")
    p.add_argument("--cache-dir", type=Path, help="converted weights cache "
                   "(default: $FACESERVE_CACHE_DIR or ~/.cache/faceserve)")
    p.add_argument("--model", default="dlib",
                   help="`dlib` (default), an exported .safetensors or an added ONNX model")
    add_detector_options(p)
    p.set_defaults(func=_embed)

    p = sub.add_parser(
        "calibrate",
        help="measure your cameras' strangers so identify thresholds hold their FPIR",
        description=(
            "Embed photos of people who will NOT be enrolled, taken with the deployment's own "
            "cameras, and write an impostor reference: where strangers' similarities lie in "
            "your population. `faceserve serve` reads DATA_DIR/impostor_reference.json (or "
            "FACESERVE_IMPOSTOR_REFERENCE) and computes identify thresholds from it instead of "
            "from LFW; the gallery's own statistics still adjust it. A sub-folder of DIR is one "
            "person (several photos each are fine); a file directly in DIR is one person. At "
            "least 20 people; a few hundred is better. Only statistics are written, no photo "
            "or embedding. Restart the service to use it."
        ),
    )
    p.add_argument("--strangers", type=Path, required=True, metavar="DIR",
                   help="folder of photos of people who will not be enrolled")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="write DATA_DIR/impostor_reference.json (default: $FACESERVE_DATA_DIR "
                        "or ./data)")
    p.add_argument("--out", type=Path, help="write here instead")
    p.add_argument("--model", default="dlib",
                   help="`dlib`, an exported .safetensors or an added ONNX model")
    add_detector_options(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_calibrate)


def _convert(args: argparse.Namespace) -> int:
    from models.detector import convert_dlib as convert_detector
    from models.embedder import convert_dlib as convert_embedder
    from models.landmarks import convert_dlib as convert_landmarks
    from models.weights import default_cache_dir, dlib_model_path, load_converted

    cache = args.cache_dir or default_cache_dir()
    for name, fn in (
        ("embedder", convert_embedder),
        ("detector", convert_detector),
        ("landmarks", convert_landmarks),
    ):
        start = time.perf_counter()
        source = dlib_model_path(name)
        tensors = load_converted(name, source, fn, cache)
        n = sum(t.numel() for t in tensors.values())
        print(f"{name:9s} {source.name:45s} {n:>10,d} values  {time.perf_counter() - start:5.1f}s")
    print(f"cache: {cache}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from models.imageio import ImageError, decode_image
    from models.pipeline import FacePipeline

    pipeline = FacePipeline(
        device=args.device,
        cache_dir=args.cache_dir,
        flip=args.flip,
        upsample=args.upsample,
        max_side=args.max_side,
        small_image_retry_px=args.small_image_retry_px,
        model=None if args.model == "dlib" else args.model,
        detector=args.detector,
        model_dir=args.model_dir,
    )
    status = 0
    for path in args.images:
        record: dict = {"image": str(path), "model": pipeline.model_version}
        try:
            image = decode_image(path.read_bytes())
        except (OSError, ImageError) as exc:
            record["error"] = str(exc)
            print(json.dumps(record))
            status = 1
            continue
        if args.face_crop:
            faces = pipeline.detect_face_crop(image)
            if not faces:
                record["error"] = "--face-crop: the image is not a face"
                print(json.dumps(record))
                status = 1
                continue
            if not args.no_embedding:
                faces = _embedded(pipeline, image, faces)
        else:
            faces = pipeline.detect(image) if args.no_embedding else pipeline.embed_image(image)
        record["faces"] = [_face_record(f) for f in faces]
        print(json.dumps(record))
    sys.stdout.flush()
    return status


def _face_record(face: Face) -> dict:
    """One face as ``faceserve embed`` prints it: the field names and shapes of the HTTP API
    (``bbox`` as an object with inclusive ``right``/``bottom``, ``detection_confidence``).
    ``box`` (a list) and ``confidence`` are the older names of the same values, kept for one
    release (README "API changes")."""
    left, top, right, bottom = (int(v) for v in face.box.as_tuple())
    confidence = round(float(face.confidence), 6)
    record: dict = {
        "bbox": {"left": left, "top": top, "right": right, "bottom": bottom},
        "detection_confidence": confidence,
        "landmarks": [[float(x), float(y)] for x, y in face.landmarks],
    }
    if face.embedding is not None:
        record["embedding"] = [float(v) for v in face.embedding]
    record["box"] = [left, top, right, bottom]  # deprecated: bbox
    record["confidence"] = confidence  # deprecated: detection_confidence
    return record


def _calibrate(args: argparse.Namespace) -> int:
    import os

    from models.pipeline import FacePipeline
    from models.stranger_cohort import cohort_photos, stranger_reference

    if not args.strangers.is_dir():
        raise SystemExit(f"faceserve calibrate: {args.strangers} is not a directory")
    photos = cohort_photos(args.strangers)
    if not photos:
        raise SystemExit(f"faceserve calibrate: no images under {args.strangers}")
    data_dir = args.data_dir or Path(os.environ.get("FACESERVE_DATA_DIR", "./data"))
    out = args.out or data_dir / "impostor_reference.json"
    pipeline = FacePipeline(device=None if args.device == "auto" else args.device,
                            model=None if args.model == "dlib" else args.model,
                            detector=args.detector, model_dir=args.model_dir)
    try:
        rule, counts = stranger_reference(
            pipeline, photos, source=f"strangers:{args.strangers.name}",
            progress=not args.no_progress)
    except ValueError as exc:
        raise SystemExit(f"faceserve calibrate: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rule.to_dict(), indent=2) + "\n", encoding="utf-8")
    ref = rule.reference
    print(f"{counts['used']} faces of {ref.subjects} people ({counts['no_face']} photos without "
          f"a face, {counts['unreadable']} unreadable): impostor similarity mean {ref.mean:.4f}, "
          f"std {ref.std:.4f} over {ref.pairs} pairs")
    print(f"written: {out} (restart the service to use it)")
    return 0


def _embedded(pipeline: FacePipeline, image: np.ndarray, faces: list[Face]) -> list[Face]:
    """``faces`` with their embeddings (``Face.embedding`` set)."""
    from dataclasses import replace

    vectors = pipeline.embed_chips(pipeline.align(image, faces))
    return [replace(f, embedding=v) for f, v in zip(faces, vectors, strict=True)]

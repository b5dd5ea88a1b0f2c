"""``faceserve eval lfw``: the LFW View-2 protocol, one command, reproducible figures;
``faceserve eval crops``: LFW faces cropped the way phone apps send them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.backends.options import add_detector_options

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure accuracy on a benchmark (LFW) and calibrate operating points",
        description="Measure verification accuracy of the full pipeline on a public benchmark.",
    )
    evals = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    evals.required = True
    q = evals.add_parser(
        "lfw",
        help="LFW View-2: ten-fold accuracy, ROC/AUC, EER, TAR@FAR, operating-point profile",
        description=(
            "Run every image of an LFW pairs file through the full pipeline (decode, detect, "
            "5-point landmarks, align, embed; a centre-crop fallback when no face is found) "
            "and score each pair by cosine similarity. Reports ten-fold accuracy (each fold's "
            "threshold chosen on the other nine), ROC AUC, EER, TAR at FAR 1e-2 and 1e-3 and the "
            "best threshold; writes report.json, report.md, roc.png and the operating-point "
            "profile (thresholds for FAR 1e-2, 1e-3, 1e-4 where the impostor pairs can resolve "
            "them) that the service reads for FACESERVE_THRESHOLD=far=<rate>. Embeddings are "
            "cached in the output directory, so re-runs only embed new images."
        ),
    )
    q.add_argument("--root", type=Path, required=True,
                   help="LFW image directory (Name/Name_0001.jpg inside) or the directory above it")
    q.add_argument("--pairs", type=Path,
                   help="pairs file (default: pairs.txt in ROOT or its parent)")
    q.add_argument("--flip", action="store_true",
                   help="average each embedding with that of the mirrored chip")
    q.add_argument("--out", type=Path, default=Path("out/eval-lfw"),
                   help="output directory (default: out/eval-lfw)")
    q.add_argument("--profile", type=Path,
                   help="where to write the operating-point profile "
                        "(default: OUT/operating_points.json; the service reads "
                        "DATA_DIR/operating_points.json unless FACESERVE_PROFILE says otherwise)")
    q.add_argument("--limit-folds", type=int, metavar="N",
                   help="use only the first N (>= 2) folds: a quicker run of the same protocol")
    q.add_argument("--per-fold", type=int, metavar="N",
                   help="use only the first N same-person and N different-person pairs of "
                        "each fold (a balanced subset)")
    q.add_argument("--cache", type=Path, metavar="FILE",
                   help="embedding cache (default: OUT/embeddings-<model>.npz); point runs "
                        "with and without --flip at one file to detect each image only once")
    q.add_argument("--model", default="dlib",
                   help="`dlib` (default), a .safetensors file from `faceserve export`, or an "
                        "ONNX model added with `faceserve models add` (name or path); the "
                        "profile is then for that model's version. Leave out the people it "
                        "was trained on: see `faceserve heldout-pairs`")
    add_detector_options(q)
    q.add_argument("--detections-from", type=Path, action="append", default=[],
                   metavar="FILE",
                   help="another model's embedding cache to take detections from (repeatable; "
                        "the other caches in OUT are used anyway): detection does not depend "
                        "on the embedding model and is most of the time")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    q.add_argument("--batch-size", type=int, default=64, help="chips per embedding batch")
    q.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice; 1 is often faster on a "
                        "busy machine, where many small ops wait on each other)")
    q.add_argument("--cache-dir", type=Path, help="converted weights cache")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_eval_lfw)

    o = evals.add_parser(
        "openset",
        help="open-set identification on LFW: does identify hold its false-positive rate?",
        description=(
            "1:N identification with strangers, in NIST FRTE 1:N terms. Galleries of 10, 100, "
            "1000 and all LFW people with two or more photos enroll 1 (and, separately, up to "
            "3) photos per person; their other photos are mated probes; every photo of every "
            "person not enrolled is a stranger. Reports rank-1, DIR at FPIR 10%%/1%%/0.1%% "
            "(best possible), and for each decision rule (the old fixed threshold, gallery size "
            "only, and the service's rule) the FPIR and DIR it achieves when asked for those "
            "targets; one DET plot (log axes) per gallery. --variant re-runs the same people "
            "under other capture conditions (greyscale, dark, low resolution) to show whether "
            "a rule holds when the impostor distribution moves. Uses and extends the `eval lfw` "
            "embedding cache in OUT (detection is most of the cost: ~10 min for all 13,233 "
            "images on 2 cores the first time). Writes openset.json, openset.md, det-*.png."
        ),
    )
    o.add_argument("--root", type=Path, required=True,
                   help="LFW image directory (Name/Name_0001.jpg inside) or the directory above")
    o.add_argument("--out", type=Path, default=Path("out/eval-lfw"),
                   help="output directory, shared with `eval lfw` for its cache "
                        "(default: out/eval-lfw)")
    o.add_argument("--sizes", default="10,100,1000,max",
                   help="gallery sizes, comma-separated; `max` = every candidate "
                        "(default: 10,100,1000,max)")
    o.add_argument("--photos", default="1,3",
                   help="photos enrolled per subject, comma-separated (default: 1,3)")
    o.add_argument("--variant", action="append", default=[],
                   choices=["grey", "dark", "lowres"],
                   help="also evaluate under these capture conditions (repeatable)")
    o.add_argument("--crops", action="append", type=int, default=[], metavar="PX",
                   help="also evaluate probes cropped around the face and resized to PXxPX, "
                        "as phone apps send them (repeatable: --crops 100 --crops 150)")
    o.add_argument("--crop-images", type=int, default=2000, metavar="N",
                   help="probes for --crops: a seeded N of the photos (default 2000; each "
                        "crop is detected like an upload, ~70 ms on a CPU)")
    o.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    o.add_argument("--repeats", type=int,
                   help="draws per gallery size (default: enough for ~2,000 enrolled "
                        "subjects, at most 20)")
    o.add_argument("--limit-people", type=int, metavar="N",
                   help="a seeded subset of N people: a quick run of the same protocol")
    o.add_argument("--reference", type=Path, metavar="FILE",
                   help="impostor reference to test (default: the one shipped for the model)")
    o.add_argument("--write-reference", type=Path, metavar="FILE",
                   help="build the impostor reference from these embeddings, write it to FILE "
                        "and evaluate with it (how models/calibration/<model>.json is made)")
    o.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    o.add_argument("--threads", type=int, help="torch CPU threads")
    o.add_argument("--model", default="dlib",
                   help="`dlib` (default), an exported .safetensors or an added ONNX model; a "
                        "model without a shipped impostor reference needs --write-reference")
    add_detector_options(o)
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.set_defaults(func=_eval_openset)

    q = evals.add_parser(
        "quality",
        help="LFW error analysis of the face-quality measures, and a degradation sweep",
        description=(
            "From the LFW embedding cache of `eval lfw` (no detection; chips are re-aligned "
            "from the cached landmarks): for each quality measure, the error rate (ten-fold "
            "thresholds) and FNMR at the FAR 1e-3 threshold of the View-2 pairs with a face "
            "in the worst 5% of that measure against the rest; then, on a few hundred pairs "
            "with the first photo blurred, downscaled, darkened, overexposed, greyed or "
            "JPEG-compressed, how each measure moves and what it does to TAR and FMR. "
            "Writes quality.json and quality.md and prints the Markdown."
        ),
    )
    q.add_argument("--root", type=Path, required=True,
                   help="LFW image directory (Name/Name_0001.jpg inside) or the directory above it")
    q.add_argument("--pairs", type=Path,
                   help="pairs file (default: pairs.txt in ROOT or its parent)")
    q.add_argument("--cache", type=Path, required=True, metavar="FILE",
                   help="the embedding cache `eval lfw` wrote (embeddings-<model>.npz); it must "
                        "hold every image of the pairs file")
    q.add_argument("--model", default="dlib",
                   help="the model the cache was written with, as `eval lfw --model`: `dlib` "
                        "(default), a .safetensors file from `faceserve export`, or an ONNX "
                        "model added with `faceserve models add` (name or path); chips are cut "
                        "and measured the way that model wants them")
    add_detector_options(q)
    q.add_argument("--out", type=Path, default=Path("out/eval-quality"),
                   help="output directory (default: out/eval-quality)")
    q.add_argument("--sweep-pairs", type=int, default=200, metavar="N",
                   help="genuine and impostor pairs each in the degradation sweep (0: skip it)")
    q.add_argument("--threads", type=int, help="torch CPU threads")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_eval_quality)
    _add_crops_parser(evals)
    _add_cluster_parser(evals)
    _add_negatives_parser(evals)


def _add_lfw_cache_args(q: argparse.ArgumentParser) -> None:
    """--root, --out, --cache of the commands that reuse `eval lfw`'s embedding cache."""
    q.add_argument("--root", type=Path, required=True,
                   help="LFW image directory (Name/Name_0001.jpg inside) or the directory above")
    q.add_argument("--out", type=Path, default=Path("out/eval-lfw"),
                   help="output directory, shared with `eval lfw` for its cache "
                        "(default: out/eval-lfw)")
    q.add_argument("--cache", type=Path, metavar="FILE",
                   help="embedding cache (default: OUT/embeddings-<model>.npz)")


def _add_run_args(q: argparse.ArgumentParser) -> None:
    """--device, --threads, --no-progress."""
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    q.add_argument("--threads", type=int, help="torch CPU threads")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_negatives_parser(evals: argparse._SubParsersAction) -> None:
    q = evals.add_parser(
        "negatives",
        help="\"not this person\" negatives on LFW: false matches removed, true matches lost",
        description=(
            "Embed every LFW image (the `eval lfw` embedding cache in OUT is used and "
            "extended), enroll half of the people with two or more photos, mark the strangers' "
            "photos that identify matches to someone as negatives of that subject (repeating "
            "until none matches), and count, for both rules of models/negatives.py, the false "
            "matches of the marked photos and of the strangers' other photos, and the genuine "
            "true matches kept and lost. Writes negatives.json and negatives.md."
        ),
    )
    _add_lfw_cache_args(q)
    q.add_argument("--thresholds", default="0.915",
                   help="cosine match thresholds, comma-separated (default: the service's "
                        "verify threshold, which identify uses with identify_fpir off)")
    q.add_argument("--fpir", default="0.01,0.05",
                   help="also the thresholds at which these shares of the strangers match "
                        "someone before any negative, comma-separated (default 0.01,0.05; the "
                        "service's identify_fpir is 0.01)")
    q.add_argument("--enroll-per-person", default="1,3",
                   help="photos enrolled per subject, comma-separated (default 1,3)")
    q.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    _add_run_args(q)
    q.set_defaults(func=_eval_negatives)


def _lfw_image_dir(root: Path) -> Path:
    """The folder holding ``Name/Name_0001.jpg``: ``root`` itself or its first such child
    (the shared data has LFW one level down)."""
    if any(root.glob("*/*.jpg")):
        return root
    return next((d for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*/*.jpg"))),
                root)


def _eval_negatives(args: argparse.Namespace) -> int:
    import torch

    from models.evaluation.lfw import EmbeddingCache, embed_images
    from models.evaluation.negatives import evaluate_negatives
    from models.pipeline import FacePipeline

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    image_dir = _lfw_image_dir(args.root)
    paths = sorted(image_dir.glob("*/*.jpg"))
    pipeline = FacePipeline(device=None if args.device == "auto" else args.device, flip=False)
    cache = (EmbeddingCache(args.cache, pipeline.model_version) if args.cache
             else EmbeddingCache.for_run(args.out, pipeline.model_version)).load()
    emb = embed_images(pipeline, paths, cache, progress=not args.no_progress)
    evaluate_negatives(
        emb.vectors, [p.parent.name for p in paths], args.out,
        thresholds=[float(x) for x in args.thresholds.split(",") if x],
        fpirs=[float(x) for x in args.fpir.split(",") if x],
        enroll_per_person=[int(x) for x in args.enroll_per_person.split(",") if x],
        seed=args.seed,
        dataset={"source": str(image_dir), "images": len(paths),
                 "no_face_found": int(emb.fallback.sum()), "model": pipeline.model_version})
    print((args.out / "negatives.md").read_text(encoding="utf-8"))
    print(f"written: {args.out / 'negatives.json'}, {args.out / 'negatives.md'}")
    return 0


def _add_cluster_parser(evals: argparse._SubParsersAction) -> None:
    q = evals.add_parser(
        "cluster",
        help="clustering of unknown faces on LFW: pairwise and BCubed scores, unclustered share",
        description=(
            "Embed a seeded, photo-album-like LFW subset (people with two or more photos, at "
            "most --per-person each, plus --distractors people with one photo; the `eval lfw` "
            "embedding cache in OUT is used and extended), cluster it with chinese whispers and "
            "agglomerative average and complete linkage at thresholds around the service's, "
            "and score against the true identities: pairwise precision/recall, BCubed "
            "precision/recall/F, share of faces left unclustered; then incremental assignment "
            "against a full recluster. Writes cluster.json and cluster.md."
        ),
    )
    _add_lfw_cache_args(q)
    q.add_argument("--people-images", type=int, default=5000, metavar="N",
                   help="photos of people with two or more photos (default 5000)")
    q.add_argument("--distractors", type=int, default=1000, metavar="N",
                   help="photos of people with one photo (default 1000)")
    q.add_argument("--per-person", type=int, default=20, metavar="N",
                   help="at most N photos per person (default 20)")
    q.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    q.add_argument("--thresholds", default="",
                   help="cosine thresholds, comma-separated (default: the service's verify "
                        "threshold, the clustering default and a few around it)")
    _add_run_args(q)
    q.set_defaults(func=_eval_cluster)


def _eval_cluster(args: argparse.Namespace) -> int:
    import torch

    from models.clustering import CLUSTER_THRESHOLD, VERIFY_THRESHOLD
    from models.evaluation.cluster import evaluate_cluster
    from models.evaluation.cluster_subset import cluster_subset
    from models.evaluation.lfw import EmbeddingCache, embed_images
    from models.pipeline import FacePipeline

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    image_dir = _lfw_image_dir(args.root)
    paths, truth = cluster_subset(image_dir, people_images=args.people_images,
                                  distractors=args.distractors, per_person=args.per_person,
                                  seed=args.seed)
    pipeline = FacePipeline(device=None if args.device == "auto" else args.device, flip=False)
    cache = (EmbeddingCache(args.cache, pipeline.model_version) if args.cache
             else EmbeddingCache.for_run(args.out, pipeline.model_version)).load()
    emb = embed_images(pipeline, paths, cache, progress=not args.no_progress)
    thresholds = ([float(x) for x in args.thresholds.split(",") if x] if args.thresholds
                  else sorted({VERIFY_THRESHOLD, 0.925, CLUSTER_THRESHOLD, 0.935, 0.94}))
    evaluate_cluster(emb.vectors, truth, args.out, thresholds=thresholds,
                     service_threshold=VERIFY_THRESHOLD, cluster_threshold=CLUSTER_THRESHOLD,
                     dataset={"source": str(image_dir), "people_images": args.people_images,
                              "distractors": args.distractors, "per_person": args.per_person,
                              "seed": args.seed,
                              "no_face_found": int(emb.fallback.sum())})
    print((args.out / "cluster.md").read_text(encoding="utf-8"))
    print(f"written: {args.out / 'cluster.json'}, {args.out / 'cluster.md'}")
    return 0


def _add_crops_parser(evals: argparse._SubParsersAction) -> None:
    q = evals.add_parser(
        "crops",
        help="LFW faces cropped like phone apps send them: share found, cosine to the original",
        description=(
            "Cut each LFW image's face (the detection `eval lfw` used, from its embedding "
            "cache) around its box padded by 35%% of the box width, resize it to 100x100 and "
            "150x150 and JPEG it, as client apps upload faces found by the phone's own "
            "detector. Reports, per size, the share of crops with a face found by today's "
            "detection alone, with the small-image retry, and with face_crop=true; the cosine "
            "of their embeddings with the original image's; where the detector's box sits on "
            "the crop; and face_crop's verdict on non-face images (--negatives). Writes "
            "crops.json and crops.md."
        ),
    )
    q.add_argument("--cache", type=Path, required=True, metavar="FILE",
                   help="the LFW embedding cache of `faceserve eval lfw` (with detections, "
                        "written with the same --model and --detector): faces and original "
                        "embeddings come from it")
    q.add_argument("--images", type=int, default=2000, metavar="N",
                   help="a seeded random N of the cache's images with a detected face "
                        "(default 2000; 0: all)")
    q.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    q.add_argument("--sizes", type=int, nargs="+", default=[100, 150], metavar="PX",
                   help="crop sides (default: 100 150)")
    q.add_argument("--negatives", type=Path, nargs="*", default=[], metavar="IMAGE",
                   help="photos without faces: 20 random square crops of each are given "
                        "to face_crop at every size, with 20 synthetic textures (always), "
                        "and must be refused")
    q.add_argument("--out", type=Path, default=Path("out/eval-crops"),
                   help="output directory (default: out/eval-crops)")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    q.add_argument("--threads", type=int, help="torch CPU threads")
    q.add_argument("--cache-dir", type=Path, help="converted weights cache")
    q.add_argument("--model", default="dlib",
                   help="`dlib` (default), a .safetensors file from `faceserve export`, or an "
                        "ONNX model added with `faceserve models add` (name or path), as for "
                        "`eval lfw`")
    add_detector_options(q)
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_eval_crops)


def _eval_crops(args: argparse.Namespace) -> int:
    import json

    import torch

    from models.evaluation.crops import (
        markdown_table,
        measure_crops,
        negative_images,
        sample_paths,
    )
    from models.evaluation.lfw import EmbeddingCache, detections_key
    from models.imageio import decode_image
    from models.pipeline import SMALL_IMAGE_RETRY_PX, FacePipeline

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipeline = _pipeline_or_exit(
        "crops", FacePipeline,
        device=None if args.device == "auto" else args.device,
        cache_dir=args.cache_dir,
        small_image_retry_px=max(SMALL_IMAGE_RETRY_PX, max(args.sizes) + 1),
        model=None if args.model == "dlib" else args.model,
        detector=args.detector,
        model_dir=args.model_dir,
    )
    if not args.cache.is_file():
        raise SystemExit(f"faceserve eval crops: --cache {args.cache}: no such file")
    cache = EmbeddingCache(args.cache, pipeline.model_version, detections_key(pipeline)).load()
    paths = sample_paths(cache, args.images or None, args.seed)
    if not paths:
        raise SystemExit(f"faceserve eval crops: {args.cache} has no {pipeline.model_version} "
                         "rows with detections (run `faceserve eval lfw` first)")
    negatives = negative_images([decode_image(p.read_bytes()) for p in args.negatives])
    report = measure_crops(pipeline, cache, paths, args.sizes,
                           negatives=negatives,
                           progress=not args.no_progress)
    report["subset"] = {"images": args.images or "all", "seed": args.seed,
                        "of": sum(1 for _ in sample_paths(cache, None))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crops.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(report)
    (args.out / "crops.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    for size, verdict in report["negatives"].items():
        print(f"non-face images at {size}x{size} taken for a face by face_crop: "
              f"{verdict['taken_for_a_face']} of {verdict['images']}")
    print(f"written: {args.out / 'crops.json'}, {args.out / 'crops.md'}")
    return 0


def _eval_lfw(args: argparse.Namespace) -> int:
    import torch

    from models.evaluation.lfw import evaluate_lfw
    from models.model_file import ModelFileError, read_manifest

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.model != "dlib":
        try:
            if _onnx_spec(args.model, args.model_dir):
                from models.backends.onnx_file import read_onnx_manifest, resolve_model_file

                read_onnx_manifest(resolve_model_file(args.model, args.model_dir, "embedder"))
            else:
                read_manifest(args.model)
        except (ModelFileError, FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"faceserve eval lfw: --model: {exc}") from None
    report = evaluate_lfw(
        args.root,
        args.out,
        pairs_file=args.pairs,
        flip=args.flip,
        limit_folds=args.limit_folds,
        per_fold=args.per_fold,
        cache_path=args.cache,
        device=None if args.device == "auto" else args.device,
        weights_cache=args.cache_dir,
        batch_size=args.batch_size,
        profile_path=args.profile,
        progress=not args.no_progress,
        model=args.model,
        detections_from=args.detections_from,
        detector=args.detector,
        model_dir=args.model_dir,
    )
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"written: {args.out / 'report.json'}, {args.out / 'report.md'}, "
          f"{args.out / 'roc.png'}, {report['profile']['path']}")
    return 0


def _eval_openset(args: argparse.Namespace) -> int:
    import torch

    from models.evaluation.openset import evaluate_openset

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        sizes = [s if s == "max" else int(s) for s in args.sizes.split(",") if s]
        photos = [int(k) for k in args.photos.split(",") if k]
    except ValueError:
        raise SystemExit("faceserve eval openset: --sizes and --photos take comma-separated "
                         "integers (sizes may say `max`)") from None
    if any(k < 1 for k in photos) or any(s != "max" and s < 1 for s in sizes):
        raise SystemExit("faceserve eval openset: sizes and photos must be positive")
    try:
        evaluate_openset(
            args.root, args.out, sizes=sizes, photos=photos, variants=args.variant,
            seed=args.seed, repeats=args.repeats, limit_people=args.limit_people,
            reference_path=args.reference, write_reference=args.write_reference,
            crops=args.crops, crop_images=args.crop_images,
            device=None if args.device == "auto" else args.device,
            progress=not args.no_progress,
            model=args.model, detector=args.detector, model_dir=args.model_dir,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"faceserve eval openset: {exc}") from None
    print((args.out / "openset.md").read_text(encoding="utf-8"))
    print(f"written: {args.out / 'openset.json'}, {args.out / 'openset.md'}, "
          f"{args.out}/det-*.png")

def _eval_quality(args: argparse.Namespace) -> int:
    import torch

    from models.evaluation.quality import evaluate_quality

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = "dlib" if args.model == "dlib-resnet-v1" else args.model  # the old spelling
    try:
        evaluate_quality(args.root, args.cache, args.out, pairs_file=args.pairs, model=model,
                         sweep_pairs=args.sweep_pairs, progress=not args.no_progress,
                         detector=args.detector, model_dir=args.model_dir)
    except (FileNotFoundError, ValueError) as exc:  # OnnxModelError, GeometryError
        raise SystemExit(f"faceserve eval quality: {exc}") from None
    print((args.out / "quality.md").read_text(encoding="utf-8"))
    print(f"written: {args.out / 'quality.json'}, {args.out / 'quality.md'}")
    return 0


def _pipeline_or_exit(command: str, factory: Any, **kwargs: Any) -> Any:
    """``factory(**kwargs)``, or the command's exit with why the model or detector cannot
    be used (not added, changed since, a geometry the detector cannot give)."""
    try:
        return factory(**kwargs)
    except (FileNotFoundError, ValueError) as exc:  # OnnxModelError, GeometryError
        raise SystemExit(f"faceserve eval {command}: {exc}") from None


def _onnx_spec(spec: str, model_dir: Path | None) -> bool:
    from models.embedding_model import is_onnx_spec

    return is_onnx_spec(spec, model_dir)

"""``faceserve train``, ``faceserve export`` and ``faceserve heldout-pairs``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parsers"]

D = "default: %(default)s"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune an embedder on folders of people's photos",
        description=(
            "Train a face embedder on DIR/<identity>/<photos>. Raw photos are aligned once by "
            "the face pipeline and cached as 150x150 chips (150x150 images are taken as chips "
            "as they are). Identities are split into training and validation by identity; "
            "each epoch reports pair accuracy and TAR@FAR on held-out people and keeps the "
            "best checkpoint. Ctrl-C saves a checkpoint that --resume continues from."
        ),
    )
    p.add_argument("--data", type=Path, help="identity folders (required unless --resume)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--loss", choices=["triplet", "cosface", "arcface"], default="triplet", help=D)
    p.add_argument(
        "--miner",
        choices=["batch-hard", "semi-hard", "batch-all"],
        default="batch-hard",
        help=f"{D}; online triplet mining inside each P x K batch (triplet loss only); "
        "from random init batch-all is the most stable",
    )
    p.add_argument(
        "--margin",
        type=float,
        help="triplet: 0.2 from random init (FaceNet), 0.05 from the dlib weights (their "
        "embeddings are tightly packed), halved for --distance cosine; cosface 0.35; arcface 0.5",
    )
    p.add_argument("--distance", choices=["squared-l2", "cosine"], default="squared-l2", help=D)
    p.add_argument("--init", choices=["dlib", "random"], default="dlib", help=D)
    p.add_argument("--arch", choices=["dlib-resnet", "small"], default="dlib-resnet", help=D)
    p.add_argument(
        "--freeze",
        type=int,
        nargs="?",
        const=1,
        metavar="N",
        help="freeze all but the last N blocks (N = 1 if omitted); default: train everything",
    )
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help=D)
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-6 from dlib, "
                   "whose conv weights are tiny; 1e-3 from random; x10 for SGD)")  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=1e-4, help=D)
    p.add_argument("--epochs", type=int, help="default 10; with --resume: the checkpoint's, "
                   "or more to lengthen the run")  # fmt: skip
    p.add_argument("--steps-per-epoch", type=int, default=100, help=D)
    p.add_argument("--p", type=int, default=16, help=f"identities per batch ({D})")
    p.add_argument("--k", type=int, default=4, help=f"images per identity per batch ({D})")
    p.add_argument("--warmup", type=int, default=50, help=f"linear warm-up steps ({D})")
    p.add_argument("--seed", type=int, default=0, help=D)
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help=f"share of identities held out ({D})"
    )
    p.add_argument("--val-max-per-identity", type=int, default=20, help=D)
    p.add_argument("--max-images-per-identity", type=int, help="cap large identities")
    p.add_argument("--far", type=float, default=1e-3, help=f"FAR for the reported TAR ({D})")
    p.add_argument("--best-metric", choices=["tar", "accuracy"], default="tar", help=D)
    p.add_argument("--no-augment", action="store_true",
                   help="train on the chips as they are (no random flips, zoom, shifts or "
                   "brightness changes)")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--chip-cache", type=Path, help="aligned-chip cache "
                   "(default: $FACESERVE_CACHE_DIR/chips)")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "export",
        help="write a trained checkpoint as a safetensors model with a manifest",
        description=(
            "Export the network of a training checkpoint (a .pt file, or a run directory for "
            "its best.pt) as FILE.safetensors plus FILE.safetensors.json. The manifest holds "
            "the architecture, embedding size, training data summary, validation figures and "
            "the version string ft-<name>-<date>-<hash> that the service stores with each "
            "embedding."
        ),
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="a checkpoint (.pt) or a run directory (its best.pt)")
    p.add_argument("--out", type=Path, help="output file (default: <run>/<version>.safetensors)")
    p.add_argument("--name", help="name in the version string (default: the run directory's)")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "heldout-pairs",
        help="an LFW-style pairs file without the people a training run saw",
        description=(
            "Write a copy of a pairs file (LFW View-2 format) from which every pair naming an "
            "identity seen by a training run (its train and validation people) is removed, "
            "with each fold cut back to equal same/different halves, so that `faceserve eval "
            "lfw --pairs OUT` measures a fine-tuned model on people it never saw."
        ),
    )
    p.add_argument(
        "run", type=Path, metavar="RUN",
        help="run directory, its excluded_identities.txt, or an export manifest (.json)",
    )  # fmt: skip
    p.add_argument("--pairs", type=Path, required=True, help="the original pairs file")
    p.add_argument("--out", type=Path, required=True, help="the pairs file to write")
    p.set_defaults(func=_heldout_pairs)


def _train(args: argparse.Namespace) -> int:
    import torch

    from models.training.trainer import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is None and not args.resume:
        raise SystemExit("faceserve train: --data DIR is required (unless --resume)")
    config = TrainConfig(
        data=str(args.data) if args.data else "",
        out=str(args.out),
        loss=args.loss,
        miner=args.miner,
        margin=args.margin,
        distance=args.distance,
        init=args.init,
        arch=args.arch,
        freeze=args.freeze,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        # On --resume the checkpoint's length stands unless --epochs asks for more.
        epochs=args.epochs if args.epochs is not None else (1 if args.resume else 10),
        steps_per_epoch=args.steps_per_epoch,
        p=args.p,
        k=args.k,
        warmup=args.warmup,
        seed=args.seed,
        val_fraction=args.val_fraction,
        val_max_per_identity=args.val_max_per_identity,
        max_images_per_identity=args.max_images_per_identity,
        far=args.far,
        best_metric=args.best_metric,
        augment=not args.no_augment,
        amp=not args.no_amp,
        device=args.device,
        chip_cache=str(args.chip_cache) if args.chip_cache else None,
        progress=not args.quiet,
    )
    try:
        result = Trainer(config, resume=args.resume).run()
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"faceserve train: {exc}") from exc
    if result.interrupted:
        return 130
    best = result.best
    print(
        f"done: {result.global_step} steps; best epoch {best.get('epoch')} "
        f"(val accuracy {best.get('val_accuracy', float('nan')):.4f}, "
        f"TAR@FAR={config.far:g} {best.get('val_tar', float('nan')):.4f}); "
        f"export with: faceserve export {Path(config.out) / 'best.pt'}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from models.training.export import export_checkpoint

    try:
        path, manifest = export_checkpoint(args.checkpoint, args.out, args.name)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"faceserve export: {exc}") from exc
    print(json.dumps({"file": str(path), "version": manifest["version"],
                      "validation": manifest["validation"]}, indent=2))  # fmt: skip
    return 0


def _heldout_pairs(args: argparse.Namespace) -> int:
    from models.training.heldout_pairs import heldout_pairs, read_excluded

    try:
        excluded = read_excluded(args.run)
        result = heldout_pairs(args.pairs.read_text(encoding="utf-8"), excluded)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"faceserve heldout-pairs: {exc}") from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(result.text, encoding="utf-8")
    print(
        f"{args.out}: {result.folds} folds x 2 x {result.per_half} = {result.kept} pairs "
        f"({result.dropped} dropped for naming one of {len(excluded)} seen identities, "
        f"{result.trimmed} more to balance the folds)"
    )
    return 0

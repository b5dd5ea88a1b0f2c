"""``faceserve models add`` and ``faceserve models list``: the ONNX models a user brings.

The files themselves are handled by ``models.backends.onnx_file`` (checks, copy, manifest);
this module only reads the settings (the model directory defaults to ``<data_dir>/models``,
as the service looks it up) and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="add and list ONNX face models (ArcFace family, SCRFD) beside dlib's",
        description=(
            "Serve face models from ONNX files you have (faceserve cannot ship them: their "
            "licences vary). `add` checks the file against a preset, copies it into the model "
            "directory and writes the manifest beside it (SHA-256, chip geometry or detector "
            "settings, embedding size, licence and source as you give them); select models "
            "with FACESERVE_MODEL and FACESERVE_DETECTOR. See README, Using other models."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser(
        "add", help="add an ONNX file as a model",
        description="Check FILE against --preset and add it to the model directory.",
    )
    a.add_argument("file", type=Path, help="the .onnx file")
    a.add_argument("--preset", required=True, choices=["arcface", "dlib", "scrfd"],
                   help="arcface: an embedder for 112x112 ArcFace chips (eye centres, nose tip, "
                   "mouth corners on InsightFace's template, (x-127.5)/127.5, RGB); dlib: an "
                   "embedder for dlib's 150x150 chips; scrfd: an SCRFD detector with five points")
    a.add_argument("--name", help="the name to select it by (default: the file's stem)")
    a.add_argument("--licence", "--license", dest="licence",
                   help="its licence: the text, or a file holding it (recorded as given; "
                   "faceserve does not check it)")
    a.add_argument("--source", help="where the file came from (a URL), recorded as given")
    a.add_argument("--model-dir", type=Path,
                   help="model directory (FACESERVE_MODEL_DIR, else DATA_DIR/models)")
    a.add_argument("--data-dir", type=Path, help="gallery directory (FACESERVE_DATA_DIR)")
    a.set_defaults(func=_add)
    ls = actions.add_parser("list", help="list the added models",
                            description="List the models in the model directory.")
    ls.add_argument("--model-dir", type=Path,
                    help="model directory (FACESERVE_MODEL_DIR, else DATA_DIR/models)")
    ls.add_argument("--data-dir", type=Path, help="gallery directory (FACESERVE_DATA_DIR)")
    ls.add_argument("--json", action="store_true", help="print the manifests as JSON")
    ls.set_defaults(func=_list)


def _model_dir(args: argparse.Namespace) -> Path:
    from service.config import Settings

    overrides = {k: v for k in ("data_dir", "model_dir") if (v := getattr(args, k)) is not None}
    return Settings(**overrides).model_dir_path


def _licence(text: str | None) -> str | None:
    if text is None:
        return None
    path = Path(text)
    try:
        if len(text) < 4096 and path.is_file():
            return path.read_text(encoding="utf-8").strip()
    except OSError:
        pass
    return text


def _add(args: argparse.Namespace) -> int:
    from models.backends.onnx_file import OnnxModelError, add_model

    model_dir = _model_dir(args)
    try:
        info = add_model(args.file, model_dir, args.preset, name=args.name,
                         licence=_licence(args.licence), source_url=args.source)
    except (OnnxModelError, FileNotFoundError) as exc:
        print(f"faceserve models add: {exc}", file=sys.stderr)
        return 2
    m = info.manifest
    what = (f"{m['embedding_size']}-d embedder, {m['chip']['size']}x{m['chip']['size']} chips"
            if info.kind == "embedder" else "detector")
    print(f"added {info.name} ({what}) as {info.path}; version {m['version']}")
    variable = "FACESERVE_MODEL" if info.kind == "embedder" else "FACESERVE_DETECTOR"
    print(f"select it with {variable}={info.name}", file=sys.stderr)
    if info.kind == "embedder":
        print("it has no calibrated threshold yet: run `faceserve eval lfw --model "
              f"{info.name} ...` or set FACESERVE_THRESHOLD (README: Using other models)",
              file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from models.backends.onnx_file import list_models

    model_dir = _model_dir(args)
    models = list_models(model_dir)
    if args.json:
        print(json.dumps([m.manifest for m in models], indent=2))
        return 0
    print(f"dlib       embedder+detector  dlib-resnet-v1 (128-d, 150x150 chips), CC0-1.0  "
          f"[default]\n(model directory: {model_dir})")
    for m in models:
        man = m.manifest
        size = (f"{man.get('embedding_size')}-d, {man['chip']['size']}x{man['chip']['size']} "
                "chips" if m.kind == "embedder" else "5 points")
        licence = str(man.get("licence", "")).splitlines()[0][:60] if man.get("licence") else ""
        print(f"{m.name:<10} {m.kind:<18} {man['version']} ({size}), {licence}")
    return 0

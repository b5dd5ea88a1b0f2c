"""User-supplied ONNX model files: the manifest beside each, the model directory, checks.

The project cannot ship the ArcFace family's weights (their licences vary, several are for
non-commercial research only), so users bring the files. ``faceserve models add FILE
--preset arcface`` copies one into the model directory and writes ``<file>.json`` beside it:
the SHA-256 of the file, the preset's chip geometry (or detector settings), the embedding
size read from the graph, and the licence and source exactly as the user gave them. Every
load checks the hash again, so a file swapped after it was added is refused instead of
being served under the old model's version string.

The version string stored with every embedding is ``onnx-<name>-<first 12 hex of the
SHA-256>``: another file under the same name is another model to the gallery.

Nothing here imports onnx, onnx2torch or onnxruntime at module level: they are an optional
extra (``pip install faceserve[onnx]``), and the service runs dlib's model without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.backends.geometry import GEOMETRY_PRESETS, ChipGeometry, GeometryError
from models.weights import sha256_of

__all__ = [
    "DETECTOR_PRESETS",
    "EMBEDDER_PRESETS",
    "ONNX_FORMAT",
    "OnnxModelError",
    "OnnxModelInfo",
    "add_model",
    "graph_io",
    "import_onnx",
    "list_models",
    "read_onnx_manifest",
    "resolve_model_file",
]

ONNX_FORMAT = "faceserve-onnx/1"
EMBEDDER_PRESETS = ("arcface", "dlib")
# SCRFD as InsightFace exports it: 640x640 letterboxed input, (x - 127.5) / 128, RGB.
DETECTOR_PRESETS: dict[str, dict[str, Any]] = {
    "scrfd": {
        "architecture": "scrfd",
        "input_size": 640,
        "mean": 127.5,
        "std": 128.0,
        "colour": "RGB",
        "strides": [8, 16, 32],
        "anchors_per_location": 2,
        "score_threshold": 0.5,
        "nms_iou": 0.4,
        "landmarks": "arcface5",
    },
}
PRESETS = (*EMBEDDER_PRESETS, *DETECTOR_PRESETS)
# No dots: a name is told from a file path by having no suffix.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class OnnxModelError(ValueError):
    """An ONNX model that cannot be served: no manifest, a hash mismatch, a graph whose
    inputs or outputs do not fit its preset, or the optional packages missing."""


@dataclass(frozen=True)
class OnnxModelInfo:
    """One added model, as ``faceserve models list`` shows it."""

    name: str
    kind: str  # "embedder" or "detector"
    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


def import_onnx() -> Any:
    """The ``onnx`` package, or an error saying how to get it."""
    try:
        import onnx
    except ImportError:
        raise OnnxModelError(
            "serving ONNX models needs the optional packages onnx, onnx2torch and "
            "onnxruntime: pip install 'faceserve[onnx]'"
        ) from None
    return onnx


def _dims(value_info: Any) -> list[int | str]:
    """A graph input's or output's shape: ints where fixed, names (or "?") where free."""
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def graph_io(model: Any) -> tuple[list[tuple[str, list[int | str]]],
                                  list[tuple[str, list[int | str]]]]:
    """``(inputs, outputs)`` of an ONNX ModelProto as (name, shape) lists; weights that
    old exporters list among the inputs are left out."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [(i.name, _dims(i)) for i in model.graph.input if i.name not in weights]
    outputs = [(o.name, _dims(o)) for o in model.graph.output]
    return inputs, outputs


def _fits(dim: int | str, want: int) -> bool:
    return isinstance(dim, str) or dim == want


def check_embedder_graph(
    model: Any, geometry: ChipGeometry, where: str | Path
) -> tuple[str, int | None, bool]:
    """``(input name, embedding size or None when the graph leaves it free, fixed batch of
    one)``; ``OnnxModelError`` when the graph is not ``(N, 3, S, S) -> (N, D)`` for the chip
    size ``S`` of the geometry."""
    inputs, outputs = graph_io(model)
    want = f"(N, 3, {geometry.size}, {geometry.size})"
    if len(inputs) != 1:
        raise OnnxModelError(f"{where}: an embedder takes one input {want}; the graph has "
                             f"{len(inputs)}: {', '.join(n for n, _ in inputs) or 'none'}")
    name, shape = inputs[0]
    if len(shape) != 4 or not all(
        _fits(d, v) for d, v in zip(shape[1:], (3, geometry.size, geometry.size), strict=True)
    ):
        raise OnnxModelError(
            f"{where}: wrong input shape {tuple(shape)}: preset {geometry.name!r} needs {want} "
            f"(a {geometry.size}x{geometry.size} RGB chip); is this a detector, or a model "
            "for another chip size?"
        )
    if not outputs:
        raise OnnxModelError(f"{where}: the graph has no output")
    out_shape = outputs[0][1]
    if len(out_shape) != 2:
        raise OnnxModelError(f"{where}: an embedder's first output must be (N, D); this one "
                             f"is {tuple(out_shape)}")
    dim = out_shape[1] if isinstance(out_shape[1], int) else None
    return name, dim, shape[0] == 1


def check_detector_graph(model: Any, where: str | Path) -> str:
    """The input name; ``OnnxModelError`` unless the graph is SCRFD-shaped: one
    ``(1, 3, H, W)`` input, nine outputs (scores, boxes, 5 points at three strides)."""
    inputs, outputs = graph_io(model)
    if len(inputs) != 1 or len(inputs[0][1]) != 4 or not _fits(inputs[0][1][1], 3):
        shown = ", ".join(f"{n} {tuple(s)}" for n, s in inputs) or "none"
        raise OnnxModelError(f"{where}: an SCRFD detector takes one (1, 3, H, W) image; the "
                             f"graph's inputs are {shown}")
    if len(outputs) != 9:
        raise OnnxModelError(
            f"{where}: an SCRFD detector with five points has 9 outputs (scores, boxes and "
            f"points at strides 8, 16, 32); this graph has {len(outputs)} (a model without "
            "key points, or not SCRFD)"
        )
    return inputs[0][0]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_onnx_manifest(path: str | Path, verify_hash: bool = True) -> dict[str, Any]:
    """The manifest of an added ONNX model (the ``.onnx`` path or its ``.json``), checked:
    it must exist, be ours, and (``verify_hash``) match the file's SHA-256."""
    path = Path(path)
    if path.suffix == ".json" and path.name.endswith(".onnx.json"):
        path = path.with_name(path.name[: -len(".json")])
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    side = _sidecar(path)
    if not side.is_file():
        raise OnnxModelError(
            f"{path} has no manifest ({side.name} is missing): the chip geometry and licence "
            "are not known. Add the file with `faceserve models add FILE --preset arcface` "
            "(or scrfd, dlib), which writes it"
        )
    try:
        manifest = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OnnxModelError(f"{side}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ONNX_FORMAT:
        raise OnnxModelError(f"{side}: not a faceserve ONNX manifest (format "
                             f"{manifest.get('format') if isinstance(manifest, dict) else '?'})")
    if verify_hash:
        digest = sha256_of(path)
        if digest != manifest.get("sha256"):
            raise OnnxModelError(
                f"{path}: hash mismatch: the file's SHA-256 is {digest[:16]}..., the manifest "
                f"records {str(manifest.get('sha256'))[:16]}...; the file changed after it was "
                "added. Add the new file again (`faceserve models add`) so it is a new model"
            )
    if manifest.get("kind") == "embedder":
        try:
            ChipGeometry.from_dict(manifest.get("chip") or {})
        except GeometryError as exc:
            raise OnnxModelError(f"{side}: {exc}") from None
    return manifest


def add_model(
    source: str | Path,
    model_dir: str | Path,
    preset: str,
    *,
    name: str | None = None,
    licence: str | None = None,
    source_url: str | None = None,
    geometry: dict[str, Any] | None = None,
) -> OnnxModelInfo:
    """Check ``source`` against ``preset``, copy it to ``model_dir/<name>.onnx`` and write the
    manifest beside it. The file is loaded once here (its graph checked, an embedder's
    output size read), so a file that cannot be served is refused now, not at start-up."""
    onnx = import_onnx()
    src = Path(source)
    if not src.is_file():
        raise FileNotFoundError(f"no file at {src}")
    if preset not in PRESETS:
        raise OnnxModelError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    name = name or re.sub(r"[^A-Za-z0-9_-]", "-", src.stem)
    if not _NAME.match(name) or name == "dlib":
        raise OnnxModelError(f"model name {name!r}: use letters, digits, '_' or '-' "
                             "(not 'dlib')")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for non-ONNX bytes
        raise OnnxModelError(f"{src} is not an ONNX model: {exc}") from None
    digest = sha256_of(src)
    manifest: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "name": name,
        "preset": preset,
        "file": f"{name}.onnx",
        "sha256": digest,
        "version": f"onnx-{name}-{digest[:12]}",
        "licence": licence or "not stated (the user gave no --licence)",
        "source": source_url,
        "added": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                     default=None),
    }
    if preset in DETECTOR_PRESETS:
        manifest["kind"] = "detector"
        input_name = check_detector_graph(model, src)
        manifest["detector"] = {**DETECTOR_PRESETS[preset], "input": input_name}
    else:
        geo = ChipGeometry.from_dict(geometry) if geometry else GEOMETRY_PRESETS[preset]
        input_name, dim, _ = check_embedder_graph(model, geo, src)
        if dim is None:  # the graph leaves D free: run it once to read it
            from models.backends.onnx_embedder import probe_embedding_size

            dim = probe_embedding_size(src, geo)
        manifest["kind"] = "embedder"
        manifest["chip"] = geo.to_dict()
        manifest["embedding_size"] = int(dim)
        manifest["input"] = input_name
    out_dir = Path(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / manifest["file"]
    _atomic_copy(src, target)
    text = json.dumps(manifest, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".json.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, _sidecar(target))
    return OnnxModelInfo(name, manifest["kind"], target, manifest)


def _atomic_copy(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def list_models(model_dir: str | Path) -> list[OnnxModelInfo]:
    """Every added model in ``model_dir`` (manifests read, hashes not checked: listing must
    stay quick and show a damaged model too; loading it checks)."""
    out = []
    root = Path(model_dir)
    if not root.is_dir():
        return []
    for side in sorted(root.glob("*.onnx.json")):
        try:
            manifest = read_onnx_manifest(side, verify_hash=False)
        except (OnnxModelError, FileNotFoundError):
            continue
        path = side.with_name(side.name[: -len(".json")])
        out.append(OnnxModelInfo(str(manifest.get("name", path.stem)),
                                 str(manifest.get("kind")), path, manifest))
    return out


def resolve_model_file(spec: str | Path, model_dir: str | Path | None, kind: str) -> Path:
    """The ``.onnx`` file ``spec`` names: a path, or the name of a model added to
    ``model_dir``. ``OnnxModelError`` when it is neither, or of the other kind."""
    text = str(spec)
    path = Path(text).expanduser()
    if not path.suffix and model_dir is not None and _NAME.match(text):
        path = Path(model_dir) / f"{text}.onnx"
        if not path.is_file():
            known = [m.name for m in list_models(model_dir) if m.kind == kind]
            raise OnnxModelError(
                f"no {kind} named {text!r} in {model_dir} (added: {', '.join(known) or 'none'}); "
                f"`faceserve models add FILE --preset ...` adds one"
            )
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return path

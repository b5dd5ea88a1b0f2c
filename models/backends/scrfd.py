"""SCRFD face detectors from ONNX files: boxes and the five points ArcFace chips need.

SCRFD (InsightFace's detector, e.g. ``det_10g.onnx`` of the ``buffalo_l`` pack) predicts,
at strides 8, 16 and 32 of a letterboxed 640x640 input, for each of 2 anchors per feature
map location: a face score, the box as distances from the anchor centre to its four sides,
and the five points as offsets from the centre, all in units of the stride. Decoding is
plain functions over tensors (:func:`anchor_centres`, :func:`decode_outputs`), tested on
hand-made outputs; NMS is ``torchvision.ops.nms``. The points are ``arcface5``: eye
centres, nose tip, mouth corners (``models.backends.geometry``).

The photo is scanned at the scale a request needs (:func:`scan_scale`: the MMOD path's
``upsample``, ``max_side`` and ``min_face_px`` for SCRFD's 16 px smallest anchor), on a
canvas rounded up to the coarsest stride when the graph's input size is free, and boxes and
points are mapped back to the photo's pixels.

The graph is converted with onnx2torch like the embedders (``convert_graph``), so it runs
on the pipeline's device; ONNX Runtime is the fallback.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backends.onnx_file import (
    OnnxModelError,
    check_detector_graph,
    import_onnx,
    read_onnx_manifest,
)
from models.faces import Box

__all__ = [
    "SCRFD_MIN_FACE_PX",
    "Detection",
    "ScrfdDetector",
    "anchor_centres",
    "decode_outputs",
    "letterbox",
    "load_scrfd",
    "place",
    "scan_scale",
    "split_outputs",
]

# (box as Box, score, (5, 2) float64 points in image pixels)
Detection = tuple[Box, float, np.ndarray]

# SCRFD's smallest anchor (base size 16 at stride 8): the smallest face, in input pixels,
# it is trained to find.
SCRFD_MIN_FACE_PX = 16.0


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> Tensor:
    """``(height * width * anchors, 2)`` (x, y) input pixels of every anchor of a level, in
    the order SCRFD's outputs list them: row by row, each location's anchors together."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(torch.float32) * stride
    return centres.repeat_interleave(anchors, dim=0)


def split_outputs(outputs: Sequence[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The nine outputs as ``[(scores, boxes, points)]`` per stride, finest first.

    Exports differ in output order and in a leading batch dimension of one; the kind of an
    output is told by its last dimension (1 score, 4 box distances, 10 point offsets) and
    its stride by its length (finer strides have more anchors)."""
    flat = []
    for out in outputs:
        t = torch.as_tensor(out)
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2:
            raise OnnxModelError(f"an SCRFD output has shape {tuple(t.shape)}, not (K, C)")
        flat.append(t)
    groups: dict[int, list[Tensor]] = {1: [], 4: [], 10: []}
    for t in flat:
        if t.shape[1] not in groups:
            raise OnnxModelError(f"an SCRFD output has {t.shape[1]} columns (expected 1, 4, 10)")
        groups[int(t.shape[1])].append(t)
    if any(len(g) != 3 for g in groups.values()):
        raise OnnxModelError("SCRFD needs three score, three box and three point outputs; got "
                             + ", ".join(f"{len(g)} with {k} columns" for k, g in groups.items()))
    for g in groups.values():
        g.sort(key=lambda t: -t.shape[0])
    return list(zip(groups[1], groups[4], groups[10], strict=True))


def decode_outputs(
    outputs: Sequence[Tensor],
    input_hw: tuple[int, int],
    strides: Sequence[int] = (8, 16, 32),
    anchors: int = 2,
    score_threshold: float = 0.5,
    nms_iou: float = 0.4,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes (K, 4) x0 y0 x1 y1, scores (K,), points (K, 5, 2))`` in input pixels, most
    confident first, after NMS at ``nms_iou``.

    ``box = (cx - d0, cy - d1, cx + d2, cy + d3) * ...`` with distances times the stride,
    points ``(cx + o_2k * stride, cy + o_2k+1 * stride)``: SCRFD's ``distance2bbox`` and
    ``distance2kps``.
    """
    from torchvision.ops import nms

    h, w = input_hw
    levels = split_outputs(outputs)
    if len(levels) != len(strides):
        raise OnnxModelError(f"{len(levels)} output levels for strides {list(strides)}")
    all_boxes, all_scores, all_points = [], [], []
    for (scores, dist, offs), stride in zip(levels, strides, strict=True):
        centres = anchor_centres(h // stride, w // stride, stride, anchors).to(dist.device)
        if centres.shape[0] != scores.shape[0]:
            raise OnnxModelError(
                f"stride {stride}: {scores.shape[0]} anchors in the output, {centres.shape[0]} "
                f"expected for a {w}x{h} input with {anchors} anchors per location"
            )
        keep = scores[:, 0] >= score_threshold
        c = centres[keep]
        d = dist[keep].float() * stride
        o = offs[keep].float().reshape(-1, 5, 2) * stride
        all_boxes.append(torch.cat([c - d[:, :2], c + d[:, 2:]], dim=1))
        all_scores.append(scores[keep, 0].float())
        all_points.append(c[:, None, :] + o)
    boxes, scores_t, points = (torch.cat(all_boxes), torch.cat(all_scores),
                               torch.cat(all_points))
    order = nms(boxes, scores_t, nms_iou)  # indices of kept boxes, by decreasing score
    return boxes[order], scores_t[order], points[order]


def letterbox(image: Tensor, size: int) -> tuple[Tensor, float]:
    """``((1, 3, size, size) float 0..255 RGB, scale)``: the photo shrunk or grown to fit
    (aspect kept), in the top-left corner, zeros elsewhere, as SCRFD's ``detect`` does;
    ``scale`` is new / old size."""
    h, w = int(image.shape[0]), int(image.shape[1])
    if h / w > 1.0:
        new_h, new_w = size, max(1, int(size * w / h))
    else:
        new_w, new_h = size, max(1, int(size * h / w))
    blob = place(image, (new_h, new_w), (size, size))
    return blob, new_h / h


def place(image: Tensor, new_hw: tuple[int, int], canvas_hw: tuple[int, int]) -> Tensor:
    """``(1, 3, H, W)`` float 0..255: the photo resized (bilinear) to ``new_hw`` in the
    top-left corner of a black ``canvas_hw``."""
    h, w = int(image.shape[0]), int(image.shape[1])
    new_h, new_w = new_hw
    x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    out = torch.zeros((1, 3, *canvas_hw), dtype=torch.float32, device=image.device)
    out[:, :, :new_h, :new_w] = x
    return out


def scan_scale(
    height: int,
    width: int,
    input_size: int,
    max_side: int | None = None,
    min_face_px: float | None = None,
    upsample: int = 0,
    fixed_input: bool = False,
) -> float:
    """Input pixels per photo pixel at which SCRFD sees a ``width`` x ``height`` photo.

    The semantics of the MMOD path (``models.detector.detection_scale``), for SCRFD's
    reach: its smallest anchor is :data:`SCRFD_MIN_FACE_PX` (16 px at stride 8), so a face
    of ``min_face_px`` is found when the photo is scaled by ``16 / min_face_px`` (shrunk
    when the request wants only large faces: less work; grown for small ones). Without
    ``min_face_px`` the photo is letterboxed to ``input_size`` as InsightFace does (faces
    from ``longer side / 40`` px at 640), each ``upsample`` doubling that. ``max_side``
    caps the longer side of what is scanned. A graph with a fixed input cannot see more
    than its canvas: the scale is capped at the letterbox's."""
    longest = max(height, width)
    if min_face_px is not None:
        scale = SCRFD_MIN_FACE_PX / float(min_face_px)
    else:
        scale = input_size / longest * 2**upsample
    if max_side is not None:
        scale = min(scale, max_side / longest)
    if fixed_input:
        scale = min(scale, input_size / longest)
    return scale


class ScrfdDetector:
    """An SCRFD graph and its settings (from the manifest's ``detector`` block).

    ``fixed_input``: the graph takes only ``input_size`` x ``input_size`` images (as
    ``scrfd_*_shape640x640.onnx`` exports do); otherwise (InsightFace's ``det_10g.onnx``)
    any size that is a multiple of the coarsest stride, and the photo is scanned at the
    scale the request needs (:func:`scan_scale`) on a canvas just large enough for it."""

    landmark_scheme = "arcface5"

    def __init__(self, net: nn.Module, settings: dict[str, Any], device: torch.device,
                 version: str = "scrfd", fixed_input: bool = False) -> None:
        self.net = net
        self.settings = settings
        self.device = device
        self.version = version
        self.fixed_input = fixed_input
        self.input_size = int(settings.get("input_size", 640))
        self.strides = tuple(int(s) for s in settings.get("strides", (8, 16, 32)))
        self.anchors = int(settings.get("anchors_per_location", 2))
        self.mean = float(settings.get("mean", 127.5))
        self.std = float(settings.get("std", 128.0))
        self.bgr = settings.get("colour", "RGB") == "BGR"
        self.score_threshold = float(settings.get("score_threshold", 0.5))
        self.nms_iou = float(settings.get("nms_iou", 0.4))

    def on_device(self, device: torch.device) -> ScrfdDetector:
        """A copy of this detector on ``device`` (the self-test's CPU reference)."""
        return ScrfdDetector(copy.deepcopy(self.net).to(device), self.settings, device,
                             self.version, self.fixed_input)

    def scale_for(self, height: int, width: int, upsample: int = 0,
                  max_side: int | None = None, min_face_px: float | None = None) -> float:
        """Input pixels per photo pixel for this photo and request (:func:`scan_scale`)."""
        return scan_scale(height, width, self.input_size, max_side, min_face_px, upsample,
                          self.fixed_input)

    def _layout(self, height: int, width: int, scale: float | None
                ) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(resized (h, w), canvas (h, w))`` of a photo scanned at ``scale`` (None: the
        letterbox to ``input_size``)."""
        size = self.input_size
        if scale is None:
            scale = size / max(height, width)
        new_h = max(1, round(height * scale))
        new_w = max(1, round(width * scale))
        if self.fixed_input:
            return (min(new_h, size), min(new_w, size)), (size, size)
        step = max(self.strides)
        canvas = (-(-new_h // step) * step, -(-new_w // step) * step)
        return (new_h, new_w), canvas

    def _forward(self, image: Tensor, scale: float | None = None
                 ) -> tuple[list[Tensor], tuple[float, float], tuple[int, int]]:
        """``(outputs, (sx, sy) input pixels per photo pixel, canvas (h, w))``."""
        h, w = int(image.shape[0]), int(image.shape[1])
        (new_h, new_w), canvas = self._layout(h, w, scale)
        blob = place(image.to(self.device), (new_h, new_w), canvas)
        if self.bgr:
            blob = blob.flip(1)
        blob = (blob - self.mean) / self.std
        with torch.inference_mode():
            outs = self.net(blob)
        if isinstance(outs, Tensor):
            outs = [outs]
        return [torch.as_tensor(o) for o in outs], (new_w / w, new_h / h), canvas

    def score_map(self, image: Tensor) -> tuple[Tensor, None]:
        """Every anchor's raw score, all levels (the self-test compares them with a CPU
        copy's)."""
        outs, _, _ = self._forward(image)
        return torch.cat([s.reshape(-1) for s, _, _ in split_outputs(outs)]), None

    def detect(
        self,
        image: np.ndarray | Tensor,
        upsample: int = 0,
        max_side: int | None = None,
        min_face_px: float | None = None,
    ) -> list[Detection]:
        """Faces of an (H, W, 3) RGB uint8 image, most confident first, in its pixels.

        The photo is scanned at :meth:`scale_for` (the MMOD path's ``upsample``,
        ``max_side`` and ``min_face_px``, for SCRFD's 16 px reach); boxes and points are
        mapped back through the resize, axis by axis."""
        if isinstance(image, Tensor):
            img = image
        else:
            with warnings.catch_warnings():  # read-only arrays are fine: never written
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                img = torch.as_tensor(np.asarray(image))
        if img.ndim == 2:
            img = img.unsqueeze(-1).expand(-1, -1, 3)
        h, w = int(img.shape[0]), int(img.shape[1])
        scale = self.scale_for(h, w, upsample, max_side, min_face_px)
        outs, (sx, sy), canvas = self._forward(img, scale)
        boxes, scores, points = decode_outputs(
            outs, canvas, self.strides, self.anchors, self.score_threshold, self.nms_iou,
        )
        per_axis = torch.tensor([sx, sy], dtype=torch.float32, device=boxes.device)
        boxes = (boxes / per_axis.repeat(2)).cpu().numpy().astype(np.float64)
        points = (points / per_axis).cpu().numpy().astype(np.float64)
        out = []
        for b, s, p in zip(boxes, scores.cpu().tolist(), points, strict=True):
            box = Box(round(b[0]), round(b[1]), round(b[2]) - 1, round(b[3]) - 1)
            out.append((box, float(s), p))
        return out


def _fixed_input(model: Any, path: Path) -> int | None:
    """The side of the graph's image input when its height and width are fixed (such a
    graph's canvas, whatever the preset's ``input_size``), else None."""
    from models.backends.onnx_file import graph_io

    h, w = graph_io(model)[0][0][1][2:4]
    if not (isinstance(h, int) and isinstance(w, int)):
        return None
    if h != w:
        raise OnnxModelError(f"{path}: a fixed SCRFD input must be square, this one is {w}x{h}")
    return h


def load_scrfd(path: str | Path, device: torch.device) -> ScrfdDetector:
    """An added SCRFD detector on ``device`` (manifest and hash checked)."""
    from models.backends.onnx_embedder import convert_graph

    path = Path(path)
    manifest = read_onnx_manifest(path)
    if manifest.get("kind") != "detector":
        raise OnnxModelError(f"{path} was added as {manifest.get('kind')!r}, not a detector "
                             "(add it with --preset scrfd)")
    onnx = import_onnx()
    model = onnx.load(str(path))
    check_detector_graph(model, path)
    net, _ = convert_graph(path, model, device)
    settings = dict(manifest["detector"])
    side = _fixed_input(model, path)
    if side is not None:
        settings["input_size"] = side
    return ScrfdDetector(net, settings, device, str(manifest["version"]),
                         fixed_input=side is not None)

"""Box operations as plain functions over tensors (the shape of ``torchvision.ops.boxes``).

Boxes are ``(N, 4)`` tensors of ``(left, top, right, bottom)``. By default they are dlib
style, with **inclusive** right/bottom (a box from 0 to 9 is 10 pixels wide), because that is
what :class:`models.faces.Box` and every dlib model use; ``inclusive=False`` gives the
half-open convention of torchvision.

Areas and ratios are computed in float64 so that integer boxes give exactly the numbers dlib
computes in double; a threshold test that flips on a rounding error would change which face
survives non-maximum suppression.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DLIB_NMS_IOU",
    "box_area",
    "box_intersection",
    "box_iou",
    "dlib_nms",
    "dlib_overlaps",
    "enclosing_iou",
]

# The NMS threshold stored in dlib's mmod_human_face_detector.dat (loss_mmod options).
DLIB_NMS_IOU = 0.3382761351109955


def _as_boxes(boxes: Tensor) -> Tensor:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    return boxes.to(torch.float64)


def _extent(lo: Tensor, hi: Tensor, inclusive: bool) -> Tensor:
    return (hi - lo + (1 if inclusive else 0)).clamp(min=0)


def box_area(boxes: Tensor, inclusive: bool = True) -> Tensor:
    """Area of each box, ``(N,)`` float64; empty boxes (right < left) have area 0."""
    b = _as_boxes(boxes)
    return _extent(b[:, 0], b[:, 2], inclusive) * _extent(b[:, 1], b[:, 3], inclusive)


def box_intersection(boxes1: Tensor, boxes2: Tensor, inclusive: bool = True) -> Tensor:
    """Pairwise intersection areas, ``(N, M)`` float64."""
    a, b = _as_boxes(boxes1), _as_boxes(boxes2)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    return _extent(lt[..., 0], rb[..., 0], inclusive) * _extent(lt[..., 1], rb[..., 1], inclusive)


def box_iou(boxes1: Tensor, boxes2: Tensor, inclusive: bool = True) -> Tensor:
    """Pairwise intersection over (set) union, ``(N, M)`` float64; 0 where nothing overlaps."""
    inter = box_intersection(boxes1, boxes2, inclusive)
    union = box_area(boxes1, inclusive)[:, None] + box_area(boxes2, inclusive)[None, :] - inter
    return torch.where(inter > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def enclosing_iou(boxes1: Tensor, boxes2: Tensor, inclusive: bool = True) -> Tensor:
    """Pairwise intersection over the area of the **smallest rectangle enclosing both**.

    This is the ratio dlib's ``test_box_overlap`` calls IoU (it writes the union as
    ``(a+b).area()``, the bounding rectangle). It is never larger than :func:`box_iou`, so
    dlib's NMS suppresses less than a standard NMS at the same threshold.
    """
    a, b = _as_boxes(boxes1), _as_boxes(boxes2)
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    outer = _extent(lt[..., 0], rb[..., 0], inclusive) * _extent(lt[..., 1], rb[..., 1], inclusive)
    inter = box_intersection(boxes1, boxes2, inclusive)
    return torch.where(inter > 0, inter / outer.clamp(min=1e-12), torch.zeros_like(inter))


def dlib_overlaps(
    boxes1: Tensor,
    boxes2: Tensor,
    iou_thresh: float = DLIB_NMS_IOU,
    percent_covered_thresh: float = 1.0,
) -> Tensor:
    """Pairwise bool ``(N, M)``: dlib's ``test_box_overlap`` on inclusive boxes.

    Two boxes overlap when they intersect and either the enclosing-rectangle IoU exceeds
    ``iou_thresh`` or the intersection covers more than ``percent_covered_thresh`` of either
    box (with the default 1.0 that second test can never fire).
    """
    inter = box_intersection(boxes1, boxes2)
    area1 = box_area(boxes1)[:, None]
    area2 = box_area(boxes2)[None, :]
    covered = (inter / area1.clamp(min=1e-12) > percent_covered_thresh) | (
        inter / area2.clamp(min=1e-12) > percent_covered_thresh
    )
    return (inter > 0) & ((enclosing_iou(boxes1, boxes2) > iou_thresh) | covered)


def dlib_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_thresh: float = DLIB_NMS_IOU,
    percent_covered_thresh: float = 1.0,
) -> Tensor:
    """Greedy NMS exactly as dlib's ``loss_mmod``: indices of kept boxes, best score first.

    Boxes are visited in descending score order and a box is kept unless it overlaps
    (:func:`dlib_overlaps`) a box **already kept**; a suppressed box suppresses nothing.
    The pairwise test is one vectorised matrix; only the greedy walk is a loop.
    """
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    ordered = boxes[order]
    overlaps = dlib_overlaps(ordered, ordered, iou_thresh, percent_covered_thresh).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]

"""Which face of a photo is *the* face, wherever one face must be chosen (verify, enroll, eval).

The rule, in order, each step only deciding among the faces the previous step left tied:

1. **Visible area**: the box clipped to the image. A face cut off by the border keeps its
   full MMOD box, so the raw box area favours exactly the faces that show the least; the
   clipped area does not. Faces whose visible area is within a factor :data:`AREA_RATIO`
   (1.5) of the largest tie: MMOD boxes come in fixed sizes, one per pyramid level, each 1.2x
   the last in width (80, 96, 115, 138 px ...; 1.44x in area), so two faces of about the
   same size can get boxes one step apart; a factor 1.5 spans one step with a margin for
   clipping, and a face two steps (2x the area) larger still wins outright.
2. **Detector confidence**: among faces of about the same visible size, the clearest,
   most frontal one. Confidences within :data:`CONFIDENCE_TOLERANCE` tie: frontal faces
   all score about 1.0-1.1, and ranking them by those last digits picked the wrong face
   (98.38% on LFW against 98.88% with the tolerance).
3. **Nearness to the image centre** (box centre to image centre): photographers frame their
   subject; the last resort, and never a reason on its own to pass over a clearly larger face.

Measured on LFW View-2 (6,000 pairs, dlib ResNet; every detection of the 484 images with
several faces re-embedded, ``benchmarks/bench_face_selection.py``): 98.88% ten-fold, against
97.50% for the largest box and 98.30% for the most confident face; see the README section
"Which face is used".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.boxes import box_iou
from models.faces import Box, Face

__all__ = [
    "AREA_RATIO",
    "CONFIDENCE_TOLERANCE",
    "MIN_IOU",
    "RULE",
    "DecidedBy",
    "FaceNotDetected",
    "Selection",
    "off_centre",
    "primary_face",
    "requested_face",
    "visible_area",
]

RULE = "visible-area>confidence>centre"
AREA_RATIO = 1.5  # visible areas within this factor of the largest tie (one MMOD step)
CONFIDENCE_TOLERANCE = 0.1  # MMOD scores (about 0..1.2) within this tie

# A box the client drew must overlap the detector's box of the face this much (intersection
# over union). Detector boxes of one face drift by a pyramid step between runs of different
# sizes (1.2x: IoU 0.69) and a hand-drawn box is looser still; two faces side by side overlap
# far less than 0.3, so the bound tells faces apart without asking for pixel-exact boxes.
MIN_IOU = 0.3

# Which step of the rule settled the choice: "confidence" and "centre" mean faces of about the
# same size competed, which a client enrolling a group photo should know. "request": the
# client chose the face (``requested_face``), the rule was not applied; "best_match": verify
# compared every face with the claimed subject and took the most similar (``on_multiple=any``).
DecidedBy = Literal["only_face", "visible_area", "confidence", "centre", "request", "best_match"]


class FaceNotDetected(ValueError):
    """The face a client asked for (an index, a box) is not among the detections."""


@dataclass(frozen=True)
class Selection:
    """The chosen face, its index in the detector's list, and why (a step and a sentence)."""

    index: int
    face: Face
    rule: str
    decided_by: DecidedBy
    reason: str
    faces_detected: int


def visible_area(box: Box, image_height: int, image_width: int) -> int:
    """Pixels of ``box`` inside the image (``right``/``bottom`` inclusive, dlib style)."""
    width = min(box.right, image_width - 1) - max(box.left, 0) + 1
    height = min(box.bottom, image_height - 1) - max(box.top, 0) + 1
    return max(width, 0) * max(height, 0)


def off_centre(box: Box, image_height: int, image_width: int) -> float:
    """Distance in pixels from the box centre to the image centre."""
    dx = (box.left + box.right) / 2 - (image_width - 1) / 2
    dy = (box.top + box.bottom) / 2 - (image_height - 1) / 2
    return float(np.hypot(dx, dy))


def primary_face(
    faces: Sequence[Face],
    image_height: int,
    image_width: int,
    *,
    area_ratio: float = AREA_RATIO,
    confidence_tolerance: float = CONFIDENCE_TOLERANCE,
) -> Selection | None:
    """The photo's primary face by the module's rule, or None when there is no face.

    The tolerances are parameters only so that ``benchmarks/bench_face_selection.py`` can
    measure other values with this same function; callers use the defaults."""
    if not faces:
        return None
    n = len(faces)
    if n == 1:
        return Selection(0, faces[0], RULE, "only_face", "the only face detected", 1)
    areas = [visible_area(f.box, image_height, image_width) for f in faces]
    largest = max(areas)
    tied = [i for i in range(n) if areas[i] * area_ratio >= largest]
    if len(tied) == 1:
        chosen = tied[0]
        runner_up = max(a for i, a in enumerate(areas) if i != chosen)
        share = runner_up / largest if largest else 0.0
        cut = " (the rest cut off by the border or smaller)" if _cut_off(faces, areas) else ""
        return Selection(
            chosen, faces[chosen], RULE, "visible_area",
            f"the largest visible face of {n}; the next is {share:.0%} of its area{cut}", n,
        )
    best_conf = max(faces[i].confidence for i in tied)
    confident = [i for i in tied if faces[i].confidence >= best_conf - confidence_tolerance]
    if len(confident) == 1:
        chosen = confident[0]
        others = max(faces[i].confidence for i in tied if i != chosen)
        return Selection(
            chosen, faces[chosen], RULE, "confidence",
            f"{len(tied)} of {n} faces are about the same visible size; this one is the most "
            f"confident detection ({faces[chosen].confidence:.2f} against {others:.2f})", n,
        )
    chosen = min(confident, key=lambda i: off_centre(faces[i].box, image_height, image_width))
    return Selection(
        chosen, faces[chosen], RULE, "centre",
        f"{len(confident)} of {n} faces are about the same visible size and detection "
        "confidence; this one is nearest the centre of the photo", n,
    )


def _cut_off(faces: Sequence[Face], areas: Sequence[int]) -> bool:
    """Whether some face loses part of its box to the border."""
    return any(a < f.box.area for f, a in zip(faces, areas, strict=True))


def requested_face(
    faces: Sequence[Face],
    *,
    box: Sequence[float] | None = None,
    index: int | None = None,
    min_iou: float = MIN_IOU,
) -> Selection | None:
    """The face a client chose, instead of the rule: ``index`` in the detector's order (most
    confident first: the order of POST /embed and POST /identify for the same photo and
    settings), or the detection that best overlaps ``box`` (left, top, right, bottom in the
    photo's pixels, inclusive like every box of the API) with IoU at least ``min_iou``.
    ``FaceNotDetected`` when there is no such face; None when the photo has no face at all."""
    if (box is None) == (index is None):
        raise ValueError("give box or index")
    n = len(faces)
    if n == 0:
        return None
    if index is not None:
        if not 0 <= index < n:
            raise FaceNotDetected(
                f"face index {index} does not exist: {n} face(s) detected (indices 0-{n - 1}, "
                "in the order POST /embed and POST /identify list them)"
            )
        return Selection(index, faces[index], "request", "request",
                         f"face {index} of {n}, as the request asked", n)
    wanted = torch.tensor([[float(v) for v in box]], dtype=torch.float64)
    found = torch.tensor([f.box.as_tuple() for f in faces], dtype=torch.float64)
    ious = box_iou(wanted, found)[0]
    best = int(torch.argmax(ious))
    iou = float(ious[best])
    if iou < min_iou:
        raise FaceNotDetected(
            f"no detected face matches the box: the best of {n} overlaps it with IoU {iou:.2f}, "
            f"below {min_iou} (boxes are [left, top, right, bottom] in the photo's pixels)"
        )
    return Selection(best, faces[best], "request", "request",
                     f"the face of {n} that best overlaps the requested box (IoU {iou:.2f})", n)

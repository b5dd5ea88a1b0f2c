"""The one primary-face rule: visible area, then confidence, then nearness to the centre."""

from __future__ import annotations

import numpy as np
import pytest

from models.face_selection import (
    MIN_IOU,
    RULE,
    FaceNotDetected,
    primary_face,
    requested_face,
    visible_area,
)
from models.faces import Box, Face

H, W = 250, 250  # an LFW-sized photo


def face(left: int, top: int, side: int, confidence: float = 1.0) -> Face:
    box = Box(left, top, left + side - 1, top + side - 1)
    return Face(box=box, confidence=confidence, landmarks=np.zeros((5, 2), np.float32))


def test_no_face_and_one_face() -> None:
    assert primary_face([], H, W) is None
    only = face(200, 200, 80, confidence=0.1)  # small, off-centre, unsure: still the face
    chosen = primary_face([only], H, W)
    assert chosen is not None and chosen.face is only and chosen.index == 0
    assert (chosen.decided_by, chosen.faces_detected, chosen.rule) == ("only_face", 1, RULE)


def test_visible_area_clips_the_box_to_the_image() -> None:
    assert visible_area(Box(0, 0, 79, 79), H, W) == 6400
    assert visible_area(Box(-40, 0, 39, 79), H, W) == 40 * 80
    assert visible_area(Box(200, 200, 299, 299), H, W) == 50 * 50
    assert visible_area(Box(300, 0, 379, 79), H, W) == 0  # wholly outside


def test_a_face_cut_off_by_the_border_loses_to_the_whole_centred_face() -> None:
    # The cut-off face has the larger MMOD box (96 px against 80 px) and is the more
    # confident, so "largest box" and "most confident" pick it; only 36 x 96 of it is inside.
    cut = face(-60, 60, 96, confidence=1.08)
    centred = face(85, 85, 80, confidence=0.9)
    assert cut.box.area > centred.box.area
    chosen = primary_face([cut, centred], H, W)
    assert chosen is not None and chosen.face is centred and chosen.index == 1
    assert chosen.decided_by == "visible_area"
    assert "cut off" in chosen.reason and "of 2" in chosen.reason


def test_a_clearly_larger_face_wins_even_off_centre_and_less_confident() -> None:
    big = face(0, 0, 120, confidence=0.5)
    small = face(95, 95, 80, confidence=1.1)
    chosen = primary_face([small, big], H, W)
    assert chosen is not None and chosen.face is big and chosen.decided_by == "visible_area"


def test_near_tie_in_area_goes_to_the_more_confident_face() -> None:
    # 84 px against 80 px: about the same scale, not a difference in prominence.
    background = face(150, 10, 84, confidence=0.45)
    subject = face(10, 120, 80, confidence=1.07)
    chosen = primary_face([background, subject], H, W)
    assert chosen is not None and chosen.face is subject
    assert chosen.decided_by == "confidence" and "1.07" in chosen.reason


def test_same_size_and_confidence_goes_to_the_face_nearest_the_centre() -> None:
    aside = face(0, 0, 80, confidence=1.08)
    centred = face(90, 90, 80, confidence=1.05)  # within the confidence tolerance
    other = face(170, 170, 80, confidence=1.06)
    chosen = primary_face([aside, other, centred], H, W)
    assert chosen is not None and chosen.face is centred and chosen.index == 2
    assert chosen.decided_by == "centre" and chosen.faces_detected == 3


def test_the_choice_does_not_depend_on_the_order_of_the_faces() -> None:
    faces = [face(-30, 60, 96, 1.0), face(90, 80, 80, 1.0), face(170, 0, 80, 0.4)]
    picks = {id(primary_face(list(order), H, W).face)  # type: ignore[union-attr]
             for order in (faces, faces[::-1], faces[1:] + faces[:1])}
    assert picks == {id(faces[1])}


@pytest.mark.parametrize("side", [96, 90, 80])
def test_one_mmod_size_step_is_a_tie_two_steps_are_not(side: int) -> None:
    # MMOD boxes come 80, 96, 115 px wide: faces one step apart (up to 1.44x the area) are
    # at about the same scale, so confidence decides between them.
    unsure = face(120, 120, 96, confidence=0.3)
    sure = face(0, 0, side, confidence=1.1)
    chosen = primary_face([unsure, sure], H, W)
    assert chosen is not None and chosen.face is sure and chosen.decided_by == "confidence"
    # 115 against 80 px (2.07x the area): the larger face wins whatever the confidences.
    larger = face(120, 120, 115, confidence=0.3)
    chosen = primary_face([larger, face(0, 0, 80, confidence=1.1)], H, W)
    assert chosen is not None and chosen.face is larger and chosen.decided_by == "visible_area"


# ---------------------------------------------------------------- a face the client chose


def test_requested_face_by_index_and_by_box() -> None:
    faces = [face(0, 0, 100), face(200, 0, 60)]  # the first is the larger, the primary
    chosen = requested_face(faces, index=1)
    assert chosen is not None and chosen.face is faces[1] and chosen.decided_by == "request"
    # A loose hand-drawn box over the second face: about 0.5 IoU.
    chosen = requested_face(faces, box=[190, -10, 270, 70])
    assert chosen is not None and chosen.index == 1 and "IoU" in chosen.reason
    assert requested_face([], index=0) is None  # no face at all: the caller's no_face


@pytest.mark.parametrize(("box", "index"), [
    (None, 2), (None, -1),
    ([120, 0, 180, 60], None),  # between the two faces, overlapping neither
    ([0, 0, 299, 299], None),  # around both: IoU 1/9 with the larger
])
def test_requested_face_that_is_not_there(box: list[float] | None, index: int | None) -> None:
    faces = [face(0, 0, 100), face(200, 0, 60)]
    with pytest.raises(FaceNotDetected):
        requested_face(faces, box=box, index=index)


def test_min_iou_separates_neighbours_but_forgives_a_pyramid_step() -> None:
    """Two faces side by side overlap far less than MIN_IOU; one face's box at the next
    detector scale (1.2x) overlaps itself well above it."""
    one, step = face(100, 100, 80), face(92, 92, 96)
    assert requested_face([one], box=list(step.box.as_tuple())) is not None
    neighbour = face(170, 100, 80)  # touching, overlapping by 10 px
    with pytest.raises(FaceNotDetected):
        requested_face([neighbour], box=list(one.box.as_tuple()))
    assert 0.0 < MIN_IOU < 0.69

"""Which face of a photo enroll and verify use, and one person per photo in POST /identify.

A scripted pipeline sets each scene's faces (box, confidence) and their embeddings exactly, so
a test knows which face a similarity came from.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.faces import Box, Face
from service.api.routes.common import one_subject_per_photo
from service.api.schemas import Candidate
from tests.service.conftest import AppFactory, FakePipeline, fake_photo

ANN = np.eye(128, dtype=np.float32)[0]
BOB = np.eye(128, dtype=np.float32)[1]
MOSTLY_ANN = (0.95 * ANN + 0.31 * BOB) / np.linalg.norm(0.95 * ANN + 0.31 * BOB)  # ann .95, bob .31
CENTRE = Box(160, 20, 239, 99)  # fake photos are 400 x 120
# A bystander cut off by the left border: the larger MMOD box (110 px), a third of it visible.
CUT_OFF = Box(-80, 5, 29, 114)

SCENES: dict[int, list[tuple[Box, float, np.ndarray]]] = {
    1: [(CENTRE, 0.9, ANN)],
    2: [(CENTRE, 0.9, BOB)],
    3: [(CUT_OFF, 0.95, BOB), (CENTRE, 0.9, ANN)],
    # Two faces that both look most like ann; the second is ann herself.
    4: [(Box(20, 20, 99, 99), 0.95, MOSTLY_ANN), (Box(250, 20, 329, 99), 0.9, ANN)],
}


class ScriptedPipeline(FakePipeline):
    """The scene is ``fake_photo``'s ``faces`` pixel; chips carry (scene, face index)."""

    def detect(self, image: np.ndarray, min_face_px: int | None = None) -> list[Face]:
        scene = int(image[0, 0, 0])
        return [
            Face(box=box, confidence=conf,
                 landmarks=np.array([[scene, i]] * 5, dtype=np.float32))
            for i, (box, conf, _) in enumerate(SCENES.get(scene, []))
        ]

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        chips = np.zeros((len(faces), 150, 150, 3), dtype=np.uint8)
        for j, face in enumerate(faces):
            chips[j, 0, 0, :2] = face.landmarks[0]
        return chips

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        if not all(int(c[0, 0, 0]) in SCENES for c in chips):  # the service's warm-up pass
            return super().embed_chips(chips)
        return np.stack([SCENES[int(c[0, 0, 0])][int(c[0, 0, 1])][2] for c in chips])


@pytest.fixture
def scripted(make_client: AppFactory) -> TestClient:
    # Its chips are blank markers, not faces: the quality limits are not what is tested here.
    off = dict.fromkeys(("enroll_min_eye_distance", "enroll_min_sharpness",
                         "enroll_min_contrast", "enroll_max_dark_share"), "none")
    return make_client(ScriptedPipeline(), **off)


def photo(scene: int, variant: int = 0) -> tuple[str, bytes, str]:
    return ("p.png", fake_photo(1, faces=scene, variant=variant), "image/png")


def test_enroll_takes_the_whole_central_face_not_the_cut_off_one(scripted: TestClient) -> None:
    r = scripted.post("/enroll", files={"image": photo(3)}, data={"subject_id": "ann"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["bbox"] == {"left": 160, "top": 20, "right": 239, "bottom": 99}
    assert body["faces_detected"] == 2
    selection = body["face_selection"]
    assert selection["decided_by"] == "visible_area" and selection["faces_detected"] == 2
    assert selection["rule"] == "visible-area>confidence>centre"
    assert "cut off" in selection["reason"]
    # The stored template is ann's (the bystander is bob): a photo of ann alone verifies.
    r = scripted.post("/verify", files={"image": photo(1)}, data={"subject_id": "ann"})
    assert r.json()["similarity"] == pytest.approx(1.0, abs=1e-6)


def test_enroll_of_one_face_says_so(scripted: TestClient) -> None:
    body = scripted.post("/enroll", files={"image": photo(2)}, data={"subject_id": "bob"}).json()
    assert body["face_selection"]["decided_by"] == "only_face"
    assert body["face_selection"]["faces_detected"] == 1


def test_on_multiple_largest_is_the_older_name_of_primary(scripted: TestClient) -> None:
    for variant, value in enumerate(("largest", "primary")):
        r = scripted.post("/enroll", files={"image": photo(3, variant=variant)},
                          data={"subject_id": "ann", "on_multiple": value})
        assert r.status_code == 201, r.text
        assert r.json()["bbox"]["left"] == 160
    r = scripted.post("/enroll", files={"image": photo(3, variant=9)},
                      data={"subject_id": "ann", "on_multiple": "reject"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "multiple_faces"


def test_verify_two_images_uses_the_primary_face_of_each(scripted: TestClient) -> None:
    r = scripted.post("/verify", files={"image_a": photo(3), "image_b": photo(1)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["match"] is True and body["similarity"] == pytest.approx(1.0, abs=1e-6)
    a, b = body["faces"]
    assert a["bbox"]["left"] == 160 and a["faces_detected"] == 2
    assert a["face_selection"]["decided_by"] == "visible_area"
    assert b["face_selection"]["decided_by"] == "only_face"


def test_verify_against_a_subject_uses_the_primary_face(scripted: TestClient) -> None:
    assert scripted.post("/enroll", files={"image": photo(1)},
                         data={"subject_id": "ann"}).status_code == 201
    r = scripted.post("/verify", files={"image": photo(3)}, data={"subject_id": "ann"})
    body = r.json()
    assert body["match"] is True and body["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert body["faces"][0]["face_selection"]["faces_detected"] == 2
    assert body["faces"][1]["source"] == "template" and body["faces"][1]["face_selection"] is None


# ---------------------------------------------------------------- one person per photo


def cand(subject: str, similarity: float) -> Candidate:
    return Candidate(subject_id=subject, face_id=f"{subject}-face", similarity=similarity)


def test_the_better_scoring_face_keeps_the_subject() -> None:
    per_face = [
        [cand("ann", 0.95), cand("bob", 0.70)],
        [cand("ann", 0.99), cand("cid", 0.40)],
    ]
    matches = one_subject_per_photo(per_face, threshold=0.6)
    assert [m.subject_id if m else None for m in matches] == ["bob", "ann"]
    # The next candidate below the threshold: unknown, not a weak match.
    matches = one_subject_per_photo(per_face, threshold=0.8)
    assert [m.subject_id if m else None for m in matches] == [None, "ann"]


def test_falling_back_can_cascade_and_never_reuses_a_subject() -> None:
    per_face = [
        [cand("ann", 0.90), cand("bob", 0.85), cand("cid", 0.80)],
        [cand("ann", 0.95), cand("bob", 0.60)],
        [cand("bob", 0.92), cand("ann", 0.70)],
        [],
    ]
    matches = one_subject_per_photo(per_face, threshold=0.5)
    assert [m.subject_id if m else None for m in matches] == ["cid", "ann", "bob", None]
    assert matches[0] is per_face[0][2]  # the candidate itself, similarity unchanged


def test_no_conflict_leaves_every_first_candidate_and_ties_go_to_the_earlier_face() -> None:
    per_face = [[cand("ann", 0.9)], [cand("bob", 0.8)], [cand("cid", 0.3)]]
    matches = one_subject_per_photo(per_face, threshold=0.5)
    assert [m.subject_id if m else None for m in matches] == ["ann", "bob", None]
    tie = [[cand("ann", 0.9)], [cand("ann", 0.9)]]
    assert [m.subject_id if m else None for m in one_subject_per_photo(tie, 0.5)] == ["ann", None]


def test_identify_gives_a_subject_to_one_face_of_a_photo_at_most(scripted: TestClient) -> None:
    for subject, scene in (("ann", 1), ("bob", 2)):
        r = scripted.post("/enroll", files={"image": photo(scene)}, data={"subject_id": subject})
        assert r.status_code == 201, r.text
    r = scripted.post("/identify", files={"image": photo(4)}, data={"threshold": "0.3"})
    assert r.status_code == 200, r.text
    first, second = r.json()["faces"]
    # Both faces rank ann first; ann herself (1.0) keeps her, the other face falls to bob.
    assert first["candidates"][0]["subject_id"] == "ann"
    assert first["candidates"][0]["similarity"] == pytest.approx(0.9507, abs=1e-3)
    assert first["match"]["subject_id"] == "bob"
    assert second["match"]["subject_id"] == "ann"
    # With bob below the threshold the first face is unknown rather than a second ann.
    r = scripted.post("/identify", files={"image": photo(4)}, data={"threshold": "0.5"})
    first, second = r.json()["faces"]
    assert first["match"] is None and second["match"]["subject_id"] == "ann"


# ---------------------------------------------------------------- the client chooses (issue 20)


def test_enroll_a_chosen_face_by_index_or_box_instead_of_the_primary(
    scripted: TestClient,
) -> None:
    """Scene 3: bob cut off by the border (face 0), ann in the centre (face 1, the primary).
    The receptionist enrolls bob from it by naming his face."""
    listed = scripted.post("/embed", files={"image": photo(3)}).json()["faces"]
    assert [f["bbox"]["left"] for f in listed] == [CUT_OFF.left, CENTRE.left]
    r = scripted.post("/enroll", files={"image": photo(3)},
                      data={"subject_id": "bob", "face": '{"index": 0}'})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["bbox"] == listed[0]["bbox"]
    assert body["face_selection"]["decided_by"] == "request"
    assert body["face_selection"]["faces_detected"] == 2
    # The stored template is bob's: a photo of bob alone verifies, one of ann does not.
    r = scripted.post("/verify", files={"image": photo(2)}, data={"subject_id": "bob"})
    assert r.json()["similarity"] == pytest.approx(1.0, abs=1e-6)
    # A hand-drawn box, a few pixels off, over ann's face (JSON body this time).
    image = base64.b64encode(fake_photo(1, faces=3, variant=1)).decode()
    r = scripted.post("/enroll", json={"image": image, "subject_id": "ann",
                                       "face": {"box": [165, 25, 245, 105]}})
    assert r.status_code == 201, r.text
    assert r.json()["bbox"]["left"] == CENTRE.left
    assert "IoU" in r.json()["face_selection"]["reason"]


@pytest.mark.parametrize(("face", "code"), [
    ('{"index": 2}', "face_not_detected"),  # two faces: indices 0 and 1
    ('{"box": [300, 0, 399, 20]}', "face_not_detected"),  # overlaps nobody
    ('{"box": [1, 2, 3]}', "invalid_field"),
    ('{"index": 0, "box": [0, 0, 9, 9]}', "invalid_field"),
    ('not json', "invalid_field"),
])
def test_a_face_that_is_not_detected_is_refused_and_nothing_is_stored(
    scripted: TestClient, face: str, code: str
) -> None:
    r = scripted.post("/enroll", files={"image": photo(3)},
                      data={"subject_id": "bob", "face": face})
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert scripted.get("/subjects/bob").status_code == 404


def test_face_goes_with_one_image_and_not_with_on_multiple_reject(scripted: TestClient) -> None:
    r = scripted.post("/enroll", files=[("images", photo(3)), ("images", photo(1))],
                      data={"subject_id": "bob", "face": '{"index": 0}'})
    assert r.status_code == 422 and "image, not images" in r.json()["error"]["message"]
    r = scripted.post("/enroll", files={"image": photo(3)},
                      data={"subject_id": "bob", "face": '{"index": 0}', "on_multiple": "reject"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"


def test_verify_on_multiple_any_finds_the_claimed_person_anywhere(scripted: TestClient) -> None:
    """Scene 3 shows bob cut off at the border beside ann: by the primary-face rule ann is
    compared (no match for bob); with ``any`` bob is found; ``reject`` refuses the photo."""
    assert scripted.post("/enroll", files={"image": photo(2)},
                         data={"subject_id": "bob"}).status_code == 201
    primary = scripted.post("/verify", files={"image": photo(3)},
                            data={"subject_id": "bob"}).json()
    assert primary["match"] is False and primary["faces"][0]["bbox"]["left"] == CENTRE.left
    r = scripted.post("/verify", files={"image": photo(3)},
                      data={"subject_id": "bob", "on_multiple": "any"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["match"] is True and body["similarity"] == pytest.approx(1.0, abs=1e-6)
    probe = body["faces"][0]
    assert probe["bbox"]["left"] == CUT_OFF.left and probe["faces_detected"] == 2
    assert probe["face_selection"]["decided_by"] == "best_match"
    r = scripted.post("/verify", files={"image": photo(3)},
                      data={"subject_id": "bob", "on_multiple": "reject"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "multiple_faces"
    # One face: reject lets it through, any answers with it.
    for policy in ("reject", "any"):
        r = scripted.post("/verify", files={"image": photo(2, variant=1)},
                          data={"subject_id": "bob", "on_multiple": policy})
        assert r.status_code == 200 and r.json()["match"] is True, r.text
    r = scripted.post("/verify", files={"image_a": photo(3), "image_b": photo(1)},
                      data={"on_multiple": "reject"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "multiple_faces"
    r = scripted.post("/verify", files={"image_a": photo(3), "image_b": photo(1)},
                      data={"on_multiple": "any"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"

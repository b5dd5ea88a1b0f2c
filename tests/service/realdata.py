"""Real identities from ../shared/data for the acceptance tests (TestClient and real server).

Deterministic picks, so a failure names the same photo every run:

* ``PEOPLE_ENROLL``: one photo of each of the five named people of ``people/train``;
  ``PEOPLE_PROBES``: their other photos, with the enrolled people each shows.
* ``lfw_people``: the first LFW people (by name) with two or more photos (photo 1 is enrolled,
  the next ones are probes) and the first with a single photo (never enrolled: strangers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEOPLE_ENROLL = {
    "alex_lacamoire": "train/alex_lacamoire/img1.jpg",
    "biden": "train/biden/biden.jpg",
    "kit_harington": "train/kit_harington/john1.jpeg",
    "obama": "train/obama/obama.jpg",
    "rose_leslie": "train/rose_leslie/img1.jpg",
}
# Probe photo -> the enrolled people in it (one face each).
PEOPLE_PROBES = {
    "train/biden/biden2.jpg": ["biden"],
    "train/kit_harington/john2.jpeg": ["kit_harington"],
    "train/obama/obama2.jpg": ["obama"],
    "train/rose_leslie/img2.jpg": ["rose_leslie"],
    "test/alex_lacamoire1.jpg": ["alex_lacamoire"],
    "test/johnsnow_test1.jpg": ["kit_harington"],
    "test/obama1.jpg": ["obama"],
    "test/kit_with_rose.jpg": ["kit_harington", "rose_leslie"],
    "test/obama_and_biden.jpg": ["biden", "obama"],
    "misc/obama-480p.jpg": ["obama"],
}
LFW_SIDE = 250  # LFW deep-funneled photos are 250x250 with their person in the centre


@dataclass(frozen=True)
class LfwPerson:
    name: str
    enroll: Path
    probes: list[Path]


def lfw_people(
    lfw: Path, enrolled: int, strangers: int, *, skip: int = 0, max_probes: int = 2
) -> tuple[list[LfwPerson], list[Path]]:
    """The first ``enrolled`` people with >= 2 photos after the first ``skip`` of them, and the
    first ``strangers`` people with exactly one photo (after ``skip`` of those too)."""
    people: list[LfwPerson] = []
    singles: list[Path] = []
    seen_people = seen_singles = 0
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2 and len(people) < enrolled:
            seen_people += 1
            if seen_people > skip:
                people.append(LfwPerson(person.name, photos[0], photos[1 : 1 + max_probes]))
        elif len(photos) == 1 and len(singles) < strangers:
            seen_singles += 1
            if seen_singles > skip:
                singles.append(photos[0])
        if len(people) == enrolled and len(singles) == strangers:
            break
    return people, singles


def central_face(faces: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The face an LFW photo is about: the one nearest the centre (others are bystanders)."""
    def offset(face: dict[str, Any]) -> float:
        box = face["bbox"]
        cx, cy = (box["left"] + box["right"]) / 2, (box["top"] + box["bottom"]) / 2
        return abs(cx - LFW_SIDE / 2) + abs(cy - LFW_SIDE / 2)

    return min(faces, key=offset) if faces else None

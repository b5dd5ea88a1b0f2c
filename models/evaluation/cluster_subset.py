"""The LFW subset that ``faceserve eval cluster`` clusters: photo-album-like, seeded.

An album holds a few people many times and many people once. The subset takes seeded
people with two or more photos (at most ``per_person`` photos each, so George W. Bush's 530
do not swamp everyone) until ``people_images`` photos are taken, plus ``distractors`` photos
of people who appear only once in LFW (faces that should stay alone).
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["cluster_subset"]


def cluster_subset(
    image_dir: Path,
    *,
    people_images: int = 5000,
    distractors: int = 1000,
    per_person: int = 20,
    seed: int = 0,
) -> tuple[list[Path], list[str]]:
    """(image paths, identity of each) of the subset, in a fixed order."""
    people: dict[str, list[Path]] = {}
    for path in sorted(image_dir.glob("*/*.jpg")):
        people.setdefault(path.parent.name, []).append(path)
    if not people:
        raise FileNotFoundError(f"no <Name>/<image>.jpg under {image_dir}")
    rng = random.Random(seed)
    multi = [n for n, p in people.items() if len(p) >= 2]
    single = [n for n, p in people.items() if len(p) == 1]
    rng.shuffle(multi)
    rng.shuffle(single)
    paths: list[Path] = []
    labels: list[str] = []
    for name in multi:
        if len(paths) >= people_images:
            break
        taken = people[name][:per_person]
        paths += taken
        labels += [name] * len(taken)
    for name in single[:distractors]:
        paths.append(people[name][0])
        labels.append(name)
    return paths, labels

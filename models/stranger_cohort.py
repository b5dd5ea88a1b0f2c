"""A user's own impostor reference, from photos of people who will never be enrolled.

The shipped reference (``models/calibration/<model>.json``) describes LFW's press photos.
Identification thresholds already move with the gallery's own impostor statistics
(``models.fpir``), but a gallery of a few people says little, and a kiosk's camera, light and
population can sit far from LFW. Photos of strangers taken by the deployment's own cameras
measure where *its* impostor similarities lie: their mean and spread replace LFW's, weighted as
many subjects as the cohort has people. The shape of the far tail (rates below 1 in 10^4, which
a few hundred photos cannot measure) stays the model's.

Only statistics are kept (three numbers and the tail), never the photos or their embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.fpir import FpirRule, ImpostorTail, cohort_stats, load_reference

__all__ = ["MIN_PEOPLE", "cohort_photos", "stranger_reference"]

log = logging.getLogger(__name__)

MIN_PEOPLE = 20  # below this the mean and spread are too uncertain to replace the model's
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def cohort_photos(root: Path) -> list[tuple[str, Path]]:
    """(person, photo) for every image under ``root``: a sub-folder is one person (several
    photos of one person are fine); an image directly in ``root`` is a person of its own."""
    out: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            rel = path.relative_to(root)
            person = rel.parts[0] if len(rel.parts) > 1 else rel.stem
            out.append((person, path))
    return out


def stranger_reference(
    pipeline: Any,
    photos: Sequence[tuple[str, Path]],
    *,
    source: str,
    progress: bool = True,
) -> tuple[FpirRule, dict[str, int]]:
    """The reference for ``pipeline``'s model from these strangers' photos, and counts of
    what was used (photos with a face, without one, unreadable)."""
    from tqdm import tqdm

    from models.imageio import ImageError, decode_image

    vectors: list[np.ndarray] = []
    people: list[str] = []
    counts = {"photos": len(photos), "used": 0, "no_face": 0, "unreadable": 0}
    for person, path in tqdm(photos, desc="embedding strangers", unit="photo",
                             disable=not progress):
        try:
            image = decode_image(path.read_bytes())
        except (OSError, ImageError) as exc:
            log.warning("skipping %s: %s", path, exc)
            counts["unreadable"] += 1
            continue
        faces = pipeline.embed_image(image)
        if not faces:
            counts["no_face"] += 1
            continue
        vectors.append(faces[0].embedding)  # the most confident face
        people.append(person)
        counts["used"] += 1
    distinct = len(set(people))
    if distinct < MIN_PEOPLE:
        raise ValueError(
            f"faces of {distinct} different people found; at least {MIN_PEOPLE} are needed to "
            "estimate where strangers' similarities lie (more is better: a few hundred)"
        )
    stats = cohort_stats(np.stack(vectors), np.array(people), max_faces=len(vectors))
    shipped = load_reference(pipeline.model_version)
    tail = shipped.tail if shipped is not None else ImpostorTail.gaussian()
    rule = FpirRule(
        model=pipeline.model_version,
        reference=stats,
        tail=ImpostorTail(tail.log10_p, tail.z, f"{source} (tail: {tail.source})"),
        prior_subjects=distinct,
    )
    return rule, counts

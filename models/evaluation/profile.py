"""The operating-point profile: similarity thresholds calibrated for target false-accept rates.

``faceserve eval lfw`` writes it; the service reads it when its threshold is ``far=1e-3``
(``service.config.resolve_operating_point``, which needs ``model``, ``metric`` and
``operating_points[].far/threshold/tar``; ``tests/models/test_eval_lfw.py`` checks that it
reads what this module writes). Layout::

    {"model": "dlib-resnet-v1", "dataset": "lfw-view2", "created_at": "...",
     "metric": "cosine", "flip": false, "notes": ["..."],
     "operating_points": [{"far": 0.001, "threshold": 0.91, "tar": 0.98,
                           "impostor_pairs": 3000, "far_measured": 0.001,
                           "genuine_pairs": 3000}, ...]}

A FAR is only written when the impostor pairs can
resolve it: with N impostor pairs the smallest non-zero FAR that can be measured is 1/N (one
accepted impostor). Below that, the only thing the data says is "no impostor was accepted",
which is as true of a FAR of 1e-4 as of 1e-3, so such a threshold would be invented rather
than measured; the profile's notes say so instead.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.evaluation.metrics import Roc, min_resolvable_far, tar_at_far

__all__ = [
    "PROFILE_FARS",
    "OperatingProfile",
    "ProfilePoint",
    "build_profile",
    "load_profile",
    "write_profile",
]

PROFILE_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)

# Below this many accepted impostors a threshold is written but flagged as coarse: moving it
# by one impostor pair changes the measured FAR by a large factor.
_FEW_IMPOSTORS = 10


@dataclass(frozen=True)
class ProfilePoint:
    far: float  # target false-accept rate
    threshold: float  # cosine similarity; accept iff similarity >= threshold
    tar: float  # true-accept rate measured at that threshold
    impostor_pairs: int
    far_measured: float | None = None
    genuine_pairs: int | None = None


@dataclass(frozen=True)
class OperatingProfile:
    model: str
    dataset: str
    created_at: str
    metric: str
    operating_points: tuple[ProfilePoint, ...]
    notes: tuple[str, ...] = ()
    flip: bool | None = None

    def point_for(self, far: float) -> ProfilePoint:
        for point in self.operating_points:
            if math.isclose(point.far, far, rel_tol=1e-6):
                return point
        available = ", ".join(f"{p.far:g}" for p in self.operating_points) or "none"
        why = f" Notes: {' '.join(self.notes)}" if self.notes else ""
        raise KeyError(
            f"the {self.model} profile ({self.dataset}) has no operating point for FAR {far:g}; "
            f"available: {available}.{why}"
        )

    def threshold_for(self, far: float) -> float:
        """The similarity threshold for ``far``; ``KeyError`` (saying why) if it is not there."""
        return self.point_for(far).threshold

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "created_at": self.created_at,
            "metric": self.metric,
            "operating_points": [
                {k: v for k, v in asdict(p).items() if v is not None}
                for p in self.operating_points
            ],
            "notes": list(self.notes),
        }
        if self.flip is not None:
            out["flip"] = self.flip
        return out


def build_profile(
    roc: Roc,
    *,
    model: str,
    dataset: str,
    flip: bool | None = None,
    fars: Sequence[float] = PROFILE_FARS,
    created_at: str | None = None,
    notes: Sequence[str] = (),
) -> OperatingProfile:
    """Operating points for ``fars`` from the ROC of all pairs; unresolvable FARs -> notes."""
    points: list[ProfilePoint] = []
    out_notes = list(notes)
    for far in fars:
        point = tar_at_far(roc, far)
        if not point.resolvable:
            need = math.ceil(1 / far)
            out_notes.append(
                f"FAR {far:g} omitted: {roc.n_neg} impostor pairs resolve false-accept rates "
                f"only down to 1/{roc.n_neg} = {min_resolvable_far(roc.n_neg):.2g} (one accepted "
                f"impostor); estimating {far:g} needs at least {need} impostor pairs, and "
                f"several times that for a stable threshold."
            )
            continue
        accepted = round(point.far_measured * roc.n_neg)
        if far * roc.n_neg < _FEW_IMPOSTORS:
            out_notes.append(
                f"FAR {far:g} rests on {accepted} accepted impostor pair(s) out of {roc.n_neg}: "
                f"its threshold is coarse (one more or fewer impostor changes the FAR by "
                f"{1 / roc.n_neg:.2g})."
            )
        points.append(
            ProfilePoint(
                far=far,
                threshold=point.threshold,
                tar=point.tar,
                impostor_pairs=roc.n_neg,
                far_measured=point.far_measured,
                genuine_pairs=roc.n_pos,
            )
        )
    return OperatingProfile(
        model=model,
        dataset=dataset,
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        metric="cosine",
        operating_points=tuple(points),
        notes=tuple(out_notes),
        flip=flip,
    )


def write_profile(profile: OperatingProfile, path: str | Path) -> Path:
    """Write atomically (a reader never sees half a profile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(profile.to_dict(), fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the service may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_profile(path: str | Path) -> OperatingProfile:
    """Read a profile; ``ValueError`` naming the file if it is not one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("operating_points"), list):
        raise ValueError(f"{path}: not an operating-point profile (no operating_points list)")
    try:
        points = tuple(
            ProfilePoint(
                far=float(p["far"]),
                threshold=float(p["threshold"]),
                tar=float(p["tar"]),
                impostor_pairs=int(p["impostor_pairs"]),
                far_measured=None if p.get("far_measured") is None else float(p["far_measured"]),
                genuine_pairs=None if p.get("genuine_pairs") is None else int(p["genuine_pairs"]),
            )
            for p in raw["operating_points"]
        )
        return OperatingProfile(
            model=str(raw["model"]),
            dataset=str(raw.get("dataset", "")),
            created_at=str(raw.get("created_at", "")),
            metric=str(raw.get("metric", "cosine")),
            operating_points=points,
            notes=tuple(str(n) for n in raw.get("notes") or ()),
            flip=raw.get("flip"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed operating-point profile ({exc!r})") from None

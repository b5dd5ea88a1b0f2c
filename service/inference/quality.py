"""Face quality in the API: the response model of a face's measures, and the enrollment gate.

The measures are computed with the faces (``service.inference.inference``, ``models.quality``); here
they become the ``Quality`` response field, and enrollment refuses faces that break the
configured limits. Only enrollment gates on quality: a template is compared with every later
probe, so a poor one costs on every search, while identify and verify only report quality
(the client decides what to do with a poor probe).
"""

from __future__ import annotations

from models.quality import FaceQuality, QualityLimits, failed_limits, verdict
from service.api.errors import PoorQuality
from service.api.schemas import Quality
from service.config import Settings

__all__ = ["check_enroll_quality", "enroll_limits", "quality_model"]


def quality_model(q: FaceQuality) -> Quality:
    return Quality(verdict=verdict(q), **q.as_dict())


def enroll_limits(settings: Settings) -> QualityLimits:
    return QualityLimits(
        min_eye_distance=settings.enroll_min_eye_distance,
        min_sharpness=settings.enroll_min_sharpness,
        max_abs_yaw=settings.enroll_max_abs_yaw,
        max_abs_roll=settings.enroll_max_abs_roll,
        min_detection_confidence=settings.enroll_min_detection_confidence,
        min_brightness=settings.enroll_min_brightness,
        max_brightness=settings.enroll_max_brightness,
        min_contrast=settings.enroll_min_contrast,
        max_dark_share=settings.enroll_max_dark_share,
        max_bright_share=settings.enroll_max_bright_share,
    )


def check_enroll_quality(q: FaceQuality, settings: Settings, *, force: bool = False) -> None:
    """Raise ``PoorQuality`` (422) naming every limit the face breaks, unless ``force``."""
    if force:
        return
    failed = failed_limits(q, enroll_limits(settings))
    if not failed:
        return
    reasons = "; ".join(
        f"{'|' + f.measure + '|' if f.measure in ('yaw', 'roll') else f.measure} "
        f"{f.value:.3g} {'<' if f.bound == 'min' else '>'} {f.bound}imum {f.limit:g}"
        for f in failed
    )
    raise PoorQuality(
        f"face quality too low to enroll: {reasons}; send a better photo, or force=true",
        [{"measure": f.measure, "value": f.value, "limit": f.limit, "bound": f.bound}
         for f in failed],
    )

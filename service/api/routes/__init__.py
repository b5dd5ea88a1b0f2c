"""One ``APIRouter`` per resource; ``ROUTERS`` is what the app factory includes, in order."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import (
    audit,
    clusters,
    embed,
    enroll,
    faces,
    galleries,
    health,
    identify,
    keys,
    negatives,
    subjects,
    verify,
)

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    enroll.router,
    verify.router,
    identify.router,
    embed.router,
    subjects.router,
    negatives.router,
    faces.router,
    clusters.router,
    audit.router,
    keys.router,
    galleries.router,
    health.router,
)

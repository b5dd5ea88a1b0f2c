"""GET /healthz (process up), GET /readyz (models and gallery loaded), GET /metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.deps import MetricsDep, ServicesDep, SettingsDep
from service.api.errors import Forbidden, error_responses
from service.api.metrics import CONTENT_TYPE_LATEST
from service.api.routes.common import identify_point, run_in_threadpool
from service.api.schemas import CallerInfo, HealthResponse, ReadyResponse, ReplicationLag
from service.security.auth import MetricsKey, identify_caller

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=HealthResponse,
    summary="Liveness: the process is up",
    description="Answers 200 as soon as the process serves HTTP, also while the models are "
    "loading (readiness is GET /readyz). Needs no key.",
)
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: models and gallery loaded",
    description="503 `not_ready` while loading, 503 `startup_failed` if loading failed. "
    "Needs no key; the gallery's totals are shown only to a `metrics` key of the default gallery "
    "(or to anyone on a server without keys), the operating points to a valid key. Replicas "
    "of a shared PostgreSQL gallery also report their lag (`replication`). A valid key also "
    "learns its own name, id, scopes and gallery (`caller`): what it may do, without trying.",
    responses=error_responses(503),
    response_model_exclude_none=True,
)
async def readyz(
    request: Request, services: ServicesDep, settings: SettingsDep
) -> ReadyResponse:
    gallery = services.gallery
    # Server-wide totals are the operator's business, as /metrics: a `metrics` key of the
    # default gallery (or anyone, without keys). Probes and other galleries' keys learn
    # readiness only.
    caller = await run_in_threadpool(identify_caller, request, services)
    totals = caller is not None and "metrics" in caller.scopes and not caller.gallery

    def counts() -> tuple[int, int, Any]:
        return gallery.size, gallery.subject_count, gallery.replication_status()

    faces, subjects, lag = await run_in_threadpool(counts)
    # Thresholds are configuration, but the identify one follows the caller's gallery size:
    # a known key sees the first, one that may identify sees the second.
    point = services.operating_point if caller is not None else None
    identify = None
    if caller is not None and "recognize" in caller.scopes:
        identify = await run_in_threadpool(
            identify_point, services, None, None, caller.namespace
        )
    return ReadyResponse(
        status="ready",
        model=services.pipeline.model_version,
        embedding_size=getattr(services.pipeline, "embedding_size", None),
        model_licence=getattr(services.pipeline, "model_licence", None),
        detector=getattr(services.pipeline, "detector_version", None),
        device=str(getattr(services.pipeline, "device", "unknown")),
        index_kind=gallery.index_kind,
        index_source=gallery.index_source,  # type: ignore[arg-type]
        gallery_faces=faces if totals else None,
        gallery_subjects=subjects if totals else None,
        batching=settings.batching,
        detection_processes=services.detection_processes,
        replication=None if lag is None else ReplicationLag(**dataclasses.asdict(lag)),
        self_test=services.self_test if totals else None,
        operating_point=point,
        identify_operating_point=identify,
        caller=None if caller is None else CallerInfo(
            key_id=caller.key_id, name=caller.name,
            scopes=list(caller.scopes),  # type: ignore[arg-type]
            gallery=caller.gallery or None,
        ),
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    description="Needs scope `metrics` of the default gallery once the server has API keys "
    "(the figures are server-wide: every gallery's traffic and totals), 403 for a key bound "
    "to another gallery; 503 until loaded.",
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition."},
        **error_responses(401, 403, 408, 429, 503),
    },
)
async def metrics(principal: MetricsKey, request: Request, registry: MetricsDep) -> Response:
    if principal.gallery:
        # Request counts by route and the gallery gauges cover every tenant: the operator's.
        raise Forbidden(
            "metrics are server-wide: they need a metrics key of the default gallery, not one "
            f"bound to gallery {principal.gallery!r}"
        )
    # Gallery gauges are read at scrape time and may wait for a writer: not on the loop.
    return Response(await run_in_threadpool(registry.render), media_type=CONTENT_TYPE_LATEST)

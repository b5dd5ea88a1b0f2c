"""FastAPI dependencies: what a route may use, taken from ``app.state``.

The lifespan puts ``settings`` and ``metrics`` on ``app.state`` at once and ``services`` once
the models and gallery are loaded; until then every dependency that needs them answers 503
``not_ready``. Tests replace any of these with ``app.dependency_overrides``.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from models.fpir import FpirRule
from service.api.errors import NotReady
from service.api.metrics import Metrics
from service.api.schemas import OperatingPoint
from service.config import Settings
from service.gallery.gallery import Gallery
from service.inference.batcher import Embedder
from service.inference.inference import Inference, Pipeline
from service.security.audit import AuditLog
from service.security.keys import KeyRing

__all__ = [
    "BatcherDep",
    "GalleryDep",
    "InferenceDep",
    "MetricsDep",
    "PipelineDep",
    "Services",
    "ServicesDep",
    "SettingsDep",
    "get_services",
    "get_settings",
]


@dataclass
class Services:
    """Everything loaded by the lifespan; exists only when the service is ready."""

    pipeline: Pipeline
    gallery: Gallery
    embedder: Embedder
    inference: Inference
    operating_point: OperatingPoint
    executor: Executor
    keys: KeyRing | None = None  # None: no key checks at all (tests of the bare service)
    audit: AuditLog | None = None
    # Identification thresholds (models.fpir): the model's impostor reference, and the
    # default target FPIR (None: identify uses ``operating_point`` like verify).
    fpir_rule: FpirRule | None = None
    identify_fpir: float | None = None
    # What the start-up self-test measured (models.self_test.SelfTest.as_dict); None when
    # the pipeline is not the real one (tests' fakes).
    self_test: dict[str, Any] | None = None
    # Detection worker processes (service.inference.workers); 0: the inference threads.
    detection_processes: int = 0


# The dependencies below are ``async`` although they only read attributes: FastAPI runs a
# plain ``def`` dependency on its thread pool, a hand-off that costs far more than the call
# (the thread-pool hops were a visible part of the event loop's profile under load).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        error = getattr(request.app.state, "load_error", None)
        if error:
            raise NotReady(f"the service failed to start: {error}", code="startup_failed")
        raise NotReady("models and gallery are still loading; retry shortly")
    return services


async def get_gallery(services: Annotated[Services, Depends(get_services)]) -> Gallery:
    return services.gallery


async def get_pipeline(services: Annotated[Services, Depends(get_services)]) -> Pipeline:
    return services.pipeline


async def get_batcher(services: Annotated[Services, Depends(get_services)]) -> Embedder:
    return services.embedder


async def get_inference(services: Annotated[Services, Depends(get_services)]) -> Inference:
    return services.inference


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServicesDep = Annotated[Services, Depends(get_services)]
GalleryDep = Annotated[Gallery, Depends(get_gallery)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
BatcherDep = Annotated[Embedder, Depends(get_batcher)]
InferenceDep = Annotated[Inference, Depends(get_inference)]

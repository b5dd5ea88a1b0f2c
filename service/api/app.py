"""The app factory and its lifespan: models and gallery are loaded once, onto ``app.state``.

Loading (converted weights, FAISS index) takes seconds, so it runs in a background thread
once the server is up: ``/healthz`` answers at once, ``/readyz`` and every endpoint that needs
the models answer 503 until loading is done. A loading failure (an operating-point profile
for another model, a gallery of another model) is kept and reported by ``/readyz``, and
``on_load_error`` lets ``faceserve serve`` stop the server with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.types import Message

from models.cpu_share import CoreShare, available_cores
from service.api.accesslog import AccessLogMiddleware
from service.api.deps import Services
from service.api.docs import docs_router
from service.api.errors import install_error_handlers
from service.api.examples import add_examples
from service.api.metrics import Metrics, MetricsMiddleware
from service.api.query import reject_unknown_query
from service.api.routes import ROUTERS
from service.api.schemas import REQUEST_MODELS
from service.api.subject_paths import EncodedSlashMiddleware
from service.config import Settings, resolve_fpir_rule, resolve_operating_point
from service.console import router as console_router
from service.gallery.gallery import Gallery
from service.inference.batcher import AdmissionGate, DirectEmbedder, Embedder, MicroBatcher
from service.inference.inference import Inference, Pipeline
from service.inference.memory import PixelBudget
from service.inference.workers import DetectionWorkers, shared_counter
from service.security.audit import AuditLog
from service.security.keys import KeyRing, namespace_of, open_security_store
from service.security.limits import (
    BodySizeLimitMiddleware,
    MinUploadRateMiddleware,
    RequestTimeoutMiddleware,
)
from service.security.localguard import LoopbackGuardMiddleware
from service.security.ratelimit import KeySlots, RateLimiter

__all__ = ["API_PREFIX", "create_app", "default_pipeline", "pipeline_kwargs"]

API_PREFIX = "/v1"

log = logging.getLogger("faceserve")

PipelineFactory = Callable[[Settings], Pipeline]
LoadErrorHook = Callable[[BaseException], None]

DESCRIPTION = """\
Self-hosted face recognition: one-shot enrollment, 1:1 verification and 1:n identification
over a durable gallery (SQLite, FAISS index).

**Versions.** Every operation is under `/v1` (`POST /v1/enroll`, `GET /v1/subjects`, ...).
The unversioned paths of earlier releases (`POST /enroll`) still answer the same, as
deprecated aliases to be removed in a later release; they are not listed here.

**Request bodies.** `POST /enroll`, `/verify`, `/identify` and `/embed` accept the same fields
as `multipart/form-data` (images as file parts, `metadata` as a JSON string) or as
`application/json` (images as base64 strings, `metadata` as an object), chosen by the
`Content-Type` header.

**Similarity.** Embeddings are L2-normalised vectors (128-d with the default dlib model;
`/readyz` gives the served model's `embedding_size`); `similarity` is their cosine and
`distance` the squared L2 distance (2 - 2 cos). A face matches when `similarity >= threshold`;
every response says which operating point supplied the threshold.

**Errors.** Always `{"error": {"code": "...", "message": "..."}}`: 400 malformed input,
404 unknown id, 409 duplicate face (enroll, `on_duplicate=reject`), 413 too large, 415 not an
image, 422 invalid field or no face, 503 not ready.

**Authentication.** Once the gallery has API keys (`faceserve keys create`), every endpoint but
`/healthz`, `/readyz` and the docs needs one, as `Authorization: Bearer <key>` or
`X-API-Key: <key>`: 401 without a valid key, 403 without the scope (`enroll`: POST /enroll,
organising and naming clusters; `recognize`: verify, identify, embed; `read`: subjects, faces,
chips, clusters, and subject metadata in identify results; `erase`: deleting subjects, faces,
clusters; `metrics`: /metrics; `audit`: /audit; `admin`: keys and galleries), 429 over the
key's rate limit or when the inference queue is full (`Retry-After` says when to retry). A key
tied to a gallery sees only that gallery's subjects; galleries are managed by an admin key of
the default gallery.
"""


def _version() -> str:
    try:
        return metadata.version("faceserve")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def pipeline_kwargs(settings: Settings) -> dict[str, Any]:
    """``FacePipeline``'s arguments for ``settings`` (the server's and its workers')."""
    return {
        "device": None if settings.device == "auto" else settings.device,
        "flip": settings.flip,
        "upsample": settings.upsample,
        "max_side": settings.max_side,
        "model": settings.model,
        "small_image_retry_px": settings.small_image_retry_px,
        "min_face_px": settings.min_face_px,
        "detector": settings.detector,
        "model_dir": settings.model_dir_path,
    }


def default_pipeline(settings: Settings) -> Pipeline:
    from models.pipeline import FacePipeline

    return FacePipeline(**pipeline_kwargs(settings))


def _detection_processes(
    settings: Settings, pipeline: Pipeline, make_pipeline: PipelineFactory
) -> int:
    """How many detection worker processes to run (``FACESERVE_DETECTION_PROCESSES``): none
    for a pipeline the workers could not rebuild (the tests' fakes), else the setting, by
    default one per core on the CPU from two cores up and none on a GPU. Workers always
    detect on the CPU: beside a GPU they take photos off the server's GIL at the price of
    CPU detection, which paid for small photos (README, GPU figures) and was not measured
    for large ones, so there they are the operator's choice."""
    if make_pipeline is not default_pipeline:
        if settings.detection_processes:
            log.warning("FACESERVE_DETECTION_PROCESSES=%d ignored: not the default pipeline",
                        settings.detection_processes)
        return 0
    if settings.detection_processes is not None:
        return settings.detection_processes
    if getattr(getattr(pipeline, "device", None), "type", None) != "cpu":
        return 0
    cores = available_cores()
    return cores if cores >= 2 else 0


def _start_workers(
    settings: Settings, processes: int, cores: int
) -> tuple[DetectionWorkers | None, Any]:
    """``processes`` detection workers sharing ``cores``, started, and their shared stage
    counter; (None, None) for none. The workers detect on the CPU whatever the server's
    device. Workers the operator asked for must start; by default, a machine where they
    cannot (no ``/dev/shm`` for their semaphores, a sandbox without ``fork``) detects in the
    server's threads instead, and says so in the log."""
    if not processes:
        return None, None
    workers: DetectionWorkers | None = None
    try:
        counter = shared_counter()
        workers = DetectionWorkers(processes, {**pipeline_kwargs(settings), "device": "cpu"},
                                   cores, counter)
        pids = workers.start()
    except Exception as exc:
        if workers is not None:
            workers.close()
        if settings.detection_processes:
            raise RuntimeError(
                f"FACESERVE_DETECTION_PROCESSES={settings.detection_processes}: the detection "
                f"worker processes could not start: {type(exc).__name__}: {exc}"
            ) from exc
        log.error("detection worker processes could not start (%s: %s); detecting in the "
                  "server's threads instead (FACESERVE_DETECTION_PROCESSES=0 says so "
                  "quietly)", type(exc).__name__, exc)
        return None, None
    log.info("%d detection worker processes ready (pids %s)", processes,
             ", ".join(map(str, pids)))
    return workers, counter


def _self_test(pipeline: Pipeline) -> dict[str, Any] | None:
    """``models.self_test`` on the real pipeline: refuses to start on a broken device."""
    if not hasattr(pipeline, "detector"):
        size = getattr(pipeline, "chip_size", 150)
        pipeline.embed_chips(np.zeros((1, size, size, 3), dtype=np.uint8))
        return None
    from models.self_test import run_self_test

    result = run_self_test(pipeline)
    log.info(
        "self-test on %s (%s), torch %s, CUDA %s: detection %.1f ms for 640x480, "
        "embedding %.2f ms per face%s",
        result.device, result.device_name, result.torch, result.cuda or "none",
        result.detect_ms, result.embed_ms_per_face,
        "" if result.embedding_cosine is None else
        f", agrees with the CPU (cosine {result.embedding_cosine:.5f})",
    )
    return result.as_dict()


def _build_services(
    settings: Settings, metrics: Metrics, make_pipeline: PipelineFactory,
    gate: AdmissionGate | None = None,
) -> Services:
    start = time.perf_counter()
    pipeline = make_pipeline(settings)
    # An exported model carries its manifest (validation figures); dlib's and fakes do not.
    manifest = getattr(pipeline, "model_manifest", None) or None
    point = resolve_operating_point(settings, pipeline.model_version, manifest)
    fpir_rule = resolve_fpir_rule(settings, pipeline.model_version)
    gallery = Gallery.open(
        settings.data_dir,
        model_version=pipeline.model_version,
        dim=pipeline.embedding_size,
        index_kind=settings.index_kind,
        store_chips=settings.store_chips,
        database_url=settings.database_url,
        partition=namespace_of,
    )
    workers: DetectionWorkers | None = None
    try:
        # The self-test also pays lazy initialisation (kernels, allocator), so a client does
        # not; the tests' fake pipelines just get one embedding pass.
        self_test = _self_test(pipeline)
        cpu_cores = available_cores()
        executor = ThreadPoolExecutor(
            settings.inference_threads or cpu_cores,
            thread_name_prefix="faceserve-infer",
        )
        # Requests share the cores: each stage (one photo's detection, one embedding batch)
        # runs on one torch thread, a large one on the cores left (models.cpu_share), counted
        # across the detection worker processes too.
        processes = _detection_processes(settings, pipeline, make_pipeline)
        workers, counter = _start_workers(settings, processes, cpu_cores)
        if workers is None:
            processes = 0
        cores = CoreShare(cpu_cores, counter=counter)
        embed_chips = cores.embedding(pipeline.embed_chips)
        embedder: Embedder
        if settings.batching:
            embedder = MicroBatcher(
                embed_chips,
                max_batch_size=settings.batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000.0,
                dim=pipeline.embedding_size,
                on_batch=metrics.observe_batch,
            )
        else:
            embedder = DirectEmbedder(
                embed_chips,
                executor,
                dim=pipeline.embedding_size,
                on_batch=metrics.observe_batch,
            )
        # Keys and audit log: the same database, its own connections (see service.security.keys).
        security = open_security_store(settings)
    except BaseException:
        if workers is not None:
            workers.close()
        gallery.close()
        raise
    inference = Inference(pipeline, embedder, executor, max_pixels=settings.max_image_pixels,
                          pixel_budget=PixelBudget(settings.decoded_pixels_in_flight),
                          cores=cores, workers=workers,
                          admitted=None if gate is None else (lambda: gate.inside))
    if isinstance(embedder, MicroBatcher):
        embedder.expecting = inference.photos_on_their_way
    metrics.bind_gallery(lambda: gallery.size, lambda: gallery.subject_count, gallery.index_kind)
    if gallery.replication_status() is not None:
        metrics.bind_replication(gallery.replication_status)
    log.info(
        "ready in %.1fs: model %s on %s, %d faces of %d subjects, %s index, threshold %.3f (%s)",
        time.perf_counter() - start, pipeline.model_version,
        getattr(pipeline, "device", "?"), gallery.size, gallery.subject_count,
        gallery.index_kind, point.threshold, point.source,
    )
    return Services(pipeline, gallery, embedder, inference, point, executor,
                    keys=KeyRing(security), audit=AuditLog(security), fpir_rule=fpir_rule,
                    identify_fpir=settings.identify_fpir, self_test=self_test,
                    detection_processes=processes)


def _close_services(services: Services) -> None:
    services.embedder.close()
    if services.inference.workers is not None:
        services.inference.workers.close()
    services.executor.shutdown(wait=True)
    services.gallery.close()
    if services.keys is not None:
        services.keys.store.close()  # type: ignore[attr-defined]


def _keyless(app: FastAPI) -> bool:
    """Whether requests need no key now; True until the key store is loaded."""
    services: Services | None = app.state.services
    return services is None or services.keys is None or not services.keys.enforced()


def _finish_schema(schema: dict[str, Any]) -> None:
    """What FastAPI's generator leaves to do: each operation's examples
    (``service.api.examples``); a field's description lifted from inside ``anyOf`` (an
    optional ``Annotated`` type keeps it there) to the field, where documentation renderers
    show it; and FastAPI's own 422 body (``HTTPValidationError``), which this API never sends
    (its 422 is an ``ErrorResponse``), replaced."""
    add_examples(schema)
    components = schema.get("components", {}).get("schemas", {})
    for component in components.values():
        for prop in (component.get("properties") or {}).values():
            if "description" not in prop:
                described = [m for m in prop.get("anyOf", ()) if m.get("description")]
                if len(described) == 1:
                    prop["description"] = described[0]["description"]
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None and "HTTPValidationError" in str(response):
                response["content"] = {"application/json": {"schema": error}}
    if "HTTPValidationError" not in str(schema.get("paths")):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


async def _walk_routes(app: FastAPI) -> None:
    """Route one request that matches nothing, before the server takes any.

    FastAPI from 0.16x builds an included router's routes (their pydantic models) on the
    first request that walks it: ~0.4 s for ours, on the event loop, so the first request
    after a start waited that long, with every other one behind it, and one under a short
    ``request_timeout_s`` was cut off with its answer half sent. A path no route matches
    walks them all. Older FastAPI builds them at ``include_router``: a cheap 404.
    """
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/-", "raw_path": b"/-",
             "root_path": "", "query_string": b"", "headers": [], "server": None,
             "client": None}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    await app.router(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    pipeline_factory: PipelineFactory | None = None,
    on_load_error: LoadErrorHook | None = None,
) -> FastAPI:
    """A new app; nothing heavy happens until its lifespan starts."""
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    make_pipeline = pipeline_factory or default_pipeline

    async def load(app: FastAPI) -> None:
        try:
            app.state.services = await asyncio.to_thread(
                _build_services, settings, metrics, make_pipeline, app.state.inference_gate
            )
        except Exception as exc:
            app.state.load_error = f"{type(exc).__name__}: {exc}"
            log.error("startup failed: %s", app.state.load_error)
            if on_load_error is not None:
                on_load_error(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load(app))
        await _walk_routes(app)
        try:
            yield
        finally:
            await loader  # a loading thread cannot be interrupted; let it finish, then close
            services: Services | None = app.state.services
            app.state.services = None
            if services is not None:
                await asyncio.to_thread(_close_services, services)

    app = FastAPI(
        title="faceserve",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,
        docs_url=None,  # FastAPI's pages load unpinned CDN scripts: see service.api.docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.services = None
    app.state.load_error = None
    app.state.inference_gate = AdmissionGate(settings.inference_queue)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.state.key_slots = KeySlots(settings.inference_slots_per_key)
    install_error_handlers(app)
    # Every endpoint at /v1/...; today's unversioned paths stay as aliases, left out of the
    # OpenAPI document (one operation id per endpoint) and to be removed in a later release.
    strict = [Depends(reject_unknown_query)]
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX, dependencies=strict)
    for router in ROUTERS:
        app.include_router(router, dependencies=strict, include_in_schema=False)
    app.include_router(console_router)  # the web console at /ui: static files only
    if settings.docs:
        app.include_router(docs_router(app))
    # Innermost: routing sees %2F inside a subject id as part of it (service.api.subject_paths).
    app.add_middleware(EncodedSlashMiddleware)
    # Added last = outermost: metrics see every request, including 413s from the limit.
    app.add_middleware(MinUploadRateMiddleware, bytes_per_s=settings.min_upload_bytes_per_s,
                       grace_s=settings.upload_grace_s)
    app.add_middleware(RequestTimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(LoopbackGuardMiddleware, keyless=lambda: _keyless(app))
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)
    # Outermost: one log line for every request, with a request id but no path ids or queries.
    app.add_middleware(AccessLogMiddleware, routes=lambda: app.router.routes)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _, defs = models_json_schema(
                [(m, "validation") for m in REQUEST_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                defs.get("$defs", {})
            )
            _finish_schema(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

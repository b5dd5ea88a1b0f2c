"""Prometheus metrics of one app instance, and the ASGI middleware that records requests.

Each app owns its ``CollectorRegistry`` (no process-global state), so tests can build many
apps. Requests are labelled by route *template* (``/subjects/{subject_id}``), never by the raw
path, and by method only for the standard methods ("other" for the rest), so the label set
stays bounded whatever clients send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware", "flat_routes", "method_label",
    "route_template",
]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "<unmatched>"
# Methods counted under their own name; any other (a client may send "MXYZ") is "other", so
# clients cannot make new series: each label value here comes from a fixed set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def flat_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(prefix, route)`` for every route, inside included routers too: FastAPI keeps an
    included router as one entry (``original_router``, its ``include_context.prefix``) and
    puts the *original* route, whose path lacks that prefix, in ``scope["route"]``."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from flat_routes(inner.routes, prefix + str(getattr(context, "prefix", "")))
        else:
            yield prefix, route


def route_template(scope: Scope, routes: list) -> str:
    """The template of the route serving ``scope`` (matched here when routing never ran, as
    for a 413 from the body-size limit), or ``UNMATCHED``: never the raw path.

    One route may be mounted at several prefixes (``/v1/subjects/{subject_id}`` and its
    unversioned alias): the template is the one of the prefix the request came in by."""
    path = str(scope.get("path", ""))
    method = scope.get("method")
    served = scope.get("route")
    by_path: str | None = None
    for prefix, route in flat_routes(routes):
        if served is not None and route is not served:
            continue
        regex = getattr(route, "path_regex", None)
        if regex is None or not path.startswith(prefix) or not regex.match(path[len(prefix):]):
            continue
        # path_format drops converters: "/subjects/{subject_id:path}" -> "/subjects/{subject_id}"
        template = prefix + str(route.path_format)
        methods = getattr(route, "methods", None)
        if served is not None or not methods or method in methods:
            return template
        by_path = by_path or template
    if served is not None:
        return str(getattr(served, "path_format", UNMATCHED))
    return by_path or UNMATCHED


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "faceserve_http_requests", "HTTP requests by route template, method and status.",
            ["method", "route", "status"], registry=r,
        )
        self.latency = Histogram(
            "faceserve_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge(
            "faceserve_http_requests_in_flight", "Requests being served now.", registry=r
        )
        self.faces_embedded = Counter(
            "faceserve_faces_embedded", "Faces run through the embedding network.", registry=r
        )
        self.embed_batch_faces = Histogram(
            "faceserve_embed_batch_faces", "Faces per embedding forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self.embed_batch_requests = Histogram(
            "faceserve_embed_batch_requests", "Requests merged into one embedding forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.gallery_faces = Gauge(
            "faceserve_gallery_faces", "Face templates in the gallery.", registry=r
        )
        self.gallery_subjects = Gauge(
            "faceserve_gallery_subjects", "Subjects in the gallery.", registry=r
        )
        self.index_info = Gauge(
            "faceserve_index_info", "The FAISS index kind in use (value 1).", ["kind"], registry=r
        )
        self.ready = Gauge("faceserve_ready", "1 once models and gallery are loaded.", registry=r)

    def observe_batch(self, faces: int, requests: int) -> None:
        self.faces_embedded.inc(faces)
        self.embed_batch_faces.observe(faces)
        self.embed_batch_requests.observe(requests)

    def bind_gallery(self, size: Callable[[], int], subjects: Callable[[], int], kind: str) -> None:
        """Gallery gauges are read at scrape time, so they can never be stale."""
        self.gallery_faces.set_function(size)
        self.gallery_subjects.set_function(subjects)
        self.index_info.labels(kind=kind).set(1)
        self.ready.set(1)

    def bind_replication(self, status: Callable[[], Any]) -> None:
        """Replication lag gauges (registered only for a shared store), read from the store at
        scrape time (one small query each). ``status`` returns a
        ``replication.ReplicationStatus``; -1 while the store cannot be asked."""
        r = self.registry
        self.replication_lag_changes = Gauge(
            "faceserve_replication_lag_changes",
            "Change-log entries committed to the shared store and not yet in this replica's "
            "index (-1 while the store cannot be asked).",
            registry=r,
        )
        self.replication_lag_seconds = Gauge(
            "faceserve_replication_lag_seconds",
            "Age of the oldest change not yet in this replica's index; 0 when caught up "
            "(-1 while the store cannot be asked).",
            registry=r,
        )

        def read(field: str) -> float:
            try:
                value = getattr(status(), field)
            except Exception:  # the store is away: say so rather than fail the scrape
                return -1.0
            return -1.0 if value is None else float(value)

        self.replication_lag_changes.set_function(lambda: read("changes_behind"))
        self.replication_lag_seconds.set_function(lambda: read("seconds_behind"))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request, labelled by the route template that served it.

    Pure ASGI (no response buffering). A request rejected before routing (say, a 413 from the
    body-size limit) is labelled by matching the app's routes here.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], list]) -> None:
        self.app = app
        self.metrics = metrics
        self._routes = routes

    def _template(self, scope: Scope) -> str:
        return route_template(scope, self._routes())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = self._template(scope)
            method = method_label(scope.get("method", ""))
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(
                time.perf_counter() - start
            )

"""``faceserve serve``: run the HTTP service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the REST service (enroll, verify, identify) with uvicorn",
        description=(
            "Start the HTTP service. Settings come from FACESERVE_* environment variables and "
            "an optional .env file in the working directory (see the README's table, or "
            "--settings-table); the flags below override them. The port opens at once: "
            "GET /healthz answers immediately, GET /readyz answers 200 once the models and "
            "the gallery are loaded (503 before). OpenAPI docs are served at /docs."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", help="bind address (FACESERVE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port; 0 picks a free one (FACESERVE_PORT, 8000)")
    p.add_argument("--workers", type=int, help="server processes; only 1 is supported with the "
                   "SQLite gallery (FACESERVE_WORKERS)")
    p.add_argument("--data-dir", type=Path, help="gallery directory (FACESERVE_DATA_DIR, ./data)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto (FACESERVE_DEVICE)")
    p.add_argument("--threshold", help="cosine threshold, or far=1e-3 for a calibrated "
                   "operating point (FACESERVE_THRESHOLD)")
    p.add_argument("--no-batching", action="store_true",
                   help="embed each request on its own (FACESERVE_BATCHING=false)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--settings-table", action="store_true",
                   help="print every setting as a Markdown table (for the README) and exit")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.config import Settings, settings_table

    if args.settings_table:
        print(settings_table())
        return 0
    overrides = {
        name: getattr(args, name)
        for name in ("host", "port", "workers", "data_dir", "device", "threshold")
        if getattr(args, name) is not None
    }
    if args.no_batching:
        overrides["batching"] = False
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"faceserve serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if settings.workers != 1:
        print(
            "faceserve serve: workers must be 1 with the SQLite gallery: each process would "
            "keep its own index cache and not see the others' enrollments and deletions "
            "(several replicas need the PostgreSQL store).",
            file=sys.stderr,
        )
        return 2

    import uvicorn

    from service.app import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("faceserve").warning(
            "listening on %s without authentication (API keys are not implemented yet): "
            "anyone who can reach this address can enroll, search and delete faces",
            settings.host,
        )
    if settings.api_keys:
        # Starting anyway would let an operator believe the service is protected.
        print(
            "faceserve serve: FACESERVE_API_KEYS is set, but API-key authentication is not "
            "implemented in this version (it comes with the hardening work), so the keys "
            "would not be enforced. Unset it and keep the server on a trusted address "
            "(the default 127.0.0.1).",
            file=sys.stderr,
        )
        return 2

    server: uvicorn.Server | None = None

    def stop(exc: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error=stop)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    server.run()
    if app.state.load_error:
        print(f"faceserve serve: startup failed: {app.state.load_error}", file=sys.stderr)
        return 1
    return 0

"""``faceserve serve`` (the HTTP service, with uvicorn) and ``faceserve keys`` (API keys).

Secure by default: ``serve`` binds to 127.0.0.1 unless told otherwise, and refuses any other
address while the gallery has no API key (anyone who can reach the port could enroll, search
and erase faces) unless ``--insecure`` says that is intended.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from service.config import Settings
    from service.gallery.store.base import KeyRecord
    from service.security.audit import AuditLog
    from service.security.keys import KeyRing

__all__ = ["MAX_HEADER_BYTES", "add_parsers", "is_loopback", "uvicorn_config"]

MAX_HEADER_BYTES = 16 * 1024

OPERATOR_NAME = "(command line)"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


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
    )

    from service.config import setting_default

    def env(name: str) -> str:
        """Where the flag's value comes from when it is not given, and the built-in default."""
        default = setting_default(name)
        return f"FACESERVE_{name.upper()}" + (f"; default {default}" if default else "")

    p.add_argument("--host", help=f"bind address ({env('host')})")
    p.add_argument("--port", type=int, help=f"TCP port; 0 picks a free one ({env('port')})")
    p.add_argument("--workers", type=int, help="server processes; only 1 is supported with the "
                   f"SQLite gallery ({env('workers')})")
    p.add_argument("--data-dir", type=Path, help=f"gallery directory ({env('data_dir')})")
    p.add_argument("--device", help=f"cpu, cuda, cuda:1 or auto ({env('device')})")
    p.add_argument("--model", help="`dlib`, or a .safetensors file from `faceserve export` "
                   f"({env('model')})")
    p.add_argument("--threshold", help="cosine threshold, or far=1e-3 for a calibrated "
                   f"operating point ({env('threshold')})")
    p.add_argument("--no-batching", action="store_true",
                   help="embed each request on its own (FACESERVE_BATCHING=false)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host although the gallery has no API key: "
                   "anyone who reaches the port can enroll, search and erase faces")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default: %(default)s)")
    p.add_argument("--settings-table", action="store_true",
                   help="print every setting as a Markdown table (for the README) and exit")
    p.set_defaults(func=_serve)
    _add_keys_parsers(sub)
    _add_reembed_parser(sub)


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The settings these flags override: those given on the command line (not None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.config import Settings, settings_table

    if args.settings_table:
        print(settings_table())
        return 0
    overrides = _given(args, "host", "port", "workers", "data_dir", "device", "model", "threshold")
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

    from service.api.app import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.api_keys:
        # Starting anyway would let an operator believe these keys protect the service.
        print(
            "faceserve serve: FACESERVE_API_KEYS is set, but keys in the environment are not "
            "implemented: API keys are created with `faceserve keys create` and stored "
            "hashed in the gallery database. Unset FACESERVE_API_KEYS.",
            file=sys.stderr,
        )
        return 2
    refusal = _check_bind(settings, insecure=args.insecure)
    if refusal is not None:
        print(f"faceserve serve: {refusal}", file=sys.stderr)
        return 2

    server: uvicorn.Server | None = None

    def stop(exc: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error=stop)
    server = uvicorn.Server(uvicorn_config(app, settings, args.log_level))
    server.run()
    if app.state.load_error:
        print(f"faceserve serve: startup failed: {app.state.load_error}", file=sys.stderr)
        return 1
    return 0


def uvicorn_config(app: Any, settings: Settings, log_level: str) -> uvicorn.Config:
    """How ``faceserve serve`` runs ``app`` under uvicorn (tests run the same): without
    uvicorn's access log (see ``service.api.accesslog``), with a header timeout, a keep-alive
    timeout and a cap on connections (``service.security.connguard``)."""
    import uvicorn

    from service.security.connguard import guarded_h11

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=30,
        http=guarded_h11(settings.header_timeout_s, settings.max_connections,
                         MAX_HEADER_BYTES),
        timeout_keep_alive=settings.keep_alive_s,
        # Request line and headers together; more is 400 and the connection closed.
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        # Its access log writes raw paths and query strings (embeddings, erased subject ids):
        # the app logs each request itself, redacted (service.api.accesslog).
        access_log=False,
    )


def _check_bind(settings: Settings, *, insecure: bool) -> str | None:
    """Why ``serve`` must not start on this address, or None; logs what it allows."""
    from service.gallery.store.base import StoreError
    from service.security.keys import open_security_store

    log = logging.getLogger("faceserve")
    host = settings.host
    try:
        store = open_security_store(settings)
    except StoreError as exc:
        return str(exc)
    try:
        ever, active = store.key_count(active_only=False), store.key_count(active_only=True)
    finally:
        store.close()  # type: ignore[attr-defined]
    if ever:
        if not active:
            log.warning("every API key of this gallery is revoked: every protected request "
                        "will get 401 until one is created with `faceserve keys create`")
        else:
            log.info("API keys required (%d active)", active)
        return None
    if is_loopback(host):
        log.warning(
            "no API keys: listening on %s only, where any local process can enroll, search "
            "and erase faces. Create a key (`faceserve keys create --scope ... --name ...`) "
            "to require keys, and before listening on another address.", host,
        )
        return None
    if insecure:
        log.warning(
            "--insecure: listening on %s WITHOUT API keys: anyone who can reach this address "
            "can enroll, search and erase faces", host,
        )
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach it could enroll, "
        "search and erase faces. Create a key first (`faceserve keys create --scope enroll "
        "--scope recognize --name my-app`, and one with --scope admin), keep the default "
        "host 127.0.0.1, or pass --insecure if the network is trusted."
    )


# ---------------------------------------------------------------- faceserve keys


def _add_keys_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description=(
            "API keys of the gallery in --data-dir (FACESERVE_DATA_DIR). A key is a random "
            "256-bit token, shown once at creation and stored only as its SHA-256. Clients "
            "send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Scopes, one per "
            "role: enroll (POST /enroll, naming clusters), recognize (verify, identify, "
            "embed), read (list and read subjects, faces, clusters; metadata in identify), "
            "erase (delete subjects, faces, clusters), metrics (/metrics), audit (/audit), "
            "admin (keys and galleries only). Once any key exists, every request needs one; a "
            "running server sees new and revoked keys at once."
        ),
    )
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION")
    keys.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data-dir", type=Path,
                       help="gallery directory (FACESERVE_DATA_DIR, ./data)")
        q.add_argument("--json", action="store_true", help="machine-readable output")

    c = keys.add_parser(
        "create", help="create a key and print its token (shown once)",
        description=(
            "Create an API key with the given scopes and print its token on stdout (the "
            "details go to stderr). The token is shown this once: only its SHA-256 is stored, "
            "so a lost token cannot be recovered; revoke the key and create another. The "
            "creation is recorded in the audit log as done from the command line."
        ),
    )
    c.add_argument("--name", required=True, help="who or what uses the key (in the audit log)")
    c.add_argument("--scope", action="append", required=True, metavar="SCOPE",
                   help="enroll, recognize, read, erase, metrics, audit or admin; repeat (or "
                   "comma-separate) for several")
    c.add_argument("--gallery", default=None,
                   help="tie the key to this gallery (namespace): it sees only its subjects; "
                   "default: the default gallery")
    common(c)
    c.set_defaults(func=_keys_create)

    ls = keys.add_parser(
        "list", help="list keys (never their tokens)",
        description="List the keys of the gallery: id, name, scopes, gallery, creation time "
        "and whether (and when) each was revoked. Tokens are never stored, so never shown.",
    )
    ls.add_argument("--gallery", default=None, help="only this gallery's keys")
    common(ls)
    ls.set_defaults(func=_keys_list)

    r = keys.add_parser(
        "revoke", help="revoke a key at once and for good",
        description="Revoke a key by its id: a running server refuses it from its next "
        "request. A revoked key stays listed (for the audit log) and cannot be re-activated; "
        "a restore from a backup keeps it revoked.",
    )
    r.add_argument("key_id", help="the key's id (from `keys list`), not its token")
    common(r)
    r.set_defaults(func=_keys_revoke)


def _open_keys(args: argparse.Namespace) -> tuple[KeyRing, AuditLog]:
    from service.config import Settings
    from service.security.audit import AuditLog
    from service.security.keys import KeyRing, open_security_store

    overrides = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    store = open_security_store(Settings(**overrides))
    return KeyRing(store), AuditLog(store)


class _Operator:
    key_id = None
    name = OPERATOR_NAME


def _key_dict(record: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id, "name": record.name, "scopes": list(record.scopes),
        "gallery": record.gallery or None, "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }


def _keys_create(args: argparse.Namespace) -> int:
    ring, audit = _open_keys(args)
    try:
        record, token = ring.create(args.name, args.scope, args.gallery)
        audit.record(_Operator(), "create_key", gallery=record.gallery,
                     detail={"key_id": record.key_id, "name": record.name,
                             "scopes": list(record.scopes)})
    except ValueError as exc:
        print(f"faceserve keys create: {exc}", file=sys.stderr)
        return 2
    finally:
        ring.store.close()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps({**_key_dict(record), "token": token}))
    else:
        print(f"key {record.key_id} ({record.name}): scopes {','.join(record.scopes)}, "
              f"gallery {record.gallery or '(default)'}", file=sys.stderr)
        print("token (shown once, only its hash is stored; keep it secret):", file=sys.stderr)
        print(token)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    ring, _ = _open_keys(args)
    try:
        records = ring.list(args.gallery)
    finally:
        ring.store.close()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps([_key_dict(r) for r in records]))
        return 0
    if not records:
        print("no API keys: `faceserve serve` accepts requests without keys, on localhost only")
        return 0
    print(f"{'KEY ID':<16} {'NAME':<24} {'SCOPES':<24} {'GALLERY':<16} {'CREATED':<25} STATUS")
    for r in records:
        status = f"revoked {r.revoked_at}" if r.revoked_at else "active"
        print(f"{r.key_id:<16} {r.name[:24]:<24} {','.join(r.scopes):<24} "
              f"{(r.gallery or '(default)')[:16]:<16} {r.created_at:<25} {status}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    ring, audit = _open_keys(args)
    try:
        record = ring.revoke(args.key_id)
        if record is None:
            print(f"faceserve keys revoke: no key {args.key_id!r}", file=sys.stderr)
            return 1
        audit.record(_Operator(), "revoke_key", gallery=record.gallery,
                     detail={"key_id": record.key_id, "name": record.name})
    finally:
        ring.store.close()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps(_key_dict(record)))
    else:
        print(f"revoked {record.key_id} ({record.name}) at {record.revoked_at}")
    return 0


# ---------------------------------------------------------------- faceserve reembed


def _add_reembed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reembed",
        help="re-compute a gallery's embeddings with another model, from the stored chips",
        description=(
            "Move a gallery to another embedding model without the original photos: every "
            "enrolled face's stored 150x150 chip is decoded and embedded by --model, and its "
            "embedding and model label are replaced, in committed batches. Run it with the "
            "service stopped (it refuses while a server or replica has the gallery open, and "
            "keeps them out while it runs). Interrupted, it leaves a gallery that the service "
            "refuses to serve; run it again and it carries on where it stopped. Afterwards "
            "start the service with FACESERVE_MODEL set to the same model. Settings (data dir, "
            "database URL, flip, device) are read as `faceserve serve` reads them."
        ),
    )
    p.add_argument("--model", required=True,
                   help="`dlib`, the .safetensors file written by `faceserve export`, or an "
                   "ONNX model added with `faceserve models add` (name or path); the stored "
                   "chips must have been cut the way it wants (dlib's 150x150 chips for dlib's "
                   "and exported models, 112x112 ArcFace chips for the ArcFace family)")
    p.add_argument("--model-dir", type=Path,
                   help="ONNX model directory (FACESERVE_MODEL_DIR, else DATA_DIR/models)")
    p.add_argument("--data-dir", type=Path, help="gallery directory (FACESERVE_DATA_DIR, ./data)")
    p.add_argument("--database-url", help="PostgreSQL gallery (FACESERVE_DATABASE_URL)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto (FACESERVE_DEVICE)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="faces embedded and committed at once (default: %(default)s)")
    p.add_argument("--delete-faces-without-chips", action="store_true",
                   help="erase the faces that have no stored chip (enrolled with store_chips "
                   "off) instead of refusing; re-enroll them from their photos afterwards")
    p.add_argument("--dry-run", action="store_true", help="say what would be done and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_reembed)


def _reembed(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.config import Settings
    from service.gallery.gallery import GalleryLocked
    from service.gallery.reembed import ReembedError, exclusive_store, plan_reembed, reembed
    from service.gallery.store.base import StoreError

    overrides = _given(args, "data_dir", "database_url", "device", "model_dir")
    try:
        settings = Settings(**overrides, model=args.model)
    except ValidationError as exc:
        print(f"faceserve reembed: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    from models.embedding_model import chip_mismatch, load_embedding_model
    from models.model_file import ModelFileError

    try:
        model = load_embedding_model(
            settings.model, None if settings.device == "auto" else settings.device,
            model_dir=settings.model_dir_path,
        )
    except (ModelFileError, FileNotFoundError, ValueError) as exc:
        print(f"faceserve reembed: cannot load model {settings.model!r}: {exc}", file=sys.stderr)
        return 2

    def embed(chips: Any) -> Any:
        return model.embed_chips(chips, flip=settings.flip)

    try:
        with exclusive_store(settings.data_dir, settings.database_url) as store:
            plan = plan_reembed(store, model.version)
            for source in sorted(set(plan.models) - {model.version}):
                if (why := chip_mismatch(source, model, settings.model_dir_path)) is not None:
                    print(f"faceserve reembed: {why}", file=sys.stderr)
                    return 1
            models = ", ".join(f"{n} x {m}" for m, n in sorted(plan.models.items())) or "none"
            print(f"gallery: {plan.faces} faces ({models}); target {model.version} "
                  f"({model.embedding_size}-d, flip={settings.flip}); to re-embed: "
                  f"{plan.to_do}, of which {len(plan.without_chip)} without a stored chip",
                  file=sys.stderr)
            if args.dry_run:
                return 0
            result = reembed(
                store, embed, model.version, dim=model.embedding_size,
                batch_size=args.batch_size,
                delete_without_chip=args.delete_faces_without_chips,
                snapshot_dir=None if settings.database_url else settings.data_dir,
                progress=not args.quiet,
                chip_side=model.geometry.size,
            )
    except (GalleryLocked, StoreError, ReembedError, ValueError) as exc:
        print(f"faceserve reembed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({
        "model": result.target,
        "reembedded": result.reembedded,
        "already_on_model": result.already,
        "deleted_without_chip": result.deleted_without_chip,
        "negatives_reembedded": result.negatives_reembedded,
        "negatives_without_chip": result.negatives_without_chip,
        "unknown_faces_reembedded": result.unknown_reembedded,
        "unknown_faces_without_chip": result.unknown_without_chip,
        "seconds": round(result.seconds, 2),
        "faces_per_s": round(result.faces_per_s, 1),
        "models_before": result.models_before,
        "models_after": result.models_after,
    }, indent=2))
    if set(result.models_after) - {result.target}:
        print("faceserve reembed: faces of other models remain; run it again",
              file=sys.stderr)
        return 1
    print(f"done: start the service with FACESERVE_MODEL={settings.model}", file=sys.stderr)
    return 0



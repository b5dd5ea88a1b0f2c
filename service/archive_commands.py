"""``faceserve export-gallery`` and ``faceserve import-gallery``: move or back up a gallery.

The archive format is in ``service.gallery.archive``, the import in ``.archive_import``; this
module resolves settings, opens the stores with the right locks and prints what happened. Export
reads a consistent snapshot: from PostgreSQL while replicas serve, from SQLite with the server
stopped (one process per data directory). Import holds the target exclusively, like ``reembed``: no
server may serve a gallery that is being filled, perhaps with another model's embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.config import Settings
    from service.gallery.archive import ArchiveReader
    from service.gallery.archive_import import ArchiveStore

__all__ = ["add_parsers", "model_identity"]

_FORMAT_HELP = (
    "The archive is one uncompressed tar: manifest.json (model, operating point, audit "
    "cursor, counts), subjects as JSON lines, faces in pages of JSON lines + .npy embeddings "
    "+ concatenated JPEG chips, and end.json (totals, galleries, content SHA-256). See "
    "service/gallery/archive.py."
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export-gallery",
        help="write the whole gallery (subjects, faces, embeddings, chips) to one archive file",
        description=(
            "Export the gallery of --data-dir / --database-url to OUT: every subject with its "
            "metadata, every face with its embedding and stored chip, every named gallery "
            "(namespace), the model label, the operating point it is served at and the audit "
            "cursor (the last change id and audit event id the archive covers). Streamed in "
            "pages inside one read transaction: a consistent copy in bounded memory. A "
            "PostgreSQL gallery can be exported while replicas serve it; an SQLite gallery "
            "only with its server stopped. The file is written as OUT.partial and renamed when "
            "complete, readable by its owner only (it holds biometric data). API keys are not "
            "exported. " + _FORMAT_HELP
        ),
    )
    e.add_argument("out", type=Path, metavar="OUT", help="archive file to write (e.g. "
                   "gallery.fsa.tar)")
    _store_args(e)
    e.add_argument("--model", help="the model the gallery is served with, for its operating "
                   "point (FACESERVE_MODEL, dlib)")
    e.add_argument("--threshold", help="the threshold it is served at (FACESERVE_THRESHOLD)")
    e.add_argument("--gallery", default=None, metavar="NAME",
                   help="export only this gallery (namespace of API keys); '' for the default "
                   "gallery; default: every gallery")
    e.add_argument("--page-size", type=int, default=1000,
                   help="faces per page, the unit of memory and of the import's commits "
                   "(default: %(default)s)")
    e.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_export)

    i = sub.add_parser(
        "import-gallery",
        help="add the content of an archive from `export-gallery` to a gallery",
        description=(
            "Import IN into the gallery of --data-dir / --database-url (SQLite or PostgreSQL, "
            "whichever the archive came from), keeping subject ids, face ids, metadata, "
            "timestamps and galleries (namespaces). The target must be empty, unless --merge, "
            "or hold an interrupted import of the same archive: run the same command again "
            "and it carries on, adding nothing twice (faces are keyed by face id; each page is "
            "one transaction). An archive made with another model than --model "
            "(FACESERVE_MODEL) is refused, unless --reembed re-computes its embeddings from "
            "its stored chips with that model. Run it with the service stopped (it holds the "
            "gallery exclusively). The target's audit log records the import. " + _FORMAT_HELP
        ),
    )
    i.add_argument("archive", type=Path, metavar="IN", help="archive file from export-gallery")
    _store_args(i)
    i.add_argument("--model", help="the model the target gallery is served with: `dlib` or "
                   "an exported .safetensors file (FACESERVE_MODEL, dlib)")
    i.add_argument("--reembed", action="store_true",
                   help="re-compute embeddings of another model than --model from the "
                   "archive's chips (slow: runs the model; needs the chips)")
    i.add_argument("--device", help="torch device for --reembed (FACESERVE_DEVICE)")
    i.add_argument("--skip-faces-without-chips", action="store_true",
                   help="with --reembed, leave out faces that have no chip instead of refusing")
    i.add_argument("--merge", action="store_true",
                   help="add to a gallery that already has subjects or faces (subjects it "
                   "already has keep their metadata; faces it already has are skipped)")
    i.add_argument("--limit", type=int, default=None, metavar="N",
                   help="add at most N faces in this run, then stop (the next run continues)")
    i.add_argument("--dry-run", action="store_true",
                   help="read the manifest, check the target and the model, change nothing")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=_import)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="gallery directory (FACESERVE_DATA_DIR, ./data)")
    p.add_argument("--database-url", help="PostgreSQL gallery (FACESERVE_DATABASE_URL); "
                   "empty: the SQLite gallery in --data-dir")
    p.add_argument("--model-dir", type=Path,
                   help="ONNX model directory (FACESERVE_MODEL_DIR, else DATA_DIR/models)")


def _settings(args: argparse.Namespace, prog: str, *names: str) -> Settings | None:
    from pydantic import ValidationError

    from service.config import Settings

    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        print(f"faceserve {prog}: invalid settings:\n{exc}", file=sys.stderr)
        return None


def retention_start(settings: Settings) -> str:
    """The oldest creation time a pool face within ``unknown_ttl_days`` has (ISO, UTC): older
    ones are neither exported nor imported, as the server would erase them on its next use."""
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC) - timedelta(days=settings.unknown_ttl_days)
    return start.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_identity(
    spec: str | None, model_dir: Path | None = None
) -> tuple[str, int, dict[str, Any]]:
    """(version label, embedding size, manifest) of the ``model`` setting, without loading
    its weights: what stored embeddings of that model are labelled with."""
    if spec is None or str(spec) in ("", "dlib"):
        from models.embedder import DLIB_V1

        return DLIB_V1.version, DLIB_V1.embedding_size, {}
    from models.embedding_model import is_onnx_spec

    if is_onnx_spec(spec, model_dir):
        from models.backends.onnx_file import read_onnx_manifest, resolve_model_file

        manifest = read_onnx_manifest(resolve_model_file(spec, model_dir, "embedder"))
        return str(manifest["version"]), int(manifest["embedding_size"]), manifest
    from models.model_file import read_manifest

    manifest = read_manifest(spec)
    return str(manifest["version"]), int(manifest["embedding_size"]), manifest


@contextmanager
def _open(settings: Settings, *, exclusive: bool, must_exist: bool) -> Iterator[ArchiveStore]:
    """The gallery's store: SQLite with the data directory's lock; PostgreSQL shared (export:
    replicas may serve meanwhile) or exclusive (import: no replica on it), like ``reembed``."""
    from service.gallery.archive import ArchiveError
    from service.gallery.gallery import lock_data_dir, unlock_data_dir
    from service.gallery.private import private_dir
    from service.gallery.store import open_store
    from service.gallery.store.sqlite import FILENAME

    data_dir = Path(settings.data_dir)
    if must_exist and not settings.database_url and not (data_dir / FILENAME).is_file():
        raise ArchiveError(f"no gallery in {data_dir.resolve()} (no {FILENAME}); pass "
                           "--data-dir, or --database-url for a PostgreSQL gallery")
    private_dir(data_dir)
    # A shared PostgreSQL read needs no data directory (a replica here may hold its lock).
    fd = lock_data_dir(data_dir) if exclusive or not settings.database_url else None
    try:
        store = open_store(data_dir, settings.database_url, exclusive=exclusive)
        try:
            yield store  # type: ignore[misc]
        finally:
            store.close()
    finally:
        unlock_data_dir(fd)


def _operating_point(settings: Settings, models: dict[str, int]) -> dict[str, Any] | None:
    """The threshold the gallery is served at, when the configured model is the gallery's."""
    from models.model_file import ModelFileError
    from service.config import ProfileError, resolve_operating_point

    try:
        version, _, manifest = model_identity(settings.model, settings.model_dir_path)
    except (ModelFileError, FileNotFoundError, ValueError) as exc:
        return {"error": f"model {settings.model!r}: {exc}"}
    if set(models) - {version}:
        return {"model": version, "error": "the configured model is not the gallery's: pass "
                "--model with the gallery's model to record its operating point"}
    try:
        point = resolve_operating_point(settings, version, manifest or None)
    except ProfileError as exc:
        return {"model": version, "setting": str(settings.threshold), "error": str(exc)}
    return {"model": version, "setting": str(settings.threshold),
            "identify_fpir": settings.identify_fpir, **point.model_dump(exclude_none=True)}


def _export(args: argparse.Namespace) -> int:
    from service.gallery.archive import ArchiveError, export_gallery
    from service.gallery.gallery import GalleryLocked
    from service.gallery.store.base import StoreError

    settings = _settings(args, "export-gallery", "data_dir", "database_url", "model", "threshold",
                         "model_dir")
    if settings is None:
        return 2
    out: Path = args.out
    if out.exists() and not args.force:
        print(f"faceserve export-gallery: {out} exists; pass --force to overwrite it",
              file=sys.stderr)
        return 2
    if args.page_size < 1:
        print("faceserve export-gallery: --page-size must be positive", file=sys.stderr)
        return 2
    if args.gallery:
        from service.security.keys import validate_gallery

        try:
            validate_gallery(args.gallery)
        except ValueError as exc:
            print(f"faceserve export-gallery: {exc}", file=sys.stderr)
            return 2
    try:
        # PostgreSQL: a shared (non-exclusive) open; the snapshot is consistent while replicas
        # write. SQLite: the data directory's lock keeps the server out meanwhile.
        with _open(settings, exclusive=False, must_exist=True) as store:
            point = _operating_point(settings, store.state().model_counts)
            result = export_gallery(store, out, operating_point=point,
                                    page_size=args.page_size, progress=not args.quiet,
                                    gallery=args.gallery,
                                    unknown_after=retention_start(settings))
    except GalleryLocked as exc:
        print(f"faceserve export-gallery: {exc}. Stop the server to export an SQLite gallery "
              "(or back up its data directory with `sqlite3 gallery.sqlite3 .backup`).",
              file=sys.stderr)
        return 1
    except (StoreError, ArchiveError, OSError) as exc:
        print(f"faceserve export-gallery: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({
        "archive": str(result.path), "archive_id": result.archive_id,
        "subjects": result.subjects, "faces": result.faces, "chips": result.chips,
        "unknown_faces": result.unknown_faces, "negatives": result.negatives,
        "galleries": result.galleries, "bytes": result.bytes,
        "seconds": round(result.seconds, 2), "faces_per_s": round(result.faces_per_s, 1),
        "content_sha256": result.content_sha256,
    }, indent=2))
    return 0


def _import(args: argparse.Namespace) -> int:
    from service.gallery.archive import ArchiveError, ArchiveReader
    from service.gallery.archive_import import check_archive_model
    from service.gallery.gallery import GalleryLocked
    from service.gallery.store.base import StoreError

    settings = _settings(args, "import-gallery", "data_dir", "database_url", "model", "device",
                         "model_dir")
    if settings is None:
        return 2
    if args.limit is not None and args.limit < 0:
        print("faceserve import-gallery: --limit must be 0 or more", file=sys.stderr)
        return 2
    from models.model_file import ModelFileError

    try:
        version, dim, _ = model_identity(settings.model, settings.model_dir_path)
    except (ModelFileError, FileNotFoundError, ValueError) as exc:
        print(f"faceserve import-gallery: model {settings.model!r}: {exc}", file=sys.stderr)
        return 2
    try:
        with ArchiveReader(args.archive) as reader:
            models = ", ".join(f"{n} x {m}" for m, n in sorted(reader.models.items())) or "none"
            print(f"archive {reader.archive_id}: {reader.subject_count} subjects, "
                  f"{reader.face_count} faces ({models}), exported "
                  f"{reader.manifest.get('exported_at')} from {reader.manifest.get('source')}",
                  file=sys.stderr)
            # Before the target is opened (and an SQLite one created): a refusal leaves no trace.
            check_archive_model(reader, version, dim, reembed=args.reembed,
                                skip_without_chip=args.skip_faces_without_chips)
            with _open(settings, exclusive=True, must_exist=False) as store:
                return _import_into(args, settings, reader, store, version, dim)
    except GalleryLocked as exc:
        print(f"faceserve import-gallery: {exc}; stop the server first", file=sys.stderr)
        return 1
    except (StoreError, ArchiveError, OSError) as exc:
        print(f"faceserve import-gallery: {exc}", file=sys.stderr)
        return 1


def _import_into(
    args: argparse.Namespace, settings: Settings, reader: ArchiveReader, store: ArchiveStore,
    version: str, dim: int,
) -> int:
    from service.gallery.archive_import import archive_store_ready, import_gallery
    from service.gallery.gallery import SNAPSHOT_NAME
    from service.gallery.index import remove_snapshot

    if args.dry_run:
        resumed = archive_store_ready(
            reader, store, version, dim, reembed=args.reembed, merge=args.merge,
            skip_without_chip=args.skip_faces_without_chips)
        print(f"ready to import into {store.location} for model {version}"
              + (" (continuing an interrupted import)" if resumed else ""),
              file=sys.stderr)
        return 0
    embed = None
    if args.reembed and set(reader.models) - {version}:
        embed, why = _load_embedder(settings, set(reader.models) - {version})
        if why is not None:
            print(f"faceserve import-gallery: {why}", file=sys.stderr)
            return 2
    if not settings.database_url:
        remove_snapshot(Path(settings.data_dir) / SNAPSHOT_NAME)
    result = import_gallery(
        reader, store, version, target_dim=dim, embed=embed, merge=args.merge,
        skip_without_chip=args.skip_faces_without_chips, limit=args.limit,
        progress=not args.quiet, unknown_after=retention_start(settings),
    )
    _compare_operating_point(reader.manifest.get("operating_point"), settings, version,
                             reembedded=embed is not None)
    print(json.dumps({
        "archive_id": result.archive_id, "complete": result.complete,
        "resumed": result.resumed, "subjects_added": result.subjects_added,
        "faces_added": result.faces_added, "faces_already_present": result.faces_present,
        "faces_conflicting": result.faces_conflicting, "reembedded": result.reembedded,
        "faces_without_chip_skipped": result.faces_without_chip_skipped,
        "unknown_faces_added": result.unknown_added, "negatives_added": result.negatives_added,
        "pool_records_not_added": result.pool_skipped,
        "galleries": result.galleries, "seconds": round(result.seconds, 2),
        "faces_per_s": round(result.faces_per_s, 1),
    }, indent=2))
    if not result.complete:
        print(f"faceserve import-gallery: stopped after {result.faces_added} faces (--limit); "
              "run the same command again to continue", file=sys.stderr)
        return 3
    return 0


def _load_embedder(settings: Settings, sources: set[str]) -> tuple[Any, str | None]:
    """The configured model's ``embed``, and why the archive's chips (of models
    ``sources``) cannot be re-embedded by it (None: they can)."""
    from models.embedding_model import chip_mismatch, load_embedding_model

    model = load_embedding_model(
        settings.model, None if settings.device == "auto" else settings.device,
        model_dir=settings.model_dir_path,
    )

    def embed(chips: Any) -> Any:
        return model.embed_chips(chips, flip=settings.flip)

    why = next((w for s in sorted(sources)
                if (w := chip_mismatch(s, model, settings.model_dir_path)) is not None), None)
    return embed, why


def _compare_operating_point(
    point: dict[str, Any] | None, settings: Settings, version: str, *, reembedded: bool
) -> None:
    """Say which threshold the source served at, so the operator can set the same here."""
    if not point or "threshold" not in point:
        return
    if reembedded or point.get("model") != version:
        print(f"note: the source served at threshold {point['threshold']:.4f} for model "
              f"{point.get('model')}; it does not apply to {version}: calibrate this model "
              "(`faceserve eval lfw`) or use its own operating point", file=sys.stderr)
        return
    print(f"the source served at threshold {point['threshold']:.4f} ({point.get('source')}"
          + (f", FAR {point['far']:g}" if point.get("far") is not None else "")
          + f", FACESERVE_THRESHOLD={point.get('setting')}); set the same here to keep its "
          "decisions", file=sys.stderr)

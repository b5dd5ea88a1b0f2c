"""``faceserve backup`` and ``faceserve restore`` (``service.gallery.backup``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backup",
        help="write a consistent copy of the gallery database, also while the server runs",
        description=(
            "Copy the SQLite gallery (subjects, faces, embeddings, chips, API key hashes, audit "
            "log, tombstones) to one self-contained file with SQLite's online backup API: "
            "consistent while `faceserve serve` is running and writing, unlike a copy of the "
            "data directory's files. The file holds biometric data and is created mode 0600. "
            "For the PostgreSQL "
            "gallery use pg_dump (see the README)."
        ),
    )
    p.add_argument("out", metavar="OUT",
                   help="backup file to write, or a directory (existing, or ending with /) "
                   "for a time-stamped gallery-<UTC time>.sqlite3 in it")
    p.add_argument("--data-dir", type=Path,
                   help="gallery directory (FACESERVE_DATA_DIR; default ./data)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_backup)

    r = sub.add_parser(
        "restore",
        help="replace the gallery by a backup, keeping erasures and key revocations made since",
        description=(
            "Replace the SQLite gallery by a file from `faceserve backup`, with the server "
            "stopped. Subjects, faces and negatives erased and API keys revoked after the "
            "backup was taken stay erased and revoked: their tombstones (random ids, no "
            "personal data) are read from the current database and from tombstones.jsonl "
            "beside it (enough when the database itself is lost) and applied to the restored "
            "copy before it "
            "replaces the gallery. The replaced database is kept as "
            "gallery.sqlite3.replaced-<time> unless --discard-replaced. Everything else "
            "enrolled or created after the backup is not in it."
        ),
    )
    r.add_argument("backup", type=Path, metavar="BACKUP", help="a file from `faceserve backup`")
    r.add_argument("--data-dir", type=Path,
                   help="gallery directory (FACESERVE_DATA_DIR; default ./data)")
    r.add_argument("--discard-replaced", action="store_true",
                   help="delete the replaced database instead of keeping it beside the new one")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=_restore)

    t = sub.add_parser(
        "tombstones",
        help="export or re-apply the record of erasures and key revocations",
        description=(
            "Tombstones record every erasure (subject, face, negative) and key revocation "
            "with random ids only. `faceserve restore` re-applies them by itself; these "
            "commands do it by hand, for a PostgreSQL gallery restored with pg_restore: "
            "export them from the live database before restoring, apply them after (see the "
            "README, Backup and restore)."
        ),
    )
    actions = t.add_subparsers(dest="tombstones_command", metavar="ACTION")
    actions.required = True

    def gallery_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data-dir", type=Path,
                       help="gallery directory (FACESERVE_DATA_DIR; default ./data)")
        q.add_argument("--database-url",
                       help="PostgreSQL gallery (FACESERVE_DATABASE_URL)")

    e = actions.add_parser(
        "export", help="write the gallery's tombstones to a file (JSON lines, mode 0600)",
        description="Write every tombstone of the gallery to FILE, one JSON object a line "
        "(kind, ref, at). Reads only: replicas may keep running.",
    )
    e.add_argument("file", type=Path, metavar="FILE", help="file to write")
    gallery_options(e)
    e.set_defaults(func=_tombstones_export)

    a = actions.add_parser(
        "apply", help="erase and revoke again what a tombstone file names",
        description="Erase again the subjects, faces and negatives, and revoke again the keys, "
        "that the tombstones in FILE name and the gallery holds (as after restoring an older "
        "backup), and record the tombstones. Needs the gallery to itself: stop the server or every "
        "replica first.",
    )
    a.add_argument("file", type=Path, metavar="FILE",
                   help="a file from `faceserve tombstones export` (or tombstones.jsonl)")
    gallery_options(a)
    a.set_defaults(func=_tombstones_apply)


def _settings(args: argparse.Namespace, command: str) -> Any:
    from pydantic import ValidationError

    from service.config import Settings

    overrides = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"faceserve {command}: invalid settings:\n{exc}", file=sys.stderr)
        return None
    if settings.database_url:
        print(
            f"faceserve {command}: FACESERVE_DATABASE_URL is set: the PostgreSQL gallery is "
            "backed up with `pg_dump --format=custom` (consistent while replicas run) and "
            "restored with `pg_restore`; see the README (Backup and restore).",
            file=sys.stderr,
        )
        return None
    return settings


def _gallery_settings(args: argparse.Namespace, command: str) -> Any:
    from pydantic import ValidationError

    from service.config import Settings

    overrides = {k: v for k, v in (("data_dir", args.data_dir),
                                   ("database_url", args.database_url)) if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        print(f"faceserve tombstones {command}: invalid settings:\n{exc}", file=sys.stderr)
        return None


def _tombstones_export(args: argparse.Namespace) -> int:
    from service.gallery.backup import write_tombstones
    from service.gallery.store import StoreError, open_store
    from service.gallery.store.sqlite import FILENAME

    settings = _gallery_settings(args, "export")
    if settings is None:
        return 2
    if not settings.database_url and not (Path(settings.data_dir) / FILENAME).is_file():
        print(f"faceserve tombstones export: no gallery in {settings.data_dir}",
              file=sys.stderr)
        return 1
    try:
        store: Any = open_store(settings.data_dir, settings.database_url)
    except StoreError as exc:
        print(f"faceserve tombstones export: {exc}", file=sys.stderr)
        return 1
    try:
        items = store.tombstones()
    finally:
        store.close()
    write_tombstones(args.file, items)
    print(f"{len(items)} tombstones written to {args.file}", file=sys.stderr)
    return 0


def _tombstones_apply(args: argparse.Namespace) -> int:
    from service.gallery.backup import BackupError, apply_tombstone_file
    from service.gallery.gallery import GalleryLocked
    from service.gallery.store import StoreError

    settings = _gallery_settings(args, "apply")
    if settings is None:
        return 2
    try:
        undone = apply_tombstone_file(settings.data_dir, settings.database_url, args.file)
    except (BackupError, GalleryLocked, StoreError, OSError, ValueError) as exc:
        print(f"faceserve tombstones apply: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(undone))
    return 0


def _backup(args: argparse.Namespace) -> int:
    from service.gallery.backup import BackupError, backup_sqlite

    settings = _settings(args, "backup")
    if settings is None:
        return 2
    try:
        result = backup_sqlite(settings.data_dir, args.out, overwrite=args.overwrite)
    except (BackupError, OSError) as exc:
        print(f"faceserve backup: {exc}", file=sys.stderr)
        return 1
    summary = {
        "backup": str(result.path), "bytes": result.bytes, "sha256": result.sha256,
        "schema_version": result.schema_version, "subjects": result.subjects,
        "faces": result.faces, "seconds": round(result.seconds, 2),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"backup written: {result.path} ({result.bytes:,} bytes, {result.subjects} "
              f"subjects, {result.faces} faces, sha256 {result.sha256[:16]}...)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from service.gallery.backup import BackupError, restore_sqlite
    from service.gallery.gallery import GalleryLocked
    from service.gallery.store.base import StoreError

    settings = _settings(args, "restore")
    if settings is None:
        return 2
    try:
        result = restore_sqlite(settings.data_dir, args.backup,
                                keep_replaced=not args.discard_replaced)
    except (BackupError, GalleryLocked, StoreError, OSError) as exc:
        print(f"faceserve restore: {exc}", file=sys.stderr)
        return 1
    summary = {
        "restored": str(result.backup), "subjects": result.subjects, "faces": result.faces,
        "tombstones": result.tombstones, **result.undone,
        "replaced": None if result.replaced is None else str(result.replaced),
        "journal_only": result.journal_only,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"restored {result.backup}: {result.subjects} subjects, {result.faces} faces; "
          f"re-applied {result.tombstones} tombstones ({result.undone['subjects_erased']} "
          f"subjects and {result.undone['faces_erased']} faces erased again, "
          f"{result.undone['keys_revoked']} keys revoked again)")
    if result.journal_only:
        print("the current database was missing or unreadable: tombstones came from "
              "tombstones.jsonl only", file=sys.stderr)
    if result.replaced is not None:
        print(f"the replaced database is kept as {result.replaced} (mode 0600); delete it "
              "once the restore is checked", file=sys.stderr)
    return 0

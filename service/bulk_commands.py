"""``faceserve enroll-dir`` and ``faceserve identify-dir``: folders of photos against any server.

Both talk to a faceserve URL through ``faceserve_client`` (local or remote, with or without an
API key), a few requests at a time (``--concurrency``), with a progress bar on stderr.

enroll-dir is safe to interrupt and run again. Each photo's outcome is appended to the CSV
(flushed) as soon as it is known; a new run skips photos whose last outcome is final
(enrolled, no face, several faces, poor quality, duplicate) and whose bytes are unchanged, and
tries the errors again. A photo sent just before an interruption but not yet written to the
CSV is sent again: the server returns the face it already stored for those bytes (``created``
false), so no face is ever stored twice. At the end the CSV is rewritten with one row per
photo, in file order.

Both CSVs (enroll-dir's outcomes, identify-dir's rows) link photos to people: they are
created owner-only (``service.gallery.private.open_private``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from service.gallery.private import open_private

__all__ = [
    "IMAGE_SUFFIXES",
    "EnrollOutcome",
    "add_parsers",
    "enroll_dir",
    "identify_dir",
    "list_photos",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Outcomes that a new run does not try again (the photo itself decided them).
FINAL = frozenset({"enrolled", "already_enrolled", "no_face", "several_faces", "poor_quality",
                   "duplicate"})
OUTCOMES = ("enrolled", "already_enrolled", "no_face", "several_faces", "poor_quality",
            "duplicate", "error")


def list_photos(root: Path) -> list[Path]:
    """Image files under ``root`` (any depth), by path; hidden files and folders left out."""
    found = []
    seen: set[str] = set()  # folder links are followed, each real folder once (no loops)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def subject_of(rel: str, pattern: re.Pattern[str] | None) -> str | None:
    """The subject of a photo at ``rel`` (a path relative to the folder, with ``/``).

    Without a pattern: the top-level folder (one folder per person). With one: the named group
    ``subject``, else group 1, else the whole match, searched in ``rel``."""
    if pattern is None:
        parts = rel.split("/")
        return parts[0] if len(parts) > 1 else None
    match = pattern.search(rel)
    if match is None:
        return None
    if "subject" in pattern.groupindex:
        return match.group("subject")
    return match.group(1) if pattern.groups else match.group(0)


# ---------------------------------------------------------------- enroll-dir


@dataclass
class EnrollOutcome:
    """One row of enroll-dir's CSV."""

    file: str
    subject_id: str
    outcome: str
    face_id: str = ""
    faces_detected: str = ""
    code: str = ""
    message: str = ""
    sha256: str = ""


CSV_FIELDS = [f.name for f in fields(EnrollOutcome)]


def read_journal(path: Path) -> dict[str, EnrollOutcome]:
    """The last outcome of each photo in an existing CSV (rows appended by earlier runs)."""
    done: dict[str, EnrollOutcome] = {}
    if not path.is_file():
        return done
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("file") and row.get("outcome"):
                done[row["file"]] = EnrollOutcome(**{k: row.get(k) or "" for k in CSV_FIELDS})
    return done


def write_csv(path: Path, rows: list[EnrollOutcome]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open_private(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    tmp.replace(path)


def _outcome_of_error(exc: Exception) -> tuple[str, str, str]:
    """(outcome, code, message) of a refused photo."""
    import faceserve_client as fc

    kinds: tuple[tuple[type[Exception], str], ...] = (
        (fc.NoFaceError, "no_face"),
        (fc.NotAFaceError, "no_face"),
        (fc.MultipleFacesError, "several_faces"),
        (fc.PoorQualityError, "poor_quality"),
        (fc.DuplicateFaceError, "duplicate"),
    )
    code = getattr(exc, "code", type(exc).__name__)
    message = getattr(exc, "message", str(exc))
    for cls, outcome in kinds:
        if isinstance(exc, cls):
            return outcome, code, message
    return "error", code, message


@dataclass
class EnrollSummary:
    counts: Counter[str]
    photos: int
    sent: int
    skipped: int
    seconds: float

    @property
    def photos_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        lines = [f"{'outcome':<18}{'photos':>8}"]
        lines += [f"{name:<18}{self.counts.get(name, 0):>8}" for name in OUTCOMES]
        lines.append(f"{'total':<18}{self.photos:>8}")
        lines.append(
            f"{self.sent} sent in {self.seconds:.1f} s ({self.photos_per_s:.2f} photos/s); "
            f"{self.skipped} done by an earlier run"
        )
        return "\n".join(lines)


class Fatal(Exception):
    """Stops the whole run: every further request would fail the same way (a bad key)."""


async def enroll_dir(
    root: Path,
    client: Any,
    csv_path: Path,
    *,
    concurrency: int = 4,
    subject_from: re.Pattern[str] | None = None,
    on_multiple: str = "reject",
    on_duplicate: str = "warn",
    force: bool = False,
    resume: bool = True,
    progress: bool = True,
) -> EnrollSummary:
    """Enroll every photo under ``root`` with ``client`` (a ``faceserve_client.AsyncClient``)."""
    import faceserve_client as fc
    from tqdm import tqdm

    photos = list_photos(root)
    done = read_journal(csv_path) if resume else {}
    results: dict[str, EnrollOutcome] = {}
    new_file = not csv_path.is_file() or not resume
    journal = open_private(csv_path, "w" if new_file else "a", newline="")
    writer = csv.DictWriter(journal, CSV_FIELDS)
    if new_file:
        writer.writeheader()
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for photo in photos:
        queue.put_nowait(photo)
    bar = tqdm(total=len(photos), unit="photo", disable=not progress, file=sys.stderr,
               desc="enroll-dir")
    sent = skipped = 0
    counts: Counter[str] = Counter()

    def record(row: EnrollOutcome, *, journal_it: bool) -> None:
        results[row.file] = row
        counts[row.outcome] += 1
        if journal_it:
            writer.writerow(asdict(row))
            journal.flush()
        bar.update(1)
        bar.set_postfix({k: counts[k] for k in ("enrolled", "error") if counts[k]}, refresh=False)

    async def one(path: Path) -> None:
        nonlocal sent, skipped
        rel = path.relative_to(root).as_posix()
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:  # unreadable here: an error row, tried again next run
            record(EnrollOutcome(rel, "", "error", code="unreadable", message=str(exc)),
                   journal_it=True)
            return
        sha = hashlib.sha256(data).hexdigest()
        before = done.get(rel)
        if before is not None and before.outcome in FINAL and before.sha256 == sha:
            skipped += 1
            record(before, journal_it=False)
            return
        subject = subject_of(rel, subject_from)
        if not subject:
            why = ("does not match --subject-from" if subject_from is not None
                   else "is not in a person's folder (use --subject-from)")
            record(EnrollOutcome(rel, "", "error", code="no_subject", message=f"{rel} {why}",
                                 sha256=sha), journal_it=True)
            return
        sent += 1
        try:
            r = await client.enroll(data, subject, on_multiple=on_multiple,
                                    on_duplicate=on_duplicate, force=force)
        except (fc.AuthenticationError, fc.PermissionDeniedError) as exc:
            raise Fatal(str(exc)) from exc
        except fc.FaceserveError as exc:
            outcome, code, message = _outcome_of_error(exc)
            faces = ""
            for detail in getattr(exc, "details", None) or []:
                if "faces_detected" in detail and detail["faces_detected"] is not None:
                    faces = str(detail["faces_detected"])
            row = EnrollOutcome(rel, subject, outcome, faces_detected=faces, code=code,
                                message=message, sha256=sha)
        else:
            row = EnrollOutcome(
                rel, subject, "enrolled" if r.created else "already_enrolled",
                face_id=r.face_id, faces_detected=str(r.faces_detected), sha256=sha,
            )
        record(row, journal_it=True)

    async def worker() -> None:
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(path)

    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, concurrency)):
                group.create_task(worker())
    finally:
        bar.close()
        journal.close()
    seconds = time.perf_counter() - start
    # One row per photo, in file order (the journal may hold several rows per photo).
    ordered = [results[p.relative_to(root).as_posix()] for p in photos]
    write_csv(csv_path, ordered)
    return EnrollSummary(counts, len(photos), sent, skipped, seconds)


# ---------------------------------------------------------------- identify-dir


IDENTIFY_FIELDS = ["file", "face", "left", "top", "right", "bottom", "detection_confidence",
                   "subject_id", "similarity", "decision", "best_subject_id",
                   "best_similarity", "threshold", "error"]


def identify_rows(rel: str, result: Any = None, error: Exception | None = None) -> list[dict]:
    """The output rows of one photo: one per face (``match`` or ``unknown``), or one row
    saying ``no_face`` or ``error``."""
    empty = dict.fromkeys(IDENTIFY_FIELDS, None)
    if error is not None:
        code = getattr(error, "code", type(error).__name__)
        message = getattr(error, "message", str(error))
        return [{**empty, "file": rel, "decision": "error", "error": f"{code}: {message}"}]
    if not result.faces:
        return [{**empty, "file": rel, "decision": "no_face", "threshold": result.threshold}]
    rows = []
    for i, face in enumerate(result.faces):
        best = face.candidates[0] if face.candidates else None
        rows.append({
            **empty,
            "file": rel, "face": i, **face.bbox.model_dump(),
            "detection_confidence": round(face.detection_confidence, 4),
            "subject_id": face.match.subject_id if face.match else None,
            "similarity": round(face.match.similarity, 4) if face.match else None,
            "decision": "match" if face.match else "unknown",
            "best_subject_id": best.subject_id if best else None,
            "best_similarity": round(best.similarity, 4) if best else None,
            "threshold": round(result.threshold, 4),
        })
    return rows


class RowWriter:
    """CSV or JSON lines; CSV leaves missing values empty, JSON lines writes null."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self.out, self.fmt = out, fmt
        self.csv = csv.DictWriter(out, IDENTIFY_FIELDS) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if self.csv is not None:
                self.csv.writerow({k: "" if v is None else v for k, v in row.items()})
            else:
                self.out.write(json.dumps(row) + "\n")
        self.out.flush()


async def identify_dir(
    root: Path,
    client: Any,
    writer: RowWriter,
    *,
    concurrency: int = 4,
    k: int = 5,
    threshold: float | None = None,
    identify_fpir: float | None = None,
    max_faces: int | None = None,
    progress: bool = True,
) -> Counter[str]:
    """Identify every face of every photo under ``root``; rows are written in file order as
    soon as each photo and those before it are done. Returns the count of each decision."""
    import faceserve_client as fc
    from tqdm import tqdm

    photos = list_photos(root)
    finished: dict[int, list[dict]] = {}
    next_out = 0
    counts: Counter[str] = Counter()
    bar = tqdm(total=len(photos), unit="photo", disable=not progress, file=sys.stderr,
               desc="identify-dir")
    jobs: Iterator[tuple[int, Path]] = iter(enumerate(photos))

    async def worker() -> None:
        nonlocal next_out
        for index, path in jobs:
            rel = path.relative_to(root).as_posix()
            try:
                data = await asyncio.to_thread(path.read_bytes)
                result = await client.identify(data, k=k, threshold=threshold,
                                               identify_fpir=identify_fpir, max_faces=max_faces)
                rows = identify_rows(rel, result)
            except (fc.AuthenticationError, fc.PermissionDeniedError) as exc:
                raise Fatal(str(exc)) from exc
            except (fc.FaceserveError, OSError) as exc:
                rows = identify_rows(rel, error=exc)
            counts.update(row["decision"] for row in rows)
            finished[index] = rows
            while next_out in finished:
                writer.write(finished.pop(next_out))
                next_out += 1
            bar.update(1)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, concurrency)):
                group.create_task(worker())
    finally:
        bar.close()
    return counts


# ---------------------------------------------------------------- command line


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("FACESERVE_URL", "http://127.0.0.1:8000"),
                   help="the faceserve server (default: $FACESERVE_URL, else "
                   "http://127.0.0.1:8000); local or remote")
    p.add_argument("--api-key", default=os.environ.get("FACESERVE_API_KEY"),
                   help="API key (default: $FACESERVE_API_KEY; none for a keyless local "
                   "server). enroll-dir needs scope enroll, identify-dir scope recognize")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="requests in flight at once (default 4; the server's inference "
                   "threads bound what helps)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for each answer (default 120)")
    p.add_argument("--retries", type=int, default=5, metavar="N",
                   help="retries of a request answered 429 or 503, waiting as Retry-After "
                   "says (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "enroll-dir",
        help="enroll a folder of photos (one folder per person) into a server",
        description=(
            "Enroll every photo under DIR (JPEG, PNG, WebP, BMP, GIF, TIFF; any depth) into "
            "the server at --url. By default each top-level folder of DIR is one person, its "
            "name the subject id: DIR/alice/1.jpg is enrolled as 'alice'. Each photo's "
            "outcome (enrolled, already_enrolled, no_face, several_faces, poor_quality, "
            "duplicate, error) goes to the --csv file as soon as it is known, and a summary "
            "table is printed at the end. Safe to interrupt and run again: photos done by an "
            "earlier run (same bytes, final outcome) are skipped, errors are tried again, and "
            "a photo sent twice is stored once (the server recognises its bytes). Exit status "
            "1 when some photo ended in 'error' (run again to retry them)."
        ),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="folder of photos")
    p.add_argument("--subject-from", metavar="REGEX",
                   help="take the subject id from each photo's path relative to DIR (with "
                   "'/'), searched with this regular expression: its group 'subject', else "
                   "group 1, else the whole match; e.g. '^(.+)_\\d+\\.jpg$' for "
                   "alice_0001.jpg. Photos it does not match are 'error' rows")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="outcome of every photo, and the record a new run resumes from "
                   "(default: <DIR name>-enroll.csv in the current folder)")
    p.add_argument("--on-multiple", choices=["reject", "primary"], default="reject",
                   help="a photo with several faces: 'reject' (default; outcome "
                   "several_faces, since the folder's name may not be the largest face's), or "
                   "enroll its 'primary' face (largest, then most confident, then central)")
    p.add_argument("--on-duplicate", choices=["warn", "reject"], default="warn",
                   help="a face that already matches another subject: 'warn' (default: "
                   "enrolled; the server reports it) or 'reject' (outcome duplicate)")
    p.add_argument("--force", action="store_true",
                   help="enroll faces that break the server's quality limits (outcome "
                   "poor_quality otherwise)")
    p.add_argument("--restart", action="store_true",
                   help="ignore the outcomes of earlier runs in --csv and send every photo "
                   "again (the server still stores each photo once)")
    _client_options(p)
    p.set_defaults(func=_enroll_dir)

    q = sub.add_parser(
        "identify-dir",
        help="identify every face of every photo in a folder, as CSV or JSON lines",
        description=(
            "Send every photo under DIR (any depth) to POST /identify at --url and write one "
            "row per face: file, face (0 = most confident), box (left, top, right, bottom, "
            "inclusive pixels), detection_confidence, subject_id and similarity of the match, "
            "decision ('match' or 'unknown'), the best candidate even when below the "
            "threshold (best_subject_id, best_similarity) and the threshold that decided. A "
            "photo without faces is one 'no_face' row, a photo the server refused one "
            "'error' row. Rows come in file order."
        ),
    )
    q.add_argument("dir", type=Path, metavar="DIR", help="folder of photos")
    q.add_argument("--out", default="-", metavar="FILE",
                   help="output file (default: standard output)")
    q.add_argument("--format", choices=["csv", "jsonl"],
                   help="output format (default: jsonl for a .jsonl file, else csv)")
    q.add_argument("--k", type=int, default=1, metavar="K",
                   help="candidates the server returns per face (default 1: the best)")
    q.add_argument("--threshold", type=float, metavar="COS",
                   help="a fixed cosine threshold for this run (default: the server's)")
    q.add_argument("--identify-fpir", type=float, metavar="RATE",
                   help="target false positive identification rate for this run (default: "
                   "the server's); ignored with --threshold")
    q.add_argument("--max-faces", type=int, metavar="N",
                   help="most faces identified per photo (default: the server's max_faces)")
    _client_options(q)
    q.set_defaults(func=_identify_dir)


def _open_client(args: argparse.Namespace) -> Any:
    import faceserve_client as fc

    return fc.AsyncClient(args.url, args.api_key, timeout=args.timeout,
                          max_retries=args.retries)


def _stopped(group: ExceptionGroup) -> int:
    """A run stopped by ``Fatal`` (a bad key): say why; a closed output pipe: stop quietly;
    anything else is a bug, re-raised."""
    if group.subgroup(BrokenPipeError) is not None:  # e.g. `identify-dir DIR | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush of the closed pipe at exit
        return 1
    fatal = group.subgroup(Fatal)
    if fatal is None:
        raise group
    first: BaseException = fatal
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    print(f"stopped: {first}", file=sys.stderr)
    return 2


def _check_dir(path: Path) -> str | None:
    return None if path.is_dir() else f"{path} is not a folder"


def _enroll_dir(args: argparse.Namespace) -> int:
    if (problem := _check_dir(args.dir)) is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        pattern = re.compile(args.subject_from) if args.subject_from else None
    except re.error as exc:
        print(f"--subject-from is not a valid regular expression: {exc}", file=sys.stderr)
        return 2
    csv_path = args.csv or Path(f"{args.dir.resolve().name}-enroll.csv")

    async def run() -> EnrollSummary:
        async with _open_client(args) as client:
            return await enroll_dir(
                args.dir, client, csv_path, concurrency=args.concurrency, subject_from=pattern,
                on_multiple=args.on_multiple, on_duplicate=args.on_duplicate, force=args.force,
                resume=not args.restart, progress=not args.no_progress,
            )

    try:
        summary = asyncio.run(run())
    except ExceptionGroup as group:
        return _stopped(group)
    print(summary.table())
    print(f"outcomes: {csv_path}")
    return 1 if summary.counts.get("error") else 0


def _identify_dir(args: argparse.Namespace) -> int:
    if (problem := _check_dir(args.dir)) is not None:
        print(problem, file=sys.stderr)
        return 2
    fmt = args.format or ("jsonl" if str(args.out).endswith(".jsonl") else "csv")
    # Rows name the people in the photos: the file is owner-only (0600), as the gallery's.
    out = sys.stdout if args.out == "-" else open_private(args.out, "w", newline="")

    async def run() -> Counter[str]:
        async with _open_client(args) as client:
            return await identify_dir(
                args.dir, client, RowWriter(out, fmt), concurrency=args.concurrency, k=args.k,
                threshold=args.threshold, identify_fpir=args.identify_fpir,
                max_faces=args.max_faces, progress=not args.no_progress,
            )

    try:
        counts = asyncio.run(run())
    except ExceptionGroup as group:
        return _stopped(group)
    finally:
        if out is not sys.stdout:
            out.close()
    print(", ".join(f"{k}: {counts.get(k, 0)}" for k in ("match", "unknown", "no_face", "error")),
          file=sys.stderr)
    return 1 if counts.get("error") else 0

"""A gallery as one portable file: ``faceserve export-gallery`` writes it, ``import-gallery``
reads it into any store (SQLite or PostgreSQL, the same or the other).

Format (version 2): an uncompressed POSIX tar (``tar tf`` lists it; gzip it if you like, the
reader detects compression), its members in this order::

    manifest.json              what the archive holds (see below), written first
    subjects/000000.jsonl      subjects in id order: one JSON object per line
    subjects/000000.sha256     {"jsonl": sha256}: each page ends with its members' digests
    ...
    faces/000000.jsonl         one page of faces in enrollment (row) order, one object per line
    faces/000000.npy           their embeddings, (n, dim) little-endian float32 (numpy .npy)
    faces/000000.chips         their aligned 150x150 JPEG chips, concatenated; each face line
                               gives its chip's [offset, length] in this member, or null
    faces/000000.sha256        {"jsonl": ..., "npy": ..., "chips": ...}
    ...
    unknown/000000.{jsonl,npy,chips,sha256}     the unknown-face pool (issue 17), as faces: each
                               face with its creation time (its retention runs on from it) and
                               cluster; faces already past the retention limit are left out
    negatives/000000.{jsonl,npy,chips,sha256}   subjects' negative examples ("not this person")
    end.json                   totals, galleries (namespaces) and the content digest

Version 1 archives (no pool, no negatives) are read as before; a reader of version 1 refuses
a version 2 archive instead of dropping its pool and negatives unseen.

``manifest.json``: ``format``, ``format_version``, ``archive_id`` (random, per export),
``exported_at``, ``source`` (where it came from; never a password), ``model`` (faces per model
label, embedding size), ``operating_point`` (the threshold the source served at, when known),
``cursor`` (the source's last change id and last audit event id: the archive holds everything up
to them and nothing after), ``counts`` (subjects, faces, faces without a chip per model).

Subject ids are stored as the gallery stores them: a named gallery's (namespace's) subjects
keep their ``\\x1f<gallery>\\x1f`` prefix (``service.security.keys``), so galleries move as they
are; each subject line also names its ``gallery`` ("" is the default one). API keys and the
audit log's events are not in the archive: keys stay with the host that issued them.

Streaming: the export reads the store page by page inside one read transaction (a consistent
state even while a PostgreSQL replica writes), and the import reads one page at a time, so
memory is bounded by the page size (1,000 faces: about 6 MB with chips), not the gallery.

Importing (resumable, model-checked): ``service.gallery.archive_import``.

The content digest (``end.json``) is a SHA-256 over the logical content: every subject and face
field, embedding bytes and chip bytes, independent of page size and of which store wrote it.
Two exports of the same gallery content, from SQLite or PostgreSQL, have the same digest; the
import recomputes it and refuses an archive whose content does not match.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.gallery.store.base import GalleryStore, NewFace, SubjectRecord
from service.gallery.store.negatives import NegativeRecord
from service.gallery.store.unknown import UnknownFace

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ArchiveError",
    "ArchiveModelMismatch",
    "ArchiveReader",
    "ExportResult",
    "export_gallery",
    "gallery_of",
    "gallery_range",
]

FORMAT = "faceserve-gallery-archive"
FORMAT_VERSION = 2
FACE_PAGE = 1000
SUBJECT_PAGE = 5000
_SEP = "\x1f"
_PART = "{:06d}"


class ArchiveError(RuntimeError):
    """The archive cannot be written or read, or cannot go into this gallery."""


class ArchiveModelMismatch(ArchiveError):
    """The archive's embeddings are of another model than the target serves."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gallery_of(subject_id: str) -> str:
    """The gallery (namespace) name of a stored subject id; "" for the default gallery."""
    if subject_id.startswith(_SEP):
        end = subject_id.find(_SEP, 1)
        if end > 0:
            return subject_id[1:end]
    return ""


def gallery_range(gallery: str | None) -> tuple[str, str | None]:
    """The stored subject ids ``[lo, hi)`` of one gallery ("" the default one), or of all
    (None): named galleries' ids are ``\\x1f<name>\\x1f<id>``, the default's start at
    ``\\x20`` (see ``service.security.keys``)."""
    if gallery is None:
        return "", None
    if not gallery:
        return "\x20", None
    return f"{_SEP}{gallery}{_SEP}", f"{_SEP}{gallery}\x20"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _subject_dict(s: SubjectRecord) -> dict[str, Any]:
    return {"subject_id": s.subject_id, "gallery": gallery_of(s.subject_id),
            "metadata": s.metadata, "created_at": s.created_at, "face_count": s.face_count}


def _face_dict(f: NewFace) -> dict[str, Any]:
    return {"face_id": f.face_id, "subject_id": f.subject_id, "bbox": [int(v) for v in f.bbox],
            "landmarks": [[float(c) for c in p] for p in f.landmarks],
            "detection_confidence": float(f.detection_confidence), "model": f.model,
            "image_sha256": f.image_sha256, "created_at": f.created_at}


def _unknown_dict(f: UnknownFace) -> dict[str, Any]:
    return {"face_id": f.face_id, "gallery": f.gallery, "photo": f.photo, "source": f.source,
            "bbox": [int(v) for v in f.bbox], "landmarks": [[float(c) for c in p]
                                                            for p in f.landmarks],
            "detection_confidence": float(f.detection_confidence), "model": f.model,
            "created_at": f.created_at, "cluster_id": f.cluster_id, "pinned": bool(f.pinned)}


def _negative_dict(n: NegativeRecord) -> dict[str, Any]:
    return {"negative_id": n.negative_id, "subject_id": n.subject_id, "source": n.source,
            "source_id": n.source_id, "model": n.model, "created_at": n.created_at}


class _Digest:
    """The content digest: a SHA-256 over canonical records, blind to paging and layout."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def subject(self, s: dict[str, Any]) -> None:
        self._h.update(b"S" + _canonical(s) + b"\n")

    def face(self, f: dict[str, Any], embedding: np.ndarray, chip: bytes | None,
             kind: bytes = b"F") -> None:
        """A face, a pool face (``kind`` U) or a negative (N)."""
        self._h.update(kind + _canonical(f) + b"\n")
        self._h.update(np.ascontiguousarray(embedding, dtype="<f4").tobytes())
        self._h.update(b"-" if chip is None else hashlib.sha256(chip).digest())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass
class _Galleries:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, gallery: str, subjects: int = 0, faces: int = 0) -> None:
        entry = self.counts.setdefault(gallery, {"subjects": 0, "faces": 0})
        entry["subjects"] += subjects
        entry["faces"] += faces


# ---------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportResult:
    path: Path
    archive_id: str
    subjects: int
    faces: int
    chips: int
    bytes: int
    seconds: float
    content_sha256: str
    galleries: dict[str, dict[str, int]]
    unknown_faces: int = 0
    negatives: int = 0

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.seconds if self.seconds > 0 else 0.0


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _add_page(tar: tarfile.TarFile, base: str, parts: dict[str, bytes], mtime: float) -> None:
    """A page's members, then ``<base>.sha256`` with their digests: the import checks a page
    before committing it, so a corrupted archive is refused before its bad page is stored."""
    for ext, data in parts.items():
        _add_member(tar, f"{base}.{ext}", data, mtime)
    sums = {ext: hashlib.sha256(data).hexdigest() for ext, data in parts.items()}
    _add_member(tar, f"{base}.sha256", json.dumps(sums).encode(), mtime)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype="<f4"), allow_pickle=False)
    return buf.getvalue()


def export_gallery(
    store: GalleryStore,
    out: Path,
    *,
    source: str | None = None,
    operating_point: dict[str, Any] | None = None,
    page_size: int = FACE_PAGE,
    progress: bool = True,
    gallery: str | None = None,
    unknown_after: str | None = None,
) -> ExportResult:
    """Write the whole gallery of ``store`` to the archive ``out`` (see the module docstring);
    with ``gallery``, only that gallery's (namespace's) subjects and faces ("": the default
    gallery's). The unknown-face pool (created at or after ``unknown_after``, when given: the
    faces within their retention limit) and the negatives go in too.

    Written to ``<out>.partial`` and renamed when complete, so a crash never leaves a file at
    ``out`` that looks like a whole archive; the file is created readable by its owner only
    (it holds biometric data)."""
    from tqdm import tqdm

    if page_size < 1:
        raise ValueError("page_size must be positive")
    start = time.perf_counter()
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    archive_id = uuid.uuid4().hex
    now = time.time()
    digest, galleries = _Digest(), _Galleries()
    subjects = faces = chips = unknown = negatives = 0
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(
            fileobj=raw, mode="w", format=tarfile.PAX_FORMAT
        ) as tar, store.snapshot(*gallery_range(gallery)) as snap:
            state = snap.state()
            dims: set[int] = set()
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "archive_id": archive_id,
                "exported_at": now_iso(),
                "source": source or store.location,
                "gallery": gallery,  # null: every gallery of the source
                "model": {"faces_per_model": state.model_counts, "embedding_size": None},
                "operating_point": operating_point,
                "cursor": {"last_change_id": state.last_change_id,
                           "last_audit_id": snap.last_audit_id()},
                "counts": {"subjects": state.subject_count, "faces": state.face_count,
                           "faces_without_chip": snap.chipless_models()},
            }
            # The embedding size is needed up front (the import checks it before writing):
            # read from the first face, within the same snapshot.
            first = next(snap.face_pages(1), [])
            if first:
                manifest["model"]["embedding_size"] = int(first[0].embedding.shape[0])
            _add_member(tar, "manifest.json", json.dumps(manifest, indent=2).encode(), now)
            with tqdm(total=state.subject_count + state.face_count, unit="rec",
                      desc="exporting subjects and faces", disable=not progress) as bar:
                for n, page in enumerate(snap.subject_pages(SUBJECT_PAGE)):
                    lines = []
                    for s in page:
                        d = _subject_dict(s)
                        digest.subject(d)
                        galleries.add(d["gallery"], subjects=1)
                        lines.append(json.dumps(d, ensure_ascii=False))
                    _add_page(tar, f"subjects/{_PART.format(n)}",
                              {"jsonl": ("\n".join(lines) + "\n").encode()}, now)
                    subjects += len(page)
                    bar.update(len(page))
                for n, fpage in enumerate(snap.face_pages(page_size)):
                    lines, blobs, offset = [], [], 0
                    vectors = np.stack([f.embedding for f in fpage])
                    dims.add(int(vectors.shape[1]))
                    for f in fpage:
                        d = _face_dict(f)
                        digest.face(d, f.embedding, f.chip_jpeg)
                        galleries.add(gallery_of(f.subject_id), faces=1)
                        if f.chip_jpeg is not None:
                            d["chip"] = [offset, len(f.chip_jpeg)]
                            blobs.append(f.chip_jpeg)
                            offset += len(f.chip_jpeg)
                            chips += 1
                        else:
                            d["chip"] = None
                        lines.append(json.dumps(d, ensure_ascii=False))
                    base = f"faces/{_PART.format(n)}"
                    _add_page(tar, base, {"jsonl": ("\n".join(lines) + "\n").encode(),
                                          "npy": _npy(vectors), "chips": b"".join(blobs)}, now)
                    faces += len(fpage)
                    bar.update(len(fpage))
            pool = snap.unknown_pages(page_size, gallery, unknown_after)  # type: ignore[attr-defined]
            for n, upage in enumerate(pool):
                _add_page(tar, f"unknown/{_PART.format(n)}", _extra_page(
                    [_unknown_dict(f) for f in upage], upage, digest, b"U", dims), now)
                unknown += len(upage)
            for n, npage in enumerate(snap.negative_pages(page_size)):  # type: ignore[attr-defined]
                _add_page(tar, f"negatives/{_PART.format(n)}", _extra_page(
                    [_negative_dict(x) for x in npage], npage, digest, b"N", dims), now)
                negatives += len(npage)
            if len(dims) > 1:
                raise ArchiveError(f"the gallery holds embeddings of several sizes {sorted(dims)}")
            end = {"subjects": subjects, "faces": faces, "chips": chips,
                   "unknown_faces": unknown, "negatives": negatives,
                   "galleries": galleries.counts, "content_sha256": digest.hexdigest()}
            _add_member(tar, "end.json", json.dumps(end, indent=2).encode(), now)
        with open(partial, "rb") as written:  # on disk before it is given its name
            os.fsync(written.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return ExportResult(out, archive_id, subjects, faces, chips, out.stat().st_size,
                        time.perf_counter() - start, end["content_sha256"], galleries.counts,
                        unknown, negatives)


def _extra_page(dicts: list[dict[str, Any]], records: list[Any], digest: _Digest, kind: bytes,
                dims: set[int]) -> dict[str, bytes]:
    """The members of a page of pool faces or negatives: as a page of faces."""
    lines, blobs, offset = [], [], 0
    vectors = np.stack([np.asarray(r.embedding, np.float32) for r in records])
    dims.add(int(vectors.shape[1]))
    for d, r in zip(dicts, records, strict=True):
        digest.face(d, r.embedding, r.chip_jpeg, kind)
        if r.chip_jpeg is not None:
            d["chip"] = [offset, len(r.chip_jpeg)]
            blobs.append(r.chip_jpeg)
            offset += len(r.chip_jpeg)
        else:
            d["chip"] = None
        lines.append(json.dumps(d, ensure_ascii=False))
    return {"jsonl": ("\n".join(lines) + "\n").encode(), "npy": _npy(vectors),
            "chips": b"".join(blobs)}


# ---------------------------------------------------------------- reading


class ArchiveReader:
    """Reads an archive front to back, one page in memory at a time.

    ``manifest`` is read on open; ``subject_pages()`` then ``face_pages()`` stream the rest,
    and the last one checks ``end.json`` (counts and content digest): ``ArchiveError`` for a
    truncated, corrupt or foreign file, raised as soon as it is seen."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise ArchiveError(f"cannot open archive {self.path}: {exc}") from None
        try:
            try:
                self._tar = tarfile.open(fileobj=self._file, mode="r|*")  # noqa: SIM115
            except tarfile.TarError as exc:
                raise ArchiveError(f"{self.path} is truncated or corrupt, or not an archive "
                                   f"from export-gallery: {exc}") from None
            self._pending: tarfile.TarInfo | None = None
            name, data = self._next()
            if name != "manifest.json":
                raise ArchiveError(f"{self.path} is not a faceserve gallery archive "
                                   f"(first member {name!r}, not manifest.json)")
            self.manifest: dict[str, Any] = self._json(name, data)
        except BaseException:
            self.close()
            raise
        if self.manifest.get("format") != FORMAT:
            self.close()
            raise ArchiveError(f"{self.path} is not a faceserve gallery archive "
                               f"(format {self.manifest.get('format')!r})")
        version = self.manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            self.close()
            raise ArchiveError(f"{self.path} has archive format version {version!r}; this "
                               f"faceserve reads up to {FORMAT_VERSION}: upgrade faceserve")
        self._digest, self._galleries = _Digest(), _Galleries()
        self._subjects = self._faces = self._unknown = self._negatives = 0
        self._stage = "subjects"

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_tar", None) is not None:
            self._tar.close()
        self._file.close()

    @property
    def archive_id(self) -> str:
        return str(self.manifest.get("archive_id", ""))

    @property
    def face_count(self) -> int:
        return int(self.manifest.get("counts", {}).get("faces", 0))

    @property
    def subject_count(self) -> int:
        return int(self.manifest.get("counts", {}).get("subjects", 0))

    @property
    def models(self) -> dict[str, int]:
        return {str(m): int(n) for m, n in
                (self.manifest.get("model", {}).get("faces_per_model") or {}).items() if n}

    @property
    def embedding_size(self) -> int | None:
        size = self.manifest.get("model", {}).get("embedding_size")
        return None if size is None else int(size)

    # -------------------------------------------------------- members

    def _next(self) -> tuple[str | None, bytes]:
        """The next member's name and bytes; (None, b"") at the end of the tar."""
        try:
            info = self._pending or self._tar.next()
            self._pending = None
            if info is None:
                return None, b""
            if not info.isfile():
                raise ArchiveError(f"{self.path}: unexpected member {info.name!r}")
            f = self._tar.extractfile(info)
            assert f is not None
            data = f.read()
            if len(data) != info.size:
                raise EOFError("member cut short")
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise ArchiveError(f"{self.path} is truncated or corrupt: {exc}") from None
        return info.name, data

    def _peek(self) -> str | None:
        if self._pending is None:
            try:
                self._pending = self._tar.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise ArchiveError(f"{self.path} is truncated or corrupt: {exc}") from None
        return None if self._pending is None else self._pending.name

    def _json(self, name: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ArchiveError(f"{self.path}: {name} is not valid JSON: {exc}") from None

    def _lines(self, name: str, data: bytes) -> list[dict[str, Any]]:
        try:
            return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"{self.path}: {name} is not valid JSON lines: {exc}") from None

    # -------------------------------------------------------- pages

    def subject_pages(self) -> Iterator[list[SubjectRecord]]:
        if self._stage != "subjects":
            raise ArchiveError("subjects are read once, before the faces")
        while (name := self._peek()) is not None and name.startswith("subjects/"):
            base = name.rsplit(".", 1)[0]
            name, data = f"{base}.jsonl", self._read_page(base, ("jsonl",))["jsonl"]
            page = []
            for d in self._lines(name, data):
                try:
                    record = SubjectRecord(str(d["subject_id"]), dict(d["metadata"]),
                                           str(d["created_at"]), int(d["face_count"]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ArchiveError(f"{self.path}: bad subject in {name}: {exc!r}") from None
                self._digest.subject(_subject_dict(record))
                self._galleries.add(gallery_of(record.subject_id), subjects=1)
                page.append(record)
            self._subjects += len(page)
            yield page
        self._stage = "faces"

    def face_pages(self) -> Iterator[list[NewFace]]:
        if self._stage == "subjects":
            for _ in self.subject_pages():
                pass
        if self._stage != "faces":
            raise ArchiveError("faces are read once")
        self._stage = "done"
        dim = self.embedding_size
        while (name := self._peek()) is not None and name.startswith("faces/"):
            base = name.rsplit(".", 1)[0]
            yield self._face_page(base, self._read_page(base, ("jsonl", "npy", "chips")), dim)
        if (name := self._peek()) is not None and name.startswith(("unknown/", "negatives/")):
            self._stage = "pool"  # pool_pages() reads the rest and checks the end
            return
        self._finish()

    def pool_pages(self) -> Iterator[tuple[str, list[Any]]]:
        """After ``face_pages``: ("unknown", pool faces) and ("negatives", negatives) pages,
        then the end check. Nothing for an archive without them (version 1)."""
        if self._stage in ("subjects", "faces"):
            for _ in self.face_pages():
                pass
        if self._stage != "pool":
            return
        self._stage = "done"
        dim = self.embedding_size
        while (name := self._peek()) is not None and name.startswith(("unknown/", "negatives/")):
            base = name.rsplit(".", 1)[0]
            kind = base.split("/", 1)[0]
            parts = self._read_page(base, ("jsonl", "npy", "chips"))
            lines = self._lines(base + ".jsonl", parts["jsonl"])
            vectors = self._vectors(base, parts["npy"], len(lines), dim)
            page: list[Any] = []
            for d, vector in zip(lines, vectors, strict=True):
                chip = self._chip(base, d, parts["chips"])
                try:
                    if kind == "unknown":
                        bbox = [int(v) for v in d["bbox"]]
                        record: Any = UnknownFace(
                            face_id=str(d["face_id"]), gallery=str(d["gallery"]),
                            photo=str(d["photo"]), source=d.get("source"),
                            bbox=(bbox[0], bbox[1], bbox[2], bbox[3]),
                            landmarks=[[float(c) for c in p] for p in d["landmarks"]],
                            detection_confidence=float(d["detection_confidence"]),
                            model=str(d["model"]), created_at=str(d["created_at"]),
                            embedding=vector, chip_jpeg=chip, cluster_id=d.get("cluster_id"),
                            pinned=bool(d.get("pinned", False)))
                        self._digest.face(_unknown_dict(record), vector, chip, b"U")
                    else:
                        record = NegativeRecord(
                            negative_id=str(d["negative_id"]), subject_id=str(d["subject_id"]),
                            source=str(d["source"]), source_id=d.get("source_id"),
                            model=str(d["model"]), created_at=str(d["created_at"]),
                            embedding=vector, chip_jpeg=chip)
                        self._digest.face(_negative_dict(record), vector, chip, b"N")
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    raise ArchiveError(f"{self.path}: bad record in {base}.jsonl: {exc!r}"
                                       ) from None
                page.append(record)
            if kind == "unknown":
                self._unknown += len(page)
            else:
                self._negatives += len(page)
            yield kind, page
        self._finish()

    def _vectors(self, base: str, npy: bytes, n: int, dim: int | None) -> np.ndarray:
        try:
            vectors = np.load(io.BytesIO(npy), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ArchiveError(f"{self.path}: {base}.npy is not an array: {exc}") from None
        if (vectors.ndim != 2 or vectors.shape[0] != n or vectors.dtype.kind != "f"
                or (dim is not None and vectors.shape[1] != dim)):
            raise ArchiveError(f"{self.path}: {base}.npy has shape {vectors.shape} for "
                               f"{n} records of size {dim}")
        return vectors.astype(np.float32)

    def _chip(self, base: str, d: dict[str, Any], blob: bytes) -> bytes | None:
        if d.get("chip") is None:
            return None
        try:
            offset, length = (int(v) for v in d["chip"])
        except (TypeError, ValueError) as exc:
            raise ArchiveError(f"{self.path}: bad chip in {base}.jsonl: {exc!r}") from None
        if offset < 0 or length < 0 or offset + length > len(blob):
            raise ArchiveError(f"{self.path}: a chip of {base}.jsonl is outside its member")
        return blob[offset:offset + length]

    def _read_page(self, base: str, exts: tuple[str, ...]) -> dict[str, bytes]:
        """A page's members, checked against its ``.sha256`` member."""
        parts: dict[str, bytes] = {}
        for ext in (*exts, "sha256"):
            got, data = self._next()
            if got != f"{base}.{ext}":
                raise ArchiveError(f"{self.path}: expected {base}.{ext}, found {got!r} "
                                   "(truncated, or not written by faceserve)")
            parts[ext] = data
        sums = self._json(f"{base}.sha256", parts.pop("sha256"))
        for ext, data in parts.items():
            if not isinstance(sums, dict) or sums.get(ext) != hashlib.sha256(data).hexdigest():
                raise ArchiveError(f"{self.path}: {base}.{ext} does not match its checksum: "
                                   "the archive is corrupt; nothing of this page was imported")
        return parts

    def _face_page(self, base: str, parts: dict[str, bytes], dim: int | None) -> list[NewFace]:
        lines = self._lines(base + ".jsonl", parts["jsonl"])
        try:
            vectors = np.load(io.BytesIO(parts["npy"]), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ArchiveError(f"{self.path}: {base}.npy is not an array: {exc}") from None
        if (vectors.ndim != 2 or vectors.shape[0] != len(lines) or vectors.dtype.kind != "f"
                or (dim is not None and vectors.shape[1] != dim)):
            raise ArchiveError(f"{self.path}: {base}.npy has shape {vectors.shape} for "
                               f"{len(lines)} faces of size {dim}")
        vectors = vectors.astype(np.float32)
        blob = parts["chips"]
        page = []
        for d, vector in zip(lines, vectors, strict=True):
            try:
                chip = None
                if d.get("chip") is not None:
                    offset, length = (int(v) for v in d["chip"])
                    if offset < 0 or length < 0 or offset + length > len(blob):
                        raise ValueError("chip outside its member")
                    chip = blob[offset:offset + length]
                bbox = [int(v) for v in d["bbox"]]
                face = NewFace(
                    face_id=str(d["face_id"]), subject_id=str(d["subject_id"]),
                    bbox=(bbox[0], bbox[1], bbox[2], bbox[3]),
                    landmarks=[[float(c) for c in p] for p in d["landmarks"]],
                    detection_confidence=float(d["detection_confidence"]),
                    model=str(d["model"]), image_sha256=str(d["image_sha256"]),
                    created_at=str(d["created_at"]), embedding=vector, chip_jpeg=chip,
                )
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise ArchiveError(f"{self.path}: bad face in {base}.jsonl: {exc!r}") from None
            self._digest.face(_face_dict(face), vector, chip)
            self._galleries.add(gallery_of(face.subject_id), faces=1)
            page.append(face)
        self._faces += len(page)
        return page

    def _finish(self) -> None:
        name, data = self._next()
        if name is None:
            raise ArchiveError(f"{self.path} is truncated: it ends before end.json "
                               f"({self._faces} of {self.face_count} faces read)")
        if name != "end.json":
            raise ArchiveError(f"{self.path}: unexpected member {name!r}")
        end = self._json(name, data)
        self.end: dict[str, Any] = end
        if (end.get("subjects"), end.get("faces")) != (self._subjects, self._faces):
            raise ArchiveError(
                f"{self.path}: end.json counts {end.get('subjects')} subjects and "
                f"{end.get('faces')} faces, but {self._subjects} and {self._faces} were read")
        if (end.get("unknown_faces", 0), end.get("negatives", 0)) != (self._unknown,
                                                                       self._negatives):
            raise ArchiveError(
                f"{self.path}: end.json counts {end.get('unknown_faces', 0)} pool faces and "
                f"{end.get('negatives', 0)} negatives, but {self._unknown} and "
                f"{self._negatives} were read")
        if end.get("content_sha256") != self._digest.hexdigest():
            raise ArchiveError(f"{self.path}: content digest mismatch: the archive was "
                               "modified or corrupted after it was written")

    @property
    def content_sha256(self) -> str:
        """The digest of what was read (equal to end.json's once the faces are all read)."""
        return self._digest.hexdigest()

    @property
    def galleries(self) -> dict[str, dict[str, int]]:
        return self._galleries.counts

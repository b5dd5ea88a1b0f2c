"""``export-gallery`` / ``import-gallery``: a gallery moves between SQLite and PostgreSQL through
one archive, unchanged; an interrupted import resumes without duplicates; a model mismatch is
refused unless re-embedding is asked for; the imported gallery finds the same people.

Real stores throughout (PostgreSQL tests skip with the reason when no server answers), real
JPEG chips, and the real CLI in subprocesses for the command-line behaviour.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.gallery.archive import (
    ArchiveError,
    ArchiveModelMismatch,
    ArchiveReader,
    export_gallery,
)
from service.gallery.archive_import import import_gallery
from service.gallery.gallery import Gallery
from service.gallery.reembed import decode_chip
from service.gallery.store import GalleryStore, NewFace, open_store
from service.gallery.store.base import NewAuditEvent
from service.gallery.store.negatives import NegativeRecord
from service.gallery.store.unknown import UnknownFace
from service.inference.inference import encode_jpeg
from service.security.keys import Namespace
from tests.service import postgres_util
from tests.service.test_reembed import NEW, NEW_DIM, chip, new_model, unit

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
MODEL = "dlib-resnet-v1"  # the default model's label, so the CLI imports without --model
ACME = Namespace("acme")


def build_source(store: GalleryStore, *, subjects: int = 12, per_subject: int = 3,
                 model: str = MODEL) -> None:
    """Subjects of the default gallery and of gallery "acme", with metadata, chips (a few
    faces without), a deleted face (row ids with a gap) and audit events."""
    for s in range(subjects):
        sid = f"person-{s:03d}" if s % 3 else ACME.internal(f"member-{s:03d}")
        for n in range(per_subject):
            seed = s * 100 + n
            store.add_face(NewFace(
                face_id=f"f-{seed:06d}", subject_id=sid, bbox=(s, n, s + 100, n + 120),
                landmarks=[[float(s), float(n) + 0.25], [3.5, 4.125]],
                detection_confidence=0.5 + n / 10, model=model,
                image_sha256=hashlib.sha256(f"{sid}/{n}".encode()).hexdigest(),
                created_at=f"2026-01-{1 + n:02d}T00:00:00.000Z",
                # Faces of one subject lie close together, as a real model's would.
                embedding=_near(unit(s), seed),
                chip_jpeg=None if seed % 17 == 5 else encode_jpeg(chip(seed)),
            ), {"name": f"Person {s}", "tags": ["ü", s]} if n == 0 else None)
    store.delete_face("f-000101")
    store.add_audit(NewAuditEvent(at="2026-01-05T00:00:00.000Z", key_id=None, key_name="t",
                                  action="enroll"))
    # The unknown-face pool (two galleries, one face from long ago) and negatives (issue 17).
    store.add_unknown([  # type: ignore[attr-defined]
        UnknownFace(face_id=f"u-{i}", gallery="acme" if i % 2 else "", photo=f"photo-{i // 2}",
                    source=None if i == 3 else f"album/{i}.jpg", bbox=(i, 2, 50, 60),
                    landmarks=[[1.5, 2.0]] * 5, detection_confidence=0.75, model=model,
                    created_at="2000-01-01T00:00:00.000Z" if i == 0 else
                    f"2026-02-{1 + i:02d}T00:00:00.000Z", embedding=_near(unit(50 + i), i),
                    chip_jpeg=None if i == 2 else encode_jpeg(chip(900 + i)),
                    cluster_id="c1" if i < 3 else None, pinned=i == 1)
        for i in range(5)])
    for i, sid in enumerate(("person-001", "person-002", ACME.internal("member-000"))):
        if store.get_subject(sid, with_faces=False) is None:
            continue
        store.add_negative(NegativeRecord(  # type: ignore[attr-defined]
            negative_id=f"n-{i}", subject_id=sid, source="embedding" if i else "face",
            source_id=None if i else "f-000300", model=model,
            created_at=f"2026-03-0{1 + i}T00:00:00.000Z", embedding=_near(unit(60 + i), i),
            chip_jpeg=encode_jpeg(chip(950)) if i == 0 else None))


def _near(center: np.ndarray, seed: int, noise: float = 0.15) -> np.ndarray:
    v = center + noise * np.random.default_rng(seed + 99).standard_normal(center.shape[0])
    return (v / np.linalg.norm(v)).astype(np.float32)


def content(path: Path) -> dict[str, Any]:
    """An archive's logical content: what must survive a round trip (not ids, times, source)."""
    with ArchiveReader(path) as reader:
        subjects = [s for page in reader.subject_pages() for s in page]
        faces = [f for page in reader.face_pages() for f in page]
        pool = list(reader.pool_pages())
        m = reader.manifest
        return {
            "model": m["model"], "operating_point": m["operating_point"],
            "counts": m["counts"], "galleries": reader.end["galleries"],
            "content_sha256": reader.end["content_sha256"],
            "subjects": [(s.subject_id, s.metadata, s.created_at, s.face_count)
                         for s in subjects],
            "faces": [(f.face_id, f.subject_id, f.bbox, f.landmarks, f.detection_confidence,
                       f.model, f.image_sha256, f.created_at, f.embedding.tobytes(),
                       f.chip_jpeg) for f in faces],
            "unknown": [(f.face_id, f.gallery, f.photo, f.source, f.bbox, f.landmarks,
                         f.detection_confidence, f.model, f.created_at, f.cluster_id, f.pinned,
                         f.embedding.tobytes(), f.chip_jpeg)
                        for kind, page in pool if kind == "unknown" for f in page],
            "negatives": [(n.negative_id, n.subject_id, n.source, n.source_id, n.model,
                           n.created_at, n.embedding.tobytes(), n.chip_jpeg)
                          for kind, page in pool if kind == "negatives" for n in page],
        }


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_util.fresh_schema("fs_archive") as (url, _):
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GalleryStore]:
    if request.param == "sqlite":
        store = open_store(tmp_path / "target")
        yield store
        store.close()
        return
    with postgres_util.fresh_schema("fs_archive") as (url, _):
        store = open_store(tmp_path / "target", url)
        yield store
        store.close()


@pytest.fixture
def source_archive(tmp_path: Path) -> Path:
    store = open_store(tmp_path / "source")
    build_source(store)
    out = tmp_path / "source.tar"
    export_gallery(store, out, page_size=7, progress=False,
                   operating_point={"model": MODEL, "threshold": 0.6, "source": "setting"})
    store.close()
    return out


# ---------------------------------------------------------------- round trip


def test_round_trip_sqlite_postgres_sqlite_keeps_everything(
    tmp_path: Path, source_archive: Path, pg_url: str
) -> None:
    first = content(source_archive)
    assert len(first["faces"]) == 12 * 3 - 1 and len(first["subjects"]) == 12
    assert first["galleries"] == {"": {"subjects": 8, "faces": 23},
                                  "acme": {"subjects": 4, "faces": 12}}
    assert any(f[9] is None for f in first["faces"]) and any(f[9] for f in first["faces"])
    assert [f[0] for f in first["unknown"]] == [f"u-{i}" for i in range(5)]
    assert [n[0] for n in first["negatives"]] == ["n-0", "n-1", "n-2"]

    pg = open_store(tmp_path / "pg", pg_url)
    with ArchiveReader(source_archive) as reader:
        result = import_gallery(reader, pg, MODEL, target_dim=128, progress=False)
    assert result.complete and result.faces_added == 35 and result.subjects_added == 12
    second = tmp_path / "from_pg.tar"
    export_gallery(pg, second, page_size=5, progress=False,  # other paging, same content
                   operating_point={"model": MODEL, "threshold": 0.6, "source": "setting"})
    pg.close()
    assert content(second) == first

    back = open_store(tmp_path / "sqlite_again")
    with ArchiveReader(second) as reader:
        import_gallery(reader, back, MODEL, target_dim=128, progress=False)
    third = tmp_path / "back.tar"
    export_gallery(back, third, progress=False,
                   operating_point={"model": MODEL, "threshold": 0.6, "source": "setting"})
    back.close()
    assert content(third) == first

    with ArchiveReader(third) as reader:  # the cursor is the exporting store's own
        assert reader.manifest["cursor"]["last_change_id"] == 35
        assert reader.manifest["cursor"]["last_audit_id"] == 2  # the import's start and end


def test_imported_gallery_finds_the_same_subjects(
    tmp_path: Path, source_archive: Path, pg_url: str
) -> None:
    pg = open_store(tmp_path / "pg", pg_url)
    with ArchiveReader(source_archive) as reader:
        import_gallery(reader, pg, MODEL, target_dim=128, progress=False)
    pg.close()
    # New photos of the enrolled people: fresh noise around each subject's centre.
    probes = np.stack([_near(unit(s), 10_000 + s) for s in range(12)])
    src = Gallery.open(tmp_path / "source", MODEL, follow=False)
    dst = Gallery.open(tmp_path / "pg", MODEL, database_url=pg_url, follow=False)
    try:
        want = [hits[0].subject_id for hits in src.search(probes, 3)]
        got = [hits[0].subject_id for hits in dst.search(probes, 3)]
        assert got == want
        assert want[1] == "person-001" and ACME.external(want[0]) == "member-000"
        assert dst.size == src.size == 35 and dst.subject_count == 12
        record = dst.get_subject(ACME.internal("member-003"))
        assert record is not None and record.metadata == {"name": "Person 3", "tags": ["ü", 3]}
        assert dst.get_chip("f-000300") == src.get_chip("f-000300") is not None
    finally:
        src.close()
        dst.close()


# ---------------------------------------------------------------- interrupted imports


def _faces_and_changes(store: GalleryStore) -> tuple[list[str], int]:
    ids = [i for chunk in store.scan_faces(1000, with_embeddings=False) for i in chunk.face_ids]
    return ids, len(store.changes_since(0, 10_000).changes)


def test_interrupted_import_resumes_without_duplicates(
    tmp_path: Path, source_archive: Path, target: GalleryStore
) -> None:
    # 1. Stopped by the limit after 10 faces (mid-page: pages hold 7).
    with ArchiveReader(source_archive) as reader:
        first = import_gallery(reader, target, MODEL, limit=10, progress=False)
    assert not first.complete and first.faces_added == 10
    assert target.state().face_count == 10 and target.state().subject_count == 12

    # 2. A truncated archive (the copy was cut off): fails, after committing whole pages.
    cut = tmp_path / "cut.tar"
    data = source_archive.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with ArchiveReader(cut) as reader, pytest.raises(ArchiveError, match="truncated"):
        import_gallery(reader, target, MODEL, progress=False)
    partial = target.state().face_count
    assert 10 < partial < 35

    # 3. The full archive again: carries on, nothing twice.
    with ArchiveReader(source_archive) as reader:
        done = import_gallery(reader, target, MODEL, progress=False)
    assert done.resumed and done.complete
    assert done.faces_added == 35 - partial and done.faces_present == partial
    ids, changes = _faces_and_changes(target)
    assert len(ids) == len(set(ids)) == 35 and changes == 35

    again = tmp_path / "again.tar"
    export_gallery(target, again, progress=False,
                   operating_point={"model": MODEL, "threshold": 0.6, "source": "setting"})
    assert content(again)["content_sha256"] == content(source_archive)["content_sha256"]
    assert content(again)["faces"] == content(source_archive)["faces"]


def test_corrupt_page_is_refused_before_it_is_stored(
    tmp_path: Path, source_archive: Path, target: GalleryStore
) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(source_archive) as src, tarfile.open(bad, "w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == "faces/000001.npy":
                data = data[:-4] + bytes(4)  # one embedding's last float zeroed
            dst.addfile(info, io.BytesIO(data))
    with ArchiveReader(bad) as reader, pytest.raises(ArchiveError, match="checksum"):
        import_gallery(reader, target, MODEL, progress=False)
    assert target.state().face_count == 7  # page 0 only


def test_non_empty_target_needs_merge(
    tmp_path: Path, source_archive: Path, target: GalleryStore
) -> None:
    build_source(target, subjects=2)  # member-000 and person-001 exist (5 faces)
    # The same photo of person-002 as the archive's f-000200, enrolled here under another id.
    same_photo = open_store(tmp_path / "tmp")
    build_source(same_photo, subjects=3)
    twin = same_photo.get_face("f-000200")
    same_photo.close()
    assert twin is not None and twin.embedding is not None
    target.add_face(NewFace(
        face_id="enrolled-here", subject_id=twin.subject_id, bbox=twin.bbox,
        landmarks=twin.landmarks, detection_confidence=twin.detection_confidence,
        model=MODEL, image_sha256=twin.image_sha256, created_at=twin.created_at,
        embedding=twin.embedding), {"name": "kept"})
    with ArchiveReader(source_archive) as reader, pytest.raises(ArchiveError, match="--merge"):
        import_gallery(reader, target, MODEL, progress=False)
    with ArchiveReader(source_archive) as reader:
        result = import_gallery(reader, target, MODEL, merge=True, progress=False)
    # The 5 faces the target already had (same face ids) are skipped, and so is the same photo
    # of the same subject under another face id; subjects it had keep their metadata.
    assert result.faces_present == 5 and result.faces_conflicting == 1
    assert result.faces_added == 29 and target.state().face_count == 35
    assert target.get_face("f-000200") is None
    subject = target.get_subject("person-002", with_faces=False)
    assert subject is not None and subject.metadata == {"name": "kept"}


# ---------------------------------------------------------------- models


def test_model_mismatch_is_refused_and_reembed_recomputes_from_chips(
    tmp_path: Path, source_archive: Path, target: GalleryStore
) -> None:
    with ArchiveReader(source_archive) as reader, \
            pytest.raises(ArchiveModelMismatch, match="--reembed"):
        import_gallery(reader, target, NEW, target_dim=NEW_DIM, progress=False)
    assert target.state().face_count == 0 and target.list_audit(None, 0, 10) == []

    # Two faces have no chip: re-embedding them is impossible, so refused unless skipped.
    with ArchiveReader(source_archive) as reader, pytest.raises(ArchiveError, match="no chip"):
        import_gallery(reader, target, NEW, target_dim=NEW_DIM, embed=new_model,
                       progress=False)
    with ArchiveReader(source_archive) as reader:
        result = import_gallery(reader, target, NEW, target_dim=NEW_DIM, embed=new_model,
                                skip_without_chip=True, progress=False)
    assert result.complete and result.faces_without_chip_skipped == 2
    assert result.reembedded == result.faces_added == 33
    # The pool and the negatives too, those with a chip (4 + 1); the rest is left out.
    assert (result.pool_reembedded, result.pool_skipped) == (5, 3)
    assert {n.model for n in target.negatives(  # type: ignore[attr-defined]
        ["person-001", "person-002"])} == {NEW}
    assert target.state().model_counts == {NEW: 33}
    face = target.get_face("f-000300")
    stored = target.get_chip("f-000300")
    assert face is not None and stored is not None
    np.testing.assert_allclose(face.embedding, new_model(decode_chip(stored)[None])[0],
                               atol=1e-6)


# ---------------------------------------------------------------- the command line


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The client package of this checkout too (the server's response models live there).
    path = os.pathsep.join((str(REPO), str(REPO / "clients" / "python")))
    environ = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=240)


def test_cli_sqlite_to_postgres_resumes_and_refuses_another_model(
    tmp_path: Path, pg_url: str
) -> None:
    store = open_store(tmp_path / "src")
    build_source(store)
    store.close()
    out = tmp_path / "g.tar"
    r = _cli("export-gallery", str(out), "--data-dir", str(tmp_path / "src"), "--quiet",
             "--threshold", "0.61")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["faces"] == 35 and oct(out.stat().st_mode & 0o777) == "0o600"
    with ArchiveReader(out) as reader:
        assert reader.manifest["operating_point"]["threshold"] == 0.61
    assert _cli("export-gallery", str(out), "--data-dir", str(tmp_path / "src")).returncode == 2

    dst = ["--data-dir", str(tmp_path / "dst"), "--database-url", pg_url, "--quiet"]
    r = _cli("import-gallery", str(out), *dst, "--limit", "20")
    assert r.returncode == 3 and "run the same command again" in r.stderr
    r = _cli("import-gallery", str(out), *dst)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed"] and summary["faces_added"] == 15
    assert summary["faces_already_present"] == 20
    assert "threshold 0.6100" in r.stderr

    # While a replica serves the PostgreSQL gallery: export works (a consistent snapshot),
    # import is refused (it needs the gallery to itself).
    replica = Gallery.open(tmp_path / "dst", MODEL, database_url=pg_url, follow=False)
    try:
        back = tmp_path / "back.tar"
        r = _cli("export-gallery", str(back), *dst, "--threshold", "0.61")
        assert r.returncode == 0, r.stderr
        assert content(back) == content(out)
        r = _cli("import-gallery", str(out), "--data-dir", str(tmp_path / "elsewhere"),
                 "--database-url", pg_url, "--quiet")
        assert r.returncode == 1 and "open in another faceserve process" in r.stderr
    finally:
        replica.close()

    # An archive of another model: refused, and no SQLite gallery is created for it.
    other = open_store(tmp_path / "other")
    build_source(other, subjects=2, model="someone-elses-model")
    other.close()
    out2 = tmp_path / "other.tar"
    assert _cli("export-gallery", str(out2), "--data-dir", str(tmp_path / "other"),
                "--quiet").returncode == 0
    r = _cli("import-gallery", str(out2), "--data-dir", str(tmp_path / "fresh"))
    assert r.returncode == 1 and "someone-elses-model" in r.stderr and "--reembed" in r.stderr
    assert not (tmp_path / "fresh" / "gallery.sqlite3").exists()

    r = _cli("import-gallery", str(tmp_path / "missing.tar"), "--data-dir", str(tmp_path / "x"))
    assert r.returncode == 1 and "cannot open archive" in r.stderr


def test_empty_gallery_round_trips(tmp_path: Path, target: GalleryStore) -> None:
    empty = open_store(tmp_path / "empty")
    out = tmp_path / "empty.tar"
    result = export_gallery(empty, out, progress=False)
    empty.close()
    assert result.faces == result.subjects == 0
    with ArchiveReader(out) as reader:
        done = import_gallery(reader, target, MODEL, progress=False)
    assert done.complete and target.state().face_count == 0


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    with tarfile.open(junk, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ArchiveError, match="not a faceserve gallery archive"):
        ArchiveReader(junk)
    (tmp_path / "text.tar").write_text("not a tar at all")
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        ArchiveReader(tmp_path / "text.tar")


@pytest.mark.parametrize(("command", "words"), [
    ("export-gallery", ["consistent", "replicas serve", "OUT.partial", "manifest.json"]),
    ("import-gallery", ["carries on", "--reembed", "--merge", "service stopped"]),
])
def test_help_explains(command: str, words: list[str], capsys: pytest.CaptureFixture) -> None:
    from service.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text


@pytest.mark.parametrize(("gallery", "subjects", "faces"), [("acme", 4, 12), ("", 8, 23)])
def test_one_gallery_exports_alone(
    tmp_path: Path, target: GalleryStore, gallery: str, subjects: int, faces: int
) -> None:
    src = open_store(tmp_path / "src")
    build_source(src)
    out = tmp_path / "one.tar"
    result = export_gallery(src, out, gallery=gallery, progress=False)
    src.close()
    assert (result.subjects, result.faces) == (subjects, faces)
    assert result.galleries == {gallery: {"subjects": subjects, "faces": faces}}
    with ArchiveReader(out) as reader:
        assert reader.manifest["gallery"] == gallery
        assert reader.manifest["counts"]["subjects"] == subjects
        import_gallery(reader, target, MODEL, progress=False)
    assert target.state().face_count == faces
    owner = Namespace(gallery)
    listed = target.list_subjects(None, 100)
    assert len(listed) == subjects and all(owner.owns(s.subject_id) for s in listed)


@pytest.mark.slow
def test_cli_reembed_computes_the_target_models_embeddings_from_the_chips(
    tmp_path: Path,
) -> None:
    from models.embedding_model import load_embedding_model
    from service.config import Settings

    src = open_store(tmp_path / "src")
    build_source(src, model="an-old-model")
    export_gallery(src, tmp_path / "old.tar", progress=False)
    src.close()
    dst = ["--data-dir", str(tmp_path / "dst"), "--quiet", "--device", "cpu"]
    r = _cli("import-gallery", str(tmp_path / "old.tar"), *dst, "--reembed")
    assert r.returncode == 1 and "--skip-faces-without-chips" in r.stderr  # 2 have no chip
    r = _cli("import-gallery", str(tmp_path / "old.tar"), *dst, "--reembed",
             "--skip-faces-without-chips")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["reembedded"] == summary["faces_added"] == 33
    assert "does not apply" not in r.stderr  # the archive recorded no operating point

    store = open_store(tmp_path / "dst")
    try:
        assert store.state().model_counts == {MODEL: 33}
        face, jpeg = store.get_face("f-000300"), store.get_chip("f-000300")
        assert face is not None and jpeg is not None
        model = load_embedding_model("dlib", "cpu")
        want = model.embed_chips(decode_chip(jpeg)[None].copy(), flip=Settings().flip)[0]
        np.testing.assert_allclose(face.embedding, want, atol=1e-4)
    finally:
        store.close()


def test_killed_import_resumes(tmp_path: Path) -> None:
    """SIGKILL in the middle of an import (no clean-up runs), then the same command again."""
    import signal
    import sqlite3
    import time

    from service.gallery.store.base import SubjectRecord

    n = 6000
    src = open_store(tmp_path / "src")
    jpeg = encode_jpeg(chip(1))
    for lo in range(0, n, 1000):
        src.import_batch(
            [SubjectRecord(f"s{i:05d}", {}, "2026-01-01T00:00:00.000Z", 0)
             for i in range(lo // 2, (lo + 1000) // 2)],
            [NewFace(face_id=f"f{i:05d}", subject_id=f"s{i // 2:05d}", bbox=(1, 2, 3, 4),
                     landmarks=[[1.0, 2.0]], detection_confidence=0.9, model=MODEL,
                     image_sha256=f"{i:064x}", created_at="2026-01-01T00:00:00.000Z",
                     embedding=unit(i), chip_jpeg=jpeg) for i in range(lo, lo + 1000)],
        )
    archive = tmp_path / "big.tar"
    export_gallery(src, archive, page_size=50, progress=False)
    src.close()

    dst = tmp_path / "dst"
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "import-gallery", str(archive), "--data-dir",
         str(dst), "--quiet"], cwd=REPO, env=environ, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(dst / "gallery.sqlite3", timeout=5) as conn:
                    seen = conn.execute("SELECT count(*) FROM faces").fetchone()[0]
            except sqlite3.OperationalError:
                seen = 0  # not created yet
            if seen >= 200:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    if proc.returncode != -signal.SIGKILL or not 0 < seen < n:
        pytest.skip(f"the import finished before it could be killed ({seen} faces seen)")

    r = _cli("import-gallery", str(archive), "--data-dir", str(dst), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed"] and summary["complete"]
    assert summary["faces_added"] + summary["faces_already_present"] == n
    assert summary["faces_already_present"] >= seen
    store = open_store(dst)
    try:
        ids, changes = _faces_and_changes(store)
        assert len(ids) == len(set(ids)) == n and changes == n
        assert [e.action for e in store.list_audit(None, 0, 10)] == [
            "import_gallery_started", "import_gallery"]
    finally:
        store.close()


def test_the_pool_and_negatives_move_within_their_retention(
    tmp_path: Path, source_archive: Path, target: GalleryStore
) -> None:
    with ArchiveReader(source_archive) as reader:  # exported without a retention cut-off
        result = import_gallery(reader, target, MODEL, target_dim=128, progress=False,
                                unknown_after="2020-01-01T00:00:00.000Z")
    assert (result.unknown_added, result.negatives_added, result.pool_skipped) == (4, 3, 1)
    pool = target.unknown_faces("") + target.unknown_faces("acme")  # type: ignore[attr-defined]
    assert sorted(f.face_id for f in pool) == ["u-1", "u-2", "u-3", "u-4"]  # u-0 is from 2000
    u1 = next(f for f in pool if f.face_id == "u-1")
    assert (u1.gallery, u1.cluster_id, u1.pinned, u1.created_at) == (
        "acme", "c1", True, "2026-02-02T00:00:00.000Z")
    assert target.unknown_chip("acme", "u-1") is not None  # type: ignore[attr-defined]
    [neg] = target.negatives([ACME.internal("member-000")])  # type: ignore[attr-defined]
    assert (neg.negative_id, neg.source, neg.source_id) == ("n-2", "embedding", None)
    with ArchiveReader(source_archive) as reader:  # again: nothing twice
        again = import_gallery(reader, target, MODEL, target_dim=128, progress=False)
    assert (again.unknown_added, again.negatives_added) == (1, 0)  # u-0: no cut-off now

    out = tmp_path / "cut.tar"
    exported = export_gallery(target, out, progress=False,
                              unknown_after="2026-02-04T00:00:00.000Z", gallery="acme")
    assert (exported.unknown_faces, exported.negatives) == (1, 1)  # acme's u-3; n-2
    got = content(out)
    assert [f[0] for f in got["unknown"]] == ["u-3"]
    assert [n[0] for n in got["negatives"]] == ["n-2"]

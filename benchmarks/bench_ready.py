"""Ready-time at scale: how long a gallery takes to open with N faces, SQLite and PostgreSQL.

SYNTHETIC faces (``bench_search.make_gallery``'s face-like unit vectors, two per subject) are
inserted directly into a fresh store (SQLite file / PostgreSQL schema, with one change-log entry
each), then ``Gallery.open`` is timed, in this process:

1. cold: no snapshot, the index is rebuilt from the store (and a snapshot written: counted);
2. warm: the snapshot the cold start (or ``close``) wrote is loaded;
3. PostgreSQL only, catch-up: another replica commits ``--changes`` changes (adds and deletes,
   through the store) after the snapshot, then the replica opens again: snapshot + replay.

Ready means what the service waits for before ``/readyz`` says ready: ``Gallery.open``
returned (index loaded or rebuilt, caught up). Also reported: the snapshot's size on disk, the
process's peak RSS. Prints a table and writes ``benchmarks/results/bench_ready.json``.

    .venv/bin/python benchmarks/bench_ready.py --faces 1e6 [--kind auto] [--backends ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_search import Generator, make_gallery  # noqa: E402

from service.gallery.gallery import SNAPSHOT_NAME, Gallery  # noqa: E402
from service.gallery.store.base import NewFace  # noqa: E402
from service.gallery.store.sql_common import to_blob  # noqa: E402
from service.gallery.store.sqlite import FILENAME  # noqa: E402

MODEL = "dlib-resnet-v1"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CHUNK = 50_000


def rows(vectors: np.ndarray, start: int) -> list[tuple[Any, ...]]:
    """faces rows (without id and chip) for ``vectors``, subjects ``s<i // 2>``."""
    out = []
    for i, v in enumerate(vectors, start):
        out.append((f"f{i:08d}", f"s{i // 2:08d}", hashlib.sha256(str(i).encode()).hexdigest(),
                    to_blob(v)))
    return out


def fill_sqlite(data_dir: Path, vectors: np.ndarray) -> None:
    Gallery.open(data_dir, MODEL).close()  # creates the schema
    db = data_dir / FILENAME
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous = OFF")
    for s in range(0, len(vectors), CHUNK):
        part = rows(vectors[s : s + CHUNK], s)
        conn.executemany("INSERT OR IGNORE INTO subjects (subject_id, metadata, created_at) "
                         "VALUES (?, '{}', '2026-01-01T00:00:00Z')", [(r[1],) for r in part])
        conn.executemany(
            "INSERT INTO faces (face_id, subject_id, bbox, landmarks, detection_confidence, "
            "model, image_sha256, created_at, embedding, chip) VALUES "
            "(?, ?, '[1,2,101,102]', '[[10,20],[10,20],[10,20],[10,20],[10,20]]', 0.9, ?, ?, "
            "'2026-01-01T00:00:00Z', ?, NULL)",
            [(r[0], r[1], MODEL, r[2], r[3]) for r in part])
        conn.commit()
    conn.execute("INSERT INTO changes (op, face_row_id, at) SELECT 'add', id, "
                 "'2026-01-01T00:00:00Z' FROM faces")
    conn.commit()
    conn.close()


def fill_postgres(url: str, data_dir: Path, vectors: np.ndarray) -> None:
    import psycopg

    Gallery.open(data_dir, MODEL, database_url=url, follow=False).close()  # the schema
    (data_dir / SNAPSHOT_NAME).unlink(missing_ok=True)
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            for s in range(0, len(vectors), CHUNK):
                part = rows(vectors[s : s + CHUNK], s)
                with cur.copy("COPY subjects (subject_id, metadata, created_at) FROM STDIN") as cp:
                    for r in part[::2]:
                        cp.write_row((r[1], "{}", "2026-01-01T00:00:00Z"))
                with cur.copy("COPY faces (face_id, subject_id, bbox, landmarks, "
                              "detection_confidence, model, image_sha256, created_at, embedding) "
                              "FROM STDIN") as cp:
                    for r in part:
                        cp.write_row((r[0], r[1], [1, 2, 101, 102], [10.0, 20.0] * 5, 0.9,
                                      MODEL, r[2], "2026-01-01T00:00:00Z", r[3]))
            cur.execute("INSERT INTO changes (op, face_row_id) SELECT 'add', id FROM faces "
                        "ORDER BY id")
        conn.commit()


def timed_open(data_dir: Path, kind: str, url: str | None) -> tuple[float, Gallery]:
    t0 = time.perf_counter()
    g = Gallery.open(data_dir, MODEL, index_kind=kind, database_url=url, follow=False)
    return time.perf_counter() - t0, g


def measure(backend: str, data_dir: Path, kind: str, url: str | None, changes: int,
            probes: np.ndarray) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def record(phase: str, seconds: float, g: Gallery, **extra: Any) -> None:
        snap = data_dir / SNAPSHOT_NAME
        row = {"backend": backend, "phase": phase, "faces": g.size, "kind": g.index_kind,
               "source": g.index_source, "ready_s": round(seconds, 2),
               "snapshot_mib": round(snap.stat().st_size / 2**20, 1) if snap.exists() else None,
               **extra}
        print(f"  {backend:9s} {phase:24s} {g.size:>9,d} faces  {g.index_kind:5s} from "
              f"{g.index_source:8s} ready in {seconds:7.1f} s", flush=True)
        out.append(row)

    (data_dir / SNAPSHOT_NAME).unlink(missing_ok=True)
    seconds, g = timed_open(data_dir, kind, url)
    record("cold (rebuild)", seconds, g)
    expected = [[h.face_id for h in hits] for hits in g.search(probes, 5)]
    t0 = time.perf_counter()
    g.close()
    close_s = time.perf_counter() - t0
    seconds, g = timed_open(data_dir, kind, url)
    same = [[h.face_id for h in hits] for hits in g.search(probes, 5)] == expected
    record("warm (snapshot)", seconds, g, close_s=round(close_s, 2), same_answers=same)
    g.close()
    if url is not None and changes:
        from service.gallery.store.postgres import PostgresStore

        other = PostgresStore.open(url)  # another replica's writes, without its index
        rng = np.random.default_rng(7)
        t0 = time.perf_counter()
        for i in range(changes):
            if i % 4 == 3:
                other.delete_face(f"f{int(rng.integers(0, g.size)):08d}")
                continue
            v = rng.standard_normal(128).astype(np.float32)
            v /= np.linalg.norm(v)
            other.add_face(NewFace(
                face_id=f"n{i:08d}-{uuid.uuid4().hex[:6]}", subject_id=f"n{i}",
                bbox=(1, 2, 101, 102), landmarks=[[10.0, 20.0]] * 5,
                detection_confidence=0.9, model=MODEL,
                image_sha256=hashlib.sha256(f"n{i}".encode()).hexdigest(),
                created_at="2026-01-01T00:00:00Z", embedding=v), None)
        write_s = time.perf_counter() - t0
        other.close()
        seconds, g = timed_open(data_dir, kind, url)
        record(f"snapshot + {changes:,} changes", seconds, g, write_s=round(write_s, 1))
        g.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=lambda s: int(float(s)), default=1_000_000)
    ap.add_argument("--kind", default="auto", help="index kind (flat, pq, hnsw, auto)")
    ap.add_argument("--backends", type=lambda s: s.split(","), default=["sqlite", "postgres"])
    ap.add_argument("--changes", type=int, default=2000,
                    help="changes committed after the snapshot (PostgreSQL)")
    ap.add_argument("--pg-url", default=PG_URL, help="PostgreSQL server (a schema is made)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    t0 = time.perf_counter()
    vectors, probes, _ = make_gallery(args.faces, 50, Generator())
    print(f"{args.faces:,} synthetic faces in {time.perf_counter() - t0:.1f} s", flush=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as tmp:
        root = Path(tmp)
        if "sqlite" in args.backends:
            t0 = time.perf_counter()
            fill_sqlite(root / "sqlite", vectors)
            print(f"  sqlite filled in {time.perf_counter() - t0:.0f} s", flush=True)
            results += measure("sqlite", root / "sqlite", args.kind, None, 0, probes)
        if "postgres" in args.backends:
            import psycopg
            from psycopg import sql

            schema = f"bench_ready_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
            try:
                t0 = time.perf_counter()
                fill_postgres(url, root / "pg", vectors)
                print(f"  postgres filled in {time.perf_counter() - t0:.0f} s", flush=True)
                results += measure("postgres", root / "pg", args.kind, url, args.changes, probes)
            finally:
                with psycopg.connect(args.pg_url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\n{'backend':9s} {'phase':26s} {'faces':>9s} {'kind':5s} {'from':8s} "
          f"{'ready s':>8s} {'snapshot MiB':>12s}")
    for r in results:
        print(f"{r['backend']:9s} {r['phase']:26s} {r['faces']:>9,d} {r['kind']:5s} "
              f"{r['source']:8s} {r['ready_s']:8.1f} {r['snapshot_mib'] or 0:12.0f}")
    print(f"peak RSS {peak:.0f} MiB (this process: vectors, stores' clients, galleries)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_ready.json"
    path.write_text(json.dumps({"faces": args.faces, "kind": args.kind, "changes": args.changes,
                                "peak_rss_mib": peak, "python": platform.python_version(),
                                "rows": results}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

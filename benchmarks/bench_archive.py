"""Export and import throughput of ``faceserve export-gallery`` / ``import-gallery``.

A SQLite gallery of ``--faces`` SYNTHETIC faces (random unit 128-d vectors, 4 faces per
subject, every face with the same real JPEG chip of a synthetic 150x150 face-sized image, so
archive and database sizes are realistic without encoding a JPEG per face) is built once (not
measured), then each step runs in its own Python process, calling the same library functions
as the CLI, and reports its wall time and peak RSS (the memory claim: it should not grow with
the gallery):

1. export SQLite -> archive
2. import archive -> empty SQLite gallery
3. import archive -> empty PostgreSQL schema (skipped when no server answers)
4. export PostgreSQL -> archive (and its content digest must equal the first archive's)

    flock /tmp/faceserve-heavy.lock .venv/bin/python benchmarks/bench_archive.py \
        [--faces 100000] [--page-size 1000] [--database-url postgresql://...]

Prints a table and writes ``benchmarks/results/bench_archive_<faces>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_URL = os.environ.get("FACESERVE_TEST_DATABASE_URL",
                             "postgresql://postgres@127.0.0.1:5432/test")
MODEL = "dlib-resnet-v1"


def synthetic_chip() -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:150] / 150.0
    planes = [np.sin(rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy + rng.uniform(0, 6))
              for _ in range(3)]
    noise = rng.normal(0, 3, (150, 150, 3))  # texture: about 7 KiB, as real chips (encode_jpeg)
    img = np.clip(127 + 100 * np.stack(planes, axis=2) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=95)  # as encode_jpeg
    return buf.getvalue()


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM): unlike ``ru_maxrss``, not inherited from the parent
    across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_source(data_dir: Path, faces: int) -> dict[str, Any]:
    from service.gallery.store import NewFace, open_store
    from service.gallery.store.base import SubjectRecord

    store = open_store(data_dir)
    chip = synthetic_chip()
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    batch = 2000
    for lo in range(0, faces, batch):
        n = min(batch, faces - lo)
        vecs = rng.standard_normal((n, 128)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        subjects = {f"s{(lo + i) // 4:07d}" for i in range(n)}
        store.import_batch(
            [SubjectRecord(s, {"name": s}, "2026-01-01T00:00:00.000Z", 0)
             for s in sorted(subjects)],
            [NewFace(face_id=f"f{lo + i:08d}", subject_id=f"s{(lo + i) // 4:07d}",
                     bbox=(10, 20, 110, 120), landmarks=[[1.0, 2.0]] * 5,
                     detection_confidence=0.99, model=MODEL,
                     image_sha256=hashlib.sha256(f"{lo + i}".encode()).hexdigest(),
                     created_at="2026-01-01T00:00:00.000Z", embedding=vecs[i], chip_jpeg=chip)
             for i in range(n)],
        )
    store.close()
    return {"seconds": time.perf_counter() - start, "chip_bytes": len(chip)}


# ---------------------------------------------------------------- steps (each in a subprocess)


def step(kind: str, data_dir: Path, url: str | None, archive: Path, page_size: int) -> dict:
    from service.gallery.archive import ArchiveReader, export_gallery
    from service.gallery.archive_import import import_gallery
    from service.gallery.store import open_store

    store = open_store(data_dir, url)
    try:
        start = time.perf_counter()
        if kind == "export":
            r = export_gallery(store, archive, page_size=page_size, progress=False)
            out = {"faces": r.faces, "bytes": r.bytes, "content_sha256": r.content_sha256}
        else:
            with ArchiveReader(archive) as reader:
                r2 = import_gallery(reader, store, MODEL, target_dim=128, progress=False)
            out = {"faces": r2.faces_added, "complete": r2.complete}
        out["seconds"] = time.perf_counter() - start
    finally:
        store.close()
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def run_step(kind: str, data_dir: Path, url: str | None, archive: Path, page_size: int) -> dict:
    cmd = [sys.executable, __file__, "--step", kind, "--data-dir", str(data_dir),
           "--archive", str(archive), "--page-size", str(page_size)]
    if url:
        cmd += ["--step-url", url]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"step {kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_rss() -> float:
    """Peak RSS of a process that only imports what a step imports: subtracted to show what
    the data costs."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import bench_archive, "
            "service.gallery.archive_import, service.gallery.store.postgres; "
            "print(bench_archive.peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return float(out.stdout.strip())


def pg_available(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any reason: report it and skip the PostgreSQL steps
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--database-url", default=DEFAULT_URL)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--step-url", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--archive", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.data_dir, args.step_url, args.archive,
                              args.page_size)))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_archive_"))
    work.mkdir(parents=True, exist_ok=True)
    schema = None
    try:
        print(f"building a SQLite gallery of {args.faces} synthetic faces ...", file=sys.stderr)
        built = build_source(work / "src", args.faces)
        db_bytes = (work / "src" / "gallery.sqlite3").stat().st_size
        rows: list[dict[str, Any]] = []

        def record(name: str, r: dict[str, Any]) -> None:
            r = {"step": name, **r, "faces_per_s": r["faces"] / r["seconds"]}
            rows.append(r)
            print(f"  {name}: {r['faces']} faces in {r['seconds']:.1f} s", file=sys.stderr)

        a1 = work / "a1.tar"
        record("export SQLite -> archive", run_step("export", work / "src", None, a1,
                                                    args.page_size))
        record("import archive -> SQLite", run_step("import", work / "dst", None, a1,
                                                    args.page_size))
        pg_reason = pg_available(args.database_url)
        if pg_reason is None:
            import psycopg
            from psycopg import sql

            schema = f"bench_archive_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            sep = "&" if "?" in args.database_url else "?"
            url = f"{args.database_url}{sep}options=-csearch_path%3D{schema}"
            record("import archive -> PostgreSQL",
                   run_step("import", work / "pgdir", url, a1, args.page_size))
            a2 = work / "a2.tar"
            record("export PostgreSQL -> archive",
                   run_step("export", work / "pgdir", url, a2, args.page_size))
            if rows[-1]["content_sha256"] != rows[0]["content_sha256"]:
                raise SystemExit("the PostgreSQL export differs from the SQLite one")
        base = baseline_rss()
        result = {
            "benchmark": "bench_archive",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "faces": args.faces,
            "faces_per_subject": 4,
            "page_size": args.page_size,
            "chip_bytes": built["chip_bytes"],
            "sqlite_bytes": db_bytes,
            "archive_bytes": a1.stat().st_size,
            "baseline_rss_mib": base,
            "postgres": "used" if pg_reason is None else f"skipped: {pg_reason}",
            "steps": rows,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"bench_archive_{args.faces}.json"
        path.write_text(json.dumps(result, indent=2))
    finally:
        if schema is not None:
            import psycopg
            from psycopg import sql

            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                             .format(sql.Identifier(schema)))
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.faces} synthetic faces, {built['chip_bytes']} B chip each, page "
          f"{args.page_size}; archive {result['archive_bytes'] / 2**20:.0f} MiB, SQLite file "
          f"{db_bytes / 2**20:.0f} MiB; process baseline RSS {base:.0f} MiB")
    print(f"| {'Step':<30} | {'Faces':>7} | {'Seconds':>7} | {'Faces/s':>8} | {'MiB/s':>6} "
          f"| {'Peak RSS MiB':>12} |")
    print(f"|{'-' * 32}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 14}|")
    for r in rows:
        mib_s = result["archive_bytes"] / 2**20 / r["seconds"]
        print(f"| {r['step']:<30} | {r['faces']:>7} | {r['seconds']:>7.1f} | "
              f"{r['faces_per_s']:>8.0f} | {mib_s:>6.1f} | {r['peak_rss_mib']:>12.0f} |")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

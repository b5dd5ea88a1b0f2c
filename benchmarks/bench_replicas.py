"""Replicas on a shared PostgreSQL gallery: catch-up time and identify latency under writes.

One fresh database on the PostgreSQL server (dropped at the end) and one real replica,
``faceserve serve`` with ``FACESERVE_DATABASE_URL``, on a free port. Writes are SYNTHETIC faces
(random unit vectors, one subject each) committed through the store (``PostgresStore.add_face`` /
``delete_face``: the same transactions, change-log entries and NOTIFYs an enrollment on another
replica makes, without its detection and embedding), from this process or a writer process.

1. Catch-up: the replica is frozen (SIGSTOP) while ``--changes`` adds commit, then resumed
   (SIGCONT); the time until its ``/readyz`` reports ``changes_behind == 0``. For comparison,
   the same changes applied in process by ``Gallery.catch_up`` (no HTTP, no notifications),
   and a cold index build from the faces table (what a restarted replica does first).
2. Identify latency on the replica: ``GET /identify?embedding=`` (k=5, random unit vectors;
   FAISS search, no inference) at ``--concurrency``, first with no writes, then during a burst
   of ``--burst-writes`` writes (half adds, half deletes) from a writer process, with the
   replica's lag sampled from ``/readyz`` every 100 ms.
3. Memory per face of a replica's in-memory gallery (index + id map, as ``Gallery`` holds it),
   measured as the RSS growth of a subprocess that builds it for ``--memory-faces`` faces.

    flock /tmp/faceserve-heavy.lock .venv/bin/python benchmarks/bench_replicas.py \
        [--changes 10000] [--burst-writes 3000] [--requests 3000] [--concurrency 4]

Prints a table and writes ``benchmarks/results/bench_replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_URL = os.environ.get("FACESERVE_TEST_DATABASE_URL",
                             "postgresql://postgres@127.0.0.1:5432/test")


# ---------------------------------------------------------------- database and writes


def create_database(server_url: str) -> tuple[str, str]:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    name = f"bench_replicas_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    p = conninfo_to_dict(server_url)
    password = f":{p['password']}" if p.get("password") else ""
    url = (f"postgresql://{p.get('user') or 'postgres'}{password}@{p.get('host') or '127.0.0.1'}"
           f":{p.get('port') or '5432'}/{name}")
    return name, url


def drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def synthetic_face(i: int, rng: np.random.Generator) -> Any:
    from models.embedder import MODEL_VERSION
    from service.gallery.store.base import NewFace

    v = rng.standard_normal(128).astype(np.float32)
    return NewFace(
        face_id=uuid.uuid4().hex, subject_id=f"synthetic-{i:07d}", bbox=(0, 0, 149, 149),
        landmarks=[[0.0, 0.0]] * 5, detection_confidence=1.0, model=MODEL_VERSION,
        image_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
        created_at="2026-11-29T00:00:00.000Z", embedding=v / np.linalg.norm(v),
    )


def write_adds(url: str, start: int, n: int, seed: int) -> tuple[list[str], float]:
    """``n`` adds, one transaction each; (face ids, seconds)."""
    from service.gallery.store.postgres import PostgresStore

    rng = np.random.default_rng(seed)
    store = PostgresStore.open(url)
    ids = []
    t0 = time.perf_counter()
    try:
        for i in range(start, start + n):
            ids.append(store.add_face(synthetic_face(i, rng), None).record.face_id)
    finally:
        store.close()
    return ids, time.perf_counter() - t0


def burst_writer(url: str, start: int, n: int, deletable: list[str], out: Any) -> None:
    """Writer process: ``n`` writes as fast as they commit, alternating add and delete."""
    from service.gallery.store.postgres import PostgresStore

    rng = np.random.default_rng(start)
    store = PostgresStore.open(url)
    t0 = time.perf_counter()
    try:
        for k in range(n):
            if k % 2 == 0:
                store.add_face(synthetic_face(start + k, rng), None)
            else:
                store.delete_face(deletable[k // 2])
    finally:
        store.close()
    out.put(time.perf_counter() - t0)


def table_bytes(url: str) -> dict[str, float]:
    """On-disk bytes per row of the faces table (with its indexes and TOAST; synthetic faces
    carry no chip) and of the change log."""
    import psycopg

    with psycopg.connect(url) as conn:
        out = {}
        for table in ("faces", "changes"):
            size, rows = conn.execute(
                f"SELECT pg_total_relation_size('{table}'), (SELECT count(*) FROM {table})"
            ).fetchone()
            out[table] = round(size / max(1, rows), 1)
    return out


# ---------------------------------------------------------------- the replica process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_replica(url: str, data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    env.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))
    env["FACESERVE_DATABASE_URL"] = url
    exe = Path(sys.executable).parent / "faceserve"
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--log-level", "warning", "--device", "cpu"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=data_dir.parent,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("replica not ready in 300 s")


def lag(client: httpx.Client) -> dict[str, Any]:
    return client.get("/readyz").json()["replication"]


def wait_caught_up(client: httpx.Client, timeout: float, since: float | None = None,
                   poll_s: float = 0.02) -> float:
    """Seconds from ``since`` (default: now) until ``/readyz`` answers 0 changes behind: an
    upper bound, by at most one poll interval and one request."""
    t0 = time.perf_counter() if since is None else since
    while time.perf_counter() - t0 < timeout:
        r = lag(client)
        if r.get("changes_behind") == 0:
            return time.perf_counter() - t0
        time.sleep(poll_s)
    raise RuntimeError(f"replica still behind after {timeout}s: {lag(client)}")


# ---------------------------------------------------------------- load


def encode(v: np.ndarray) -> str:
    from service.api.routes.common import encode_embedding

    return encode_embedding(v)


async def identify_load(base: str, queries: list[str], max_requests: int, concurrency: int,
                        until: Any = None, cap_s: float = 120.0) -> dict[str, Any]:
    """GET /identify at ``concurrency``: ``max_requests``, or until ``until()`` is true."""
    latencies: list[float] = []
    errors = issued = 0
    deadline = time.perf_counter() + cap_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal issued, errors
            while (issued < max_requests and time.perf_counter() < deadline
                   and not (until is not None and until())):
                q = queries[issued % len(queries)]
                issued += 1
                t0 = time.perf_counter()
                r = await client.get("/identify", params={"embedding": q, "k": 5})
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))] if ms else float("nan")

    return {"requests": len(ms), "errors": errors, "wall_s": round(wall, 2),
            "rps": round(len(ms) / wall, 1) if wall else 0.0,
            "p50_ms": round(pct(50), 2), "p95_ms": round(pct(95), 2),
            "p99_ms": round(pct(99), 2), "max_ms": round(ms[-1], 2) if ms else float("nan"),
            "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan")}


# ---------------------------------------------------------------- memory per face


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(n: int, kind: str, out: Any) -> None:
    """RSS growth for ``n`` faces held as ``Gallery`` holds them: the FAISS index (row id ->
    vector) and the id map (row id -> (32-hex face id, interned subject id))."""
    from service.gallery.index import FaceIndex

    rng = np.random.default_rng(0)
    chunk = 50_000
    before = _rss_bytes()
    index = FaceIndex(128, kind)
    faces: dict[int, tuple[str, str]] = {}
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        v = rng.standard_normal((m, 128)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids = np.arange(start + 1, start + m + 1, dtype=np.int64)
        index.add(ids, v)
        for i in ids.tolist():
            faces[i] = (uuid.uuid4().hex, sys.intern(f"synthetic-{i:07d}"))
        del v
    grown = _rss_bytes() - before
    out.put({"faces": n, "kind": kind, "rss_growth_mib": round(grown / 2**20, 1),
             "bytes_per_face": round(grown / n), "index_live": index.ntotal})


def measure_memory(n: int, kind: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=memory_child, args=(n, kind, q))
    p.start()
    result = q.get(timeout=600)
    p.join()
    return result


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default=DEFAULT_URL,
                    help="server to create the benchmark database on (default: the tests')")
    ap.add_argument("--changes", type=int, default=10_000, help="changes to catch up on")
    ap.add_argument("--burst-writes", type=int, default=3000)
    ap.add_argument("--requests", type=int, default=3000, help="most identify requests per cell")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--memory-faces", type=int, default=200_000)
    args = ap.parse_args()

    from models.embedder import MODEL_VERSION
    from service.gallery.gallery import Gallery

    started = time.perf_counter()
    name, url = create_database(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="bench_replicas_"))
    log = tmp / "replica.log"
    result: dict[str, Any] = {
        "benchmark": "bench_replicas",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "writes": "synthetic faces (random unit 128-d vectors, one subject each) committed "
                  "through PostgresStore.add_face/delete_face: the same transactions, change "
                  "log entries and NOTIFYs as enrollments on another replica, without inference",
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version()},
        "settings": vars(args) | {"database_url": "(fresh database on the given server)"},
    }
    proc = None
    try:
        proc, base = start_replica(url, tmp / "replica", log)
        client = httpx.Client(base_url=base, timeout=60)
        follower = Gallery.open(tmp / "in-process", MODEL_VERSION, database_url=url,
                                follow=False)

        # 1. Catch-up of a frozen replica.
        proc.send_signal(signal.SIGSTOP)
        try:
            ids, write_s = write_adds(url, 0, args.changes, seed=1)
        finally:
            resumed = time.perf_counter()
            proc.send_signal(signal.SIGCONT)
        catch_up_s = wait_caught_up(client, timeout=600, since=resumed)
        t0 = time.perf_counter()
        applied = 0
        while n := follower.catch_up(2000):
            applied += n
        in_process_s = time.perf_counter() - t0
        follower.close()
        t0 = time.perf_counter()
        cold = Gallery.open(tmp / "cold", MODEL_VERSION, database_url=url, follow=False)
        cold_s = time.perf_counter() - t0
        cold_faces = cold.size
        cold.close()
        storage = table_bytes(url)
        result["catch_up"] = {
            "changes": args.changes, "write_s": round(write_s, 2),
            "writes_per_s": round(args.changes / write_s, 1),
            "replica_catch_up_s": round(catch_up_s, 3),
            "replica_changes_per_s": round(args.changes / catch_up_s, 1),
            "in_process_catch_up_s": round(in_process_s, 3), "in_process_applied": applied,
            "cold_build_s": round(cold_s, 3), "cold_build_faces": cold_faces,
            "postgres_bytes_per_face": storage,
        }

        # 2. Identify latency, quiet and during a burst of writes.
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((256, 128)).astype(np.float32)
        queries = [encode(v / np.linalg.norm(v)) for v in vectors]
        asyncio.run(identify_load(base, queries, 50, 2))  # warm-up
        quiet = asyncio.run(identify_load(base, queries, args.requests, args.concurrency))
        ctx = multiprocessing.get_context("spawn")
        done_q = ctx.Queue()
        writer = ctx.Process(target=burst_writer, args=(
            url, args.changes, args.burst_writes, ids[: args.burst_writes // 2 + 1], done_q))
        samples: list[dict[str, Any]] = []
        stop_sampling = False

        async def sample_lag() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as c:
                while not stop_sampling:
                    samples.append((await c.get("/readyz")).json()["replication"])
                    await asyncio.sleep(0.1)

        async def burst() -> dict[str, Any]:
            nonlocal stop_sampling
            sampler = asyncio.create_task(sample_lag())
            writer.start()
            load = await identify_load(base, queries, 10**9, args.concurrency,
                                       until=lambda: not writer.is_alive(), cap_s=600)
            stop_sampling = True
            await sampler
            return load

        during = asyncio.run(burst())
        writer.join()
        burst_s = done_q.get(timeout=10)
        settle_s = wait_caught_up(client, timeout=600)
        behind_max = max((s.get("changes_behind") or 0) for s in samples) if samples else None
        seconds_max = max((s.get("seconds_behind") or 0.0) for s in samples) if samples else None
        result["identify"] = {
            "gallery_faces": client.get("/readyz").json()["gallery_faces"],
            "concurrency": args.concurrency,
            "quiet": quiet,
            "during_burst": during,
            "burst": {"writes": args.burst_writes, "seconds": round(burst_s, 2),
                      "writes_per_s": round(args.burst_writes / burst_s, 1),
                      "lag_samples": len(samples), "max_changes_behind": behind_max,
                      "max_seconds_behind": seconds_max,
                      "caught_up_after_burst_s": round(settle_s, 3)},
        }
        client.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_database(args.database_url, name)

    # 3. Memory per face.
    # HNSW costs the same per face at any size but takes far longer to build: a quarter.
    result["memory"] = [measure_memory(args.memory_faces, "flat"),
                        measure_memory(max(1000, args.memory_faces // 4), "hnsw")]
    result["total_s"] = round(time.perf_counter() - started, 1)

    c, i = result["catch_up"], result["identify"]
    print(f"\nCatch-up of {c['changes']} changes (adds; written at {c['writes_per_s']}/s)")
    print(f"  replica process (SIGSTOP -> SIGCONT, /readyz until 0 behind): "
          f"{c['replica_catch_up_s']:.2f} s ({c['replica_changes_per_s']:.0f} changes/s)")
    print(f"  in process (Gallery.catch_up):                               "
          f"{c['in_process_catch_up_s']:.2f} s")
    print(f"  cold index build from the table ({c['cold_build_faces']} faces):          "
          f"{c['cold_build_s']:.2f} s")
    print(f"  PostgreSQL bytes per row (with indexes, no chips): "
          f"{c['postgres_bytes_per_face']}")
    print(f"\nGET /identify?embedding on the replica ({i['gallery_faces']} faces, k=5, "
          f"concurrency {i['concurrency']})")
    print(f"  {'':14s} {'requests':>8s} {'rps':>8s} {'p50 ms':>8s} {'p95 ms':>8s} "
          f"{'p99 ms':>8s} {'max ms':>8s}")
    for label, row in (("quiet", i["quiet"]), ("during burst", i["during_burst"])):
        print(f"  {label:14s} {row['requests']:8d} {row['rps']:8.1f} {row['p50_ms']:8.2f} "
              f"{row['p95_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f}")
    b = i["burst"]
    print(f"  burst: {b['writes']} writes (half adds, half deletes) at {b['writes_per_s']}/s; "
          f"replica lag max {b['max_changes_behind']} changes / {b['max_seconds_behind']} s; "
          f"caught up {b['caught_up_after_burst_s']} s after the burst")
    print("\nMemory of a replica's in-memory gallery (index + id map)")
    for m in result["memory"]:
        print(f"  {m['kind']:5s} {m['faces']} faces: {m['rss_growth_mib']} MiB, "
              f"{m['bytes_per_face']} B/face")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_replicas.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)} ({result['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``faceserve enroll-dir`` throughput: photos/s over real LFW photos at concurrency 1, 2, 4.

Takes the first ``--photos`` LFW photos (people in name order, all photos of each: one folder
per person, symlinked into a temporary folder), and for each concurrency starts a fresh
``faceserve serve`` process (this checkout, ``python -m service.cli``) on an empty gallery on a
free loopback port, then runs the enroll-dir code (``service.bulk_commands.enroll_dir``, the
same as the command) against it. The time is the whole run as a user sees it: reading files,
HTTP, detection, embedding, the duplicate search and the database commit. Photos with several
faces are refused (the command's default), so outcomes are counted too. Prints a table and
writes JSON to benchmarks/results/; asserts nothing about time.

    flock /tmp/faceserve-heavy.lock .venv/bin/python benchmarks/bench_enroll_dir.py \
        [--photos 1000] [--concurrency 1 2 4] [--device auto] [--max-seconds 1800]

Bounded: once ``--max-seconds`` have passed, the remaining cells are skipped (listed in JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"


def pick_photos(lfw: Path, n: int, into: Path) -> int:
    """Symlink the first ``n`` photos (whole people, name order; the last person may be cut)."""
    count = 0
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))[: n - count]
        (into / person.name).mkdir()
        for photo in photos:
            (into / person.name / photo.name).symlink_to(photo)
        count += len(photos)
        if count >= n:
            break
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, device: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    env.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))
    env["FACESERVE_DEVICE"] = device
    env["PYTHONPATH"] = str(REPO)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--data-dir",
             str(data_dir), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data_dir.parent,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 300 s")


def run_cell(photos: Path, base: str, concurrency: int, csv_path: Path) -> dict:
    import faceserve_client as fc

    from service.bulk_commands import enroll_dir

    async def go() -> object:
        async with fc.AsyncClient(base, timeout=300, max_retries=10) as client:
            return await enroll_dir(photos, client, csv_path, concurrency=concurrency,
                                    progress=False)

    summary = asyncio.run(go())
    return {
        "concurrency": concurrency,
        "photos": summary.photos,
        "seconds": round(summary.seconds, 2),
        "photos_per_s": round(summary.photos_per_s, 3),
        "outcomes": dict(summary.counts),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=1000, help="LFW photos to enroll (1000)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4],
                    help="enroll-dir --concurrency values, one fresh server each (1 2 4)")
    ap.add_argument("--device", default="auto", help="FACESERVE_DEVICE of the server (auto)")
    ap.add_argument("--max-seconds", type=float, default=1800.0,
                    help="skip the cells left after this long (1800)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    args = ap.parse_args()

    lfw = SHARED / "lfw" / "lfw-deepfunneled"
    if not lfw.is_dir():
        print(f"LFW not found at {lfw}", file=sys.stderr)
        return 2
    start = time.monotonic()
    cells, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="bench-enroll-dir-") as tmp_name:
        tmp = Path(tmp_name)
        photos = tmp / "photos"
        photos.mkdir()
        n = pick_photos(lfw, args.photos, photos)
        for concurrency in args.concurrency:
            if time.monotonic() - start > args.max_seconds:
                skipped.append(concurrency)
                continue
            data_dir = tmp / f"data-c{concurrency}"
            proc, base = start_server(data_dir, args.device, tmp / "server.log")
            try:
                ready = httpx.get(f"{base}/readyz", timeout=30).json()
                cell = run_cell(photos, base, concurrency, tmp / f"c{concurrency}.csv")
                cell["server_device"] = ready.get("device")
                cells.append(cell)
                print(f"concurrency {concurrency}: {cell['photos_per_s']:.2f} photos/s",
                      file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(60)

    report = {
        "benchmark": "enroll_dir",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "photos": n,
        "cells": cells,
        "skipped_concurrency": skipped,
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version(), "torch": version("torch"),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"enroll_dir-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))

    outcomes = sorted({k for c in cells for k in c["outcomes"]})
    device = cells[0]["server_device"] if cells else "?"
    print(f"\nenroll-dir, {n} LFW photos, a fresh server per row (device {device})")
    print(f"{'concurrency':>11} {'seconds':>8} {'photos/s':>9}  " + " ".join(outcomes))
    for c in cells:
        print(f"{c['concurrency']:>11} {c['seconds']:>8.1f} {c['photos_per_s']:>9.2f}  "
              + " ".join(f"{c['outcomes'].get(k, 0):>{len(k)}}" for k in outcomes))
    if skipped:
        print(f"skipped (time budget): concurrency {skipped}")
    print(f"{os.cpu_count()} CPUs; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Service load: requests/s and latency percentiles of /verify and POST /identify.

Bounded load generator on loopback (httpx async): for each mode (micro-batching on, off) it
starts its own ``faceserve serve`` process on a free port over a gallery pre-filled with
``--faces`` SYNTHETIC templates (random unit vectors written directly through the Gallery API,
marked ``{"synthetic": true}``; they stand for gallery size and search cost, not for people),
then runs a fixed number of requests at each concurrency, each cell also capped in time.
Probe photos are real LFW images (250x250, one face each). Mean faces per forward pass come
from the server's own /metrics. Prints a table and writes JSON to benchmarks/results/.

    flock /tmp/faceserve-heavy.lock .venv/bin/python benchmarks/bench_service.py \
        [--faces 10000] [--requests 100] [--concurrency 1 4 16] [--cell-seconds 25] \
        [--max-seconds 330] [--device auto]

Bounded: every cell stops after ``--requests`` requests or ``--cell-seconds`` (marked
"capped"), and once ``--max-seconds`` have passed since the start the remaining cells are
skipped (and listed as skipped in the JSON), so a slow machine cannot make it run away.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"


def prefill(data_dir: Path, faces: int, seed: int = 0) -> float:
    """``faces`` synthetic templates (one per synthetic subject), written through the Gallery."""
    from models.embedder import MODEL_VERSION

    try:
        from service.gallery.gallery import Gallery
    except ImportError:  # a checkout from before service/ had sub-packages (--code)
        from service.gallery import Gallery

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((faces, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    start = time.perf_counter()
    gallery = Gallery.open(data_dir, model_version=MODEL_VERSION, dim=128, index_kind="flat")
    try:
        for i, vector in enumerate(vectors):
            gallery.enroll(
                f"synthetic-{i:06d}", vector, bbox=(0, 0, 149, 149),
                landmarks=[[0.0, 0.0]] * 5, detection_confidence=1.0,
                image_sha256=f"{i:064x}", chip_jpeg=None, metadata={"synthetic": True},
            )
    finally:
        gallery.close()
    return time.perf_counter() - start


def prefill_with(code: Path | None, data_dir: Path, faces: int) -> float:
    """``prefill`` by ``code``'s own Gallery (its schema), in a child process."""
    if code is None:
        return prefill(data_dir, faces)
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--prefill-into", str(data_dir),
         "--faces", str(faces)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def label_of(code: Path | None) -> str:
    """How the tables name a served checkout (``--code``), or the installed code."""
    return code.name if code is not None else "installed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, batching: bool, device: str, log: Path,
                 code: Path | None = None, slots: int = 16) -> tuple:
    """``faceserve serve`` on a free port; ``code``: run that checkout's code instead of the
    installed one (it goes first on PYTHONPATH), to compare two versions in one run."""
    port = free_port()
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    env.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))
    env["FACESERVE_BATCHING"] = "true" if batching else "false"
    env["FACESERVE_DEVICE"] = device
    # One client stands for many here: the per-client share of the inference queue (8 by
    # default) would answer most of a c=16 cell 429 and measure the limit, not the server.
    env.setdefault("FACESERVE_INFERENCE_SLOTS_PER_KEY", str(slots))
    exe = Path(sys.executable).parent / "faceserve"
    # Without the installed script (benchmarks/gpu_check.sh runs from a bare checkout).
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "service.cli"]
    out = log.open("ab")
    proc = subprocess.Popen(
        [*command, "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--log-level", "warning"],
        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data_dir.parent,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=5)
            if r.status_code == 200:
                return proc, base, r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 300 s")


def tree_pss_mib(pid: int) -> float | None:
    """Proportional set size of ``pid`` and every process under it (the detection workers
    and their fork server), in MiB: shared pages counted once across them. None without
    /proc."""
    root = Path("/proc")
    if not (root / "self" / "smaps_rollup").exists():
        return None
    children: dict[int, list[int]] = {}
    for stat in root.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in (root / str(p) / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb / 1024, 1)


def batch_stats(base: str) -> tuple[float, float]:
    """(sum, count) of the server's faces-per-forward-pass histogram."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("faceserve_embed_batch_faces_sum"):
            total = float(line.split()[-1])
        elif line.startswith("faceserve_embed_batch_faces_count"):
            count = float(line.split()[-1])
    return total, count


async def run_cell(base: str, make_request, requests: int, concurrency: int,
                   cap_s: float) -> dict:
    latencies: list[float] = []
    errors: collections.Counter[int] = collections.Counter()
    issued = 0
    deadline = time.perf_counter() + cap_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                r = await make_request(client)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors[r.status_code] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start

    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))] if ms else float("nan")

    return {
        "requests": len(ms), "errors": sum(errors.values()),
        "error_statuses": {str(k): v for k, v in sorted(errors.items())},
        "wall_s": round(wall, 3),
        # Answered requests only: a fast 429 is not throughput.
        "rps": round((len(ms) - sum(errors.values())) / wall, 3) if wall else 0.0,
        "p50_ms": round(pct(50), 1), "p95_ms": round(pct(95), 1), "p99_ms": round(pct(99), 1),
        "mean_ms": round(statistics.fmean(ms), 1) if ms else float("nan"),
        "capped": len(ms) < requests,
    }


def _errors(row: dict) -> str:
    """A cell's failed requests with their statuses: ``192 (429: 192)``, or ``0``."""
    statuses = row.get("error_statuses") or {}
    detail = ", ".join(f"{k}: {v}" for k, v in statuses.items())
    return f"{row['errors']} ({detail})" if detail else str(row["errors"])


def embed_photo() -> bytes:
    """A 640x480 JPEG with one face (the issue's kiosk photo), cut from the shared data."""
    import io

    from PIL import Image

    one = Image.open(SHARED / "people" / "misc" / "obama-480p.jpg").convert("RGB")
    left = (one.width - 640) // 2
    buf = io.BytesIO()
    one.crop((left, 0, left + 640, 480)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def probes() -> list[bytes]:
    lfw = SHARED / "lfw" / "lfw-deepfunneled"
    paths = sorted(lfw.glob("*/*_0001.jpg"))[:64]
    if not paths:
        raise SystemExit(f"no LFW photos under {lfw}")
    return [p.read_bytes() for p in paths]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=10_000, help="synthetic gallery size")
    ap.add_argument("--requests", type=int, default=100, help="requests per cell (fixed)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--cell-seconds", type=float, default=25.0, help="time cap per cell")
    ap.add_argument("--max-seconds", type=float, default=330.0,
                    help="overall cap: cells not started by then are skipped")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--endpoints", nargs="+", default=["verify", "identify"],
                    choices=["verify", "identify", "embed640", "embed640-min120"],
                    help="verify/identify: LFW 250x250 probes; embed640: POST /embed of a "
                    "640x480 photo with one face (embed640-min120: with min_face_px=120)")
    ap.add_argument("--batching", choices=["both", "on", "off"], default="both")
    ap.add_argument("--code", type=Path, nargs="+", default=None,
                    help="checkouts whose code to serve, compared cell by cell in one run "
                    "(e.g. a git worktree of the previous release, and this one)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--prefill-into", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prefill_into is not None:  # the child of prefill_with
        # That checkout's Gallery, not this one's (REPO was put first on sys.path above).
        code = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
        if code:
            sys.path.insert(0, code)
        print(prefill(args.prefill_into, args.faces))
        return 0
    started = time.monotonic()
    skipped: list[dict] = []

    codes: list[Path | None] = list(args.code) if args.code else [None]
    photos = probes()
    counter = {"i": 0}

    def next_photo() -> bytes:
        counter["i"] += 1
        return photos[counter["i"] % len(photos)]

    async def verify(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/verify", files={
            "image_a": ("a.jpg", next_photo(), "image/jpeg"),
            "image_b": ("b.jpg", next_photo(), "image/jpeg")})

    async def identify(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/identify", files={"image": ("a.jpg", next_photo(),
                                                                "image/jpeg")})

    kiosk = embed_photo() if any(e.startswith("embed") for e in args.endpoints) else b""

    async def embed640(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/embed", files={"image": ("k.jpg", kiosk, "image/jpeg")})

    async def embed640_min120(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/embed", files={"image": ("k.jpg", kiosk, "image/jpeg")},
                                 data={"min_face_px": "120"})

    named = {"verify": ("POST /verify (2 images)", verify),
             "identify": ("POST /identify", identify),
             "embed640": ("POST /embed 640x480", embed640),
             "embed640-min120": ("POST /embed 640x480 min_face_px=120", embed640_min120)}
    endpoints = dict(named[e] for e in args.endpoints)
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.batching]
    rows: list[dict] = []
    memory: list[dict] = []  # per server, after its cells
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        log = Path(tmp) / "server.log"
        # One gallery per code version (a SQLite gallery has one server, and each version
        # writes its own schema).
        data_dirs = [Path(tmp) / f"data-{i}" for i in range(len(codes))]
        fill_s = sum(prefill_with(c, d, args.faces) for c, d in zip(codes, data_dirs,
                                                                       strict=True))
        print(f"gallery: {args.faces} synthetic faces written in {fill_s:.1f}s", flush=True)
        server_info = {}
        for batching in modes:
            servers = []
            try:
                for code, data_dir in zip(codes, data_dirs, strict=True):
                    proc, base, ready = start_server(
                        data_dir, batching, args.device, log, code, max(args.concurrency))
                    servers.append((code, proc, base))
                    server_info = ready
                    assert ready["gallery_faces"] == args.faces, ready
                    # Warm-up: first requests pay lazy initialisation.
                    asyncio.run(run_cell(base, verify, 4, 2, 60))
                for name, fn in endpoints.items():
                    for conc in args.concurrency:
                        for code, _, base in servers:  # versions interleaved, cell by cell
                            label = label_of(code)
                            if time.monotonic() - started > args.max_seconds:
                                skipped.append({"endpoint": name, "concurrency": conc,
                                                "batching": batching, "code": label})
                                print(f"{name} c={conc} batching={batching} {label}: "
                                      "skipped (time cap)")
                                continue
                            s0, c0 = batch_stats(base)
                            cell = asyncio.run(run_cell(base, fn, args.requests, conc,
                                                        args.cell_seconds))
                            s1, c1 = batch_stats(base)
                            cell.update(endpoint=name, concurrency=conc, batching=batching,
                                        code=label,
                                        faces_per_pass=round((s1 - s0) / (c1 - c0), 2)
                                        if c1 > c0 else None)
                            rows.append(cell)
                            print(f"{name:26s} c={conc:<3d} batching={batching!s:5s} "
                                  f"{label:>10s} {cell['rps']:7.2f} req/s  p50 "
                                  f"{cell['p50_ms']:8.1f}  p95 {cell['p95_ms']:8.1f}  p99 "
                                  f"{cell['p99_ms']:8.1f} ms  faces/pass "
                                  f"{cell['faces_per_pass']}", flush=True)
                for code, proc, base in servers:
                    label = label_of(code)
                    ready = httpx.get(f"{base}/readyz", timeout=30).json()
                    memory.append({"code": label, "batching": batching,
                                   "pss_mib": tree_pss_mib(proc.pid),
                                   "detection_processes": ready.get("detection_processes", 0)})
            finally:
                for _, proc, _ in servers:
                    proc.terminate()
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()

    import torch

    from models.cpu_share import available_cores
    from service.config import Settings

    report = {
        "benchmark": "bench_service",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "gallery": {"faces": args.faces, "synthetic": True, "index_kind": "flat",
                    "generator": "standard normal 128-d, L2-normalised, seed 0; one subject "
                                 "per face; written with Gallery.enroll (SQLite + FAISS), "
                                 "not through HTTP",
                    "prefill_s": round(fill_s, 1)},
        "server": {**{name: Settings.model_fields[name].default
                      for name in ("batch_max_size", "batch_max_wait_ms", "workers",
                                   "max_side", "upsample")},
                   "inference_threads": Settings.model_fields["inference_threads"].default
                   or available_cores()},
        "skipped": skipped,
        "total_s": round(time.monotonic() - started, 1),
        "probes": "LFW deep-funneled 250x250 JPEGs (first photo of the first 64 people)",
        "requests_per_cell": args.requests, "cell_cap_s": args.cell_seconds,
        "device": server_info.get("device"), "model": server_info.get("model"),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version(), "torch": torch.__version__,
                 "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "rows": rows,
        "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.out / f"bench_service-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))

    print()
    print("| endpoint | concurrency | batching | code | req/s | p50 ms | p95 ms | p99 ms "
          "| faces/pass | n | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['endpoint']} | {r['concurrency']} | {'on' if r['batching'] else 'off'} "
              f"| {r['code']} "
              f"| {r['rps']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
              f"| {r['faces_per_pass']} | {r['requests']}{' (capped)' if r['capped'] else ''} "
              f"| {_errors(r)} |")
    for m in memory:
        print(f"memory after the cells, {m['code']} (batching {m['batching']}, "
              f"{m['detection_processes']} detection processes): PSS {m['pss_mib']} MiB, "
              "server and its workers together")
    print(f"\ngallery {args.faces} synthetic faces; device {report['device']}; "
          f"{os.cpu_count()} CPUs; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

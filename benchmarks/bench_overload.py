"""Memory under overload: RSS of a real server while 200 uploads arrive at once.

For each configuration it starts its own ``faceserve serve`` (real pipeline, on loopback),
warms it up with one request, resets the kernel's peak-RSS mark, then fires a burst of
concurrent POST /embed uploads of one large photo (a real photo upscaled to 12 MP with
sensor-like noise, a few MB of JPEG like a phone photo) and samples the server's RSS every
20 ms until every request is answered or ``--cell-seconds`` pass (then the rest are abandoned:
"capped"). Configurations: the default bounded inference queue (``FACESERVE_INFERENCE_QUEUE``,
32) at several burst sizes, which must keep the ceiling flat, and the same queue made
effectively unbounded (10000), which shows what the bound prevents: every upload read and held
while it waits for a worker.

    flock /tmp/faceserve-heavy.lock .venv/bin/python benchmarks/bench_overload.py \
        [--bursts 50 100 200] [--unbounded-bursts 50 200] [--queue 32] [--cell-seconds 90]

Detection runs on a 640-px copy (``FACESERVE_MAX_SIDE=640``) to keep the CPU time small; the
full 12 MP image is still decoded, and the upload held, per request. Prints a table and writes
JSON to benchmarks/results/bench_overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACESERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
UNBOUNDED = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_photo() -> bytes:
    """A real photo (one face) upscaled to 4000x3000: a large but ordinary camera upload."""
    source = SHARED / "people" / "misc" / "obama-1080p.jpg"
    if source.is_file():
        image = Image.open(source).convert("RGB")
    else:  # no shared data: scikit-image's astronaut
        from skimage import data

        image = Image.fromarray(data.astronaut())
    pixels = np.asarray(image.resize((4000, 3000), Image.Resampling.BICUBIC), dtype=np.int16)
    # Sensor-like noise: an upscaled photo is unnaturally smooth and would compress to under
    # 1 MB; a real 12 MP phone photo is 3-5 MB.
    noise = np.random.default_rng(0).normal(0, 6, pixels.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=95)
    return buf.getvalue()


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB: current and peak resident memory."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so it covers the burst only."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def start_server(data_dir: Path, queue: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    env.setdefault("FACESERVE_CACHE_DIR", str(REPO / ".cache" / "weights"))
    env |= {"FACESERVE_INFERENCE_QUEUE": str(queue), "FACESERVE_MAX_SIDE": "640",
            "FACESERVE_INFERENCE_THREADS": "2", "FACESERVE_REQUEST_TIMEOUT_S": "600",
            "OMP_NUM_THREADS": "2"}
    exe = Path(sys.executable).parent / "faceserve"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--data-dir", str(data_dir),
             "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
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
    raise RuntimeError("server not ready")


async def burst(base: str, photo: bytes, n: int, cap_s: float) -> dict:
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=cap_s + 30, limits=limits) as client:
        async def one() -> None:
            try:
                r = await client.post("/embed", files={"image": ("big.jpg", photo, "image/jpeg")})
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        _, pending = await asyncio.wait(tasks, timeout=cap_s)
        for task in pending:
            task.cancel()
        if pending:
            statuses["unanswered (capped)"] = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    return statuses


def run_cell(photo: bytes, n: int, queue: int, cap_s: float, log: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="faceserve-overload-") as tmp:
        proc, base = start_server(Path(tmp) / "data", queue, log)
        try:
            r = httpx.post(f"{base}/embed", files={"image": ("big.jpg", photo, "image/jpeg")},
                           timeout=120)  # warm-up: allocator pools, kernels
            assert r.status_code == 200, r.text
            time.sleep(1.0)
            baseline, _ = rss_kib(proc.pid)
            hwm_reset = reset_peak(proc.pid)
            samples: list[int] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    try:
                        samples.append(rss_kib(proc.pid)[0])
                    except (OSError, KeyError):
                        return
                    stop.wait(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.perf_counter()
            statuses = asyncio.run(burst(base, photo, n, cap_s))
            elapsed = time.perf_counter() - start
            stop.set()
            sampler.join()
            _, hwm = rss_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    peak = max([*samples, baseline])
    return {
        "burst": n, "queue": queue, "baseline_mib": round(baseline / 1024, 1),
        "peak_sampled_mib": round(peak / 1024, 1),
        "peak_hwm_mib": round(hwm / 1024, 1) if hwm_reset else None,
        "growth_mib": round((max(peak, hwm if hwm_reset else 0) - baseline) / 1024, 1),
        "statuses": statuses, "seconds": round(elapsed, 1), "samples": len(samples),
        "capped": "unanswered (capped)" in statuses,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, nargs="+", default=[50, 100, 200],
                    help="burst sizes for the bounded queue")
    ap.add_argument("--unbounded-bursts", type=int, nargs="*", default=[50, 200],
                    help="burst sizes with the queue made effectively unbounded (contrast)")
    ap.add_argument("--queue", type=int, default=32, help="FACESERVE_INFERENCE_QUEUE (bounded)")
    ap.add_argument("--cell-seconds", type=float, default=90.0, help="time cap per burst")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_overload.json")
    args = ap.parse_args()

    photo = big_photo()
    log = Path(tempfile.gettempdir()) / "faceserve-bench-overload.log"
    cells = [(n, args.queue) for n in args.bursts] + [(n, UNBOUNDED)
                                                      for n in args.unbounded_bursts]
    rows = []
    for n, queue in cells:
        row = run_cell(photo, n, queue, args.cell_seconds, log)
        rows.append(row)
        print(f"burst {n:>4} queue {queue:>5}: peak {row['peak_sampled_mib']} MiB "
              f"(+{row['growth_mib']}) {row['statuses']} in {row['seconds']} s", flush=True)

    print()
    print(f"upload: {len(photo) / 1e6:.1f} MB JPEG, 4000x3000; POST /embed; server RSS")
    print("| burst | inference queue | baseline MiB | peak MiB (sampled) | peak MiB (VmHWM) "
          "| growth MiB | answers | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        q = "unbounded" if r["queue"] == UNBOUNDED else str(r["queue"])
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        print(f"| {r['burst']} | {q} | {r['baseline_mib']} | {r['peak_sampled_mib']} | "
              f"{r['peak_hwm_mib']} | {r['growth_mib']} | {answers} | {r['seconds']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "bench_overload",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "upload_bytes": len(photo), "upload_pixels": "4000x3000", "endpoint": "POST /embed",
        "server": {"max_side": 640, "inference_threads": 2, "omp_threads": 2},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

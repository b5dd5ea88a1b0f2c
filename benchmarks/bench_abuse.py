"""What a real ``faceserve serve`` does under the probes of issue 19, measured.

Starts the server (real pipeline, loopback, two API keys), then, one probe at a time:

* **random methods**: 3,000 requests with random methods; the size of ``/metrics`` before and
  after (it must stay flat: unknown methods share one label);
* **slow uploads**: key A opens 32 uploads that send one byte every 2 s while key B makes
  ordinary ``/embed`` requests; what each got (A: its share of slots, then 408 once under
  the minimum upload rate; B: served);
* **slow headers**: many sockets that send half a request line; the server's open file
  descriptors before, while held, and after the header timeout; how many were refused 503
  at the connection cap;
* **oversized headers**: a 20 KB header: the status;
* **pixel bombs**: a 6000x6000 PNG of about 100 KB (under the 40 MP limit), one alone then 4
  at once; peak RSS of the server (VmHWM reset before each) and the statuses. Run again on a
  server with the decoded-pixel budget off (``--no-unbounded`` skips it) to show what the
  budget prevents.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_abuse.py [--sockets 1000]

Prints a table and writes JSON to benchmarks/results/bench_abuse.json. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import random
import socket
import string
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
HEADER_TIMEOUT_S = 10.0  # the default: the probe measures what a deployment gets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cli(*args: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=REPO,
                          check=True, capture_output=True, text=True).stdout


class Server:
    def __init__(self, data_dir: Path, log: Path, **settings: str) -> None:
        self.env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2",
                        FACESERVE_DATA_DIR=str(data_dir))
        cache = REPO / ".cache" / "weights"
        if not cache.is_dir() and (REPO.parent / "main" / ".cache" / "weights").is_dir():
            cache = REPO.parent / "main" / ".cache" / "weights"
        self.env.setdefault("FACESERVE_CACHE_DIR", str(cache))
        self.env |= {f"FACESERVE_{k.upper()}": v for k, v in settings.items()}
        self.tokens = {}
        for name, scopes in (("a", "recognize"), ("b", "recognize"), ("ops", "metrics")):
            out = cli("keys", "create", "--name", name, "--scope", scopes, "--json", env=self.env)
            self.tokens[name] = json.loads(out)["token"]
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT,
                env=self.env, cwd=REPO)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server not ready")

    def headers(self, who: str) -> dict[str, str]:
        return {"X-API-Key": self.tokens[who]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def photo() -> bytes:
    source = SHARED / "people" / "misc" / "obama-1080p.jpg"
    if source.is_file():
        return source.read_bytes()
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG")
    return buf.getvalue()


def pixel_bomb(side: int = 6000) -> bytes:
    """A PNG of side x side px that compresses to ~100 KB: a flat image with a few marks."""
    pixels = np.full((side, side, 3), 200, dtype=np.uint8)
    pixels[::500, :, :] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------- probes


def random_methods(server: Server, n: int = 3000) -> dict:
    admin = server.headers("ops")
    before = len(httpx.get(f"{server.base}/metrics", headers=admin).content)
    rng = random.Random(0)
    sizes = []
    with httpx.Client(base_url=server.base) as c:
        for _ in range(2):  # the first round adds the `other` series once; the second nothing
            for _ in range(n):
                method = "".join(rng.choices(string.ascii_uppercase, k=6))
                c.request(method, "/healthz")
            sizes.append(len(httpx.get(f"{server.base}/metrics", headers=admin).content))
    return {"requests": n, "metrics_bytes_before": before, "metrics_bytes_after": sizes[0],
            "metrics_bytes_after_twice": sizes[1]}


def slow_upload(port: int, token: str, stop: threading.Event, result: list) -> None:
    """POST /embed whose body arrives at one byte every 2 s; appends the status (or why not)."""
    head = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    try:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + token.encode()
                  + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 100000\r\n\r\n" + head)
        s.settimeout(2.0)
        while not stop.is_set():
            try:
                answer = s.recv(4096)
                result.append(answer.split(b" ", 2)[1].decode() if answer else "closed")
                return
            except TimeoutError:
                s.sendall(b"x")
        result.append("held")
    except OSError as exc:
        result.append(type(exc).__name__)
    finally:
        s.close()


def slow_uploads(server: Server, image: bytes, n: int = 32, others: int = 10) -> dict:
    stop = threading.Event()
    results: list[str] = []
    threads = [threading.Thread(target=slow_upload,
                                args=(server.port, server.tokens["a"], stop, results))
               for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # all of A's uploads are in
    b_status, b_seconds = [], []
    with httpx.Client(base_url=server.base, timeout=120) as c:
        for _ in range(others):
            t0 = time.perf_counter()
            r = c.post("/embed", files={"image": ("p.jpg", image, "image/jpeg")},
                       headers=server.headers("b"))
            b_seconds.append(time.perf_counter() - t0)
            b_status.append(r.status_code)
    for t in threads:
        t.join(60)
    stop.set()
    for t in threads:
        t.join(10)
    counts = {s: results.count(s) for s in sorted(set(results))}
    return {"slow_uploads": n, "slow_outcomes": counts, "other_key_status":
            {str(s): b_status.count(s) for s in sorted(set(b_status))},
            "other_key_median_s": round(float(np.median(b_seconds)), 3)}


def slow_headers(server: Server, n: int) -> dict:
    pid = server.proc.pid
    before = open_fds(pid)
    socks, refused = [], 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /healthz HTT")
        socks.append(s)
    time.sleep(1.0)
    held = open_fds(pid)
    for s in socks:
        s.settimeout(0.01)
        try:
            if s.recv(64).startswith(b"HTTP/1.1 503"):
                refused += 1
        except (TimeoutError, OSError):
            pass
    time.sleep(HEADER_TIMEOUT_S + 3)
    after = open_fds(pid)
    for s in socks:
        s.close()
    return {"sockets": n, "fds_before": before, "fds_held": held,
            "fds_after_header_timeout": after, "refused_503_at_cap": refused}


def big_header(server: Server) -> dict:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000
              + b"\r\n\r\n")
    answer = s.recv(4096)
    s.close()
    return {"header_bytes": 20_000, "status": answer.split(b" ", 2)[1].decode()}


async def _post_many(server: Server, data: bytes, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=server.base, timeout=300) as c:
        async def one() -> int:
            r = await c.post("/embed", files={"image": ("b.png", data, "image/png")},
                             headers=server.headers("b"))
            return r.status_code
        return list(await asyncio.gather(*(one() for _ in range(n))))


def pixel_bombs(server: Server, bomb: bytes) -> dict:
    pid = server.proc.pid
    out = {}
    for n in (1, 4):
        baseline = rss_kib(pid)[0]
        reset_peak(pid)
        statuses = asyncio.run(_post_many(server, bomb, n))
        out[f"x{n}"] = {"statuses": statuses, "rss_before_mib": baseline // 1024,
                        "peak_rss_mib": rss_kib(pid)[1] // 1024}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--no-unbounded", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_abuse.json")
    args = ap.parse_args()
    image, bomb = photo(), pixel_bomb()
    report: dict = {"bomb_png_bytes": len(bomb), "bomb_pixels": 6000 * 6000}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        server = Server(Path(tmp) / "g1", log)
        try:
            report["random_methods"] = random_methods(server)
            report["big_header"] = big_header(server)
            report["pixel_bombs"] = pixel_bombs(server, bomb)
            report["slow_uploads"] = slow_uploads(server, image)
            report["slow_headers"] = slow_headers(server, args.sockets)
        finally:
            server.stop()
        if not args.no_unbounded:
            server = Server(Path(tmp) / "g2", log, decoded_pixels_in_flight=str(10**12))
            try:
                report["pixel_bombs_unbounded"] = pixel_bombs(server, bomb)
            finally:
                server.stop()

    rm, sh, su = report["random_methods"], report["slow_headers"], report["slow_uploads"]
    rows = [
        ("random methods", f"2 x {rm['requests']} requests", f"/metrics "
         f"{rm['metrics_bytes_before']} -> {rm['metrics_bytes_after']} -> "
         f"{rm['metrics_bytes_after_twice']} bytes"),
        ("20 KB header", "1 request", f"status {report['big_header']['status']}"),
        ("slow uploads, key A", f"{su['slow_uploads']} at 0.5 B/s", str(su["slow_outcomes"])),
        ("meanwhile key B", "10 /embed", f"{su['other_key_status']}, median "
         f"{su['other_key_median_s']} s"),
        ("half request lines", f"{sh['sockets']} sockets", f"fds {sh['fds_before']} -> "
         f"{sh['fds_held']} -> {sh['fds_after_header_timeout']} after {HEADER_TIMEOUT_S:g} s; "
         f"{sh['refused_503_at_cap']} refused 503"),
    ]
    for key in ("pixel_bombs", "pixel_bombs_unbounded"):
        for n, cell in report.get(key, {}).items():
            rows.append((f"{key.replace('_', ' ')} {n}", f"{len(bomb) // 1024} KB PNG",
                         f"statuses {cell['statuses']}, RSS {cell['rss_before_mib']} -> peak "
                         f"{cell['peak_rss_mib']} MiB"))
    for probe, load, outcome in rows:
        print(f"{probe:<30} {load:<22} {outcome}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **report}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

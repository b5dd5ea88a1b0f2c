"""A package index for the image build that prefers this machine's wheel files to PyPI's.

Why: torch 2.14.1 and its CUDA libraries (about 3 GB of wheels) lie on the development machine
in local PEP 503 indexes, but not everything they need does, and pip, given a local index and
PyPI side by side, downloaded every file again from PyPI. This serves one index: for each
project, the local files, plus PyPI's files whose names are not among them (other versions,
packages missing locally). Used by docker/smoke.sh as the build's TORCH_INDEX_URL and
PIP_INDEX_URL; it listens on 127.0.0.1 only.

    python3 docker/wheel_index.py --port 18090 /opt/pypi-more/simple /opt/pypi/simple
"""

from __future__ import annotations

import argparse
import html
import os
import re
import ssl
import sys
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin

UPSTREAM = "https://pypi.org/simple/"
_ANCHOR = re.compile(r"<a\s[^>]*?href=\"([^\"]+)\"[^>]*>([^<]+)</a>", re.I | re.S)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def anchors(page: str) -> list[tuple[str, str, str]]:
    """(whole anchor, href, file name) of a simple-index project page."""
    return [(m.group(0), m.group(1), html.unescape(m.group(2)).strip())
            for m in _ANCHOR.finditer(page)]


def merged_page(project: str, indexes: list[Path], upstream: str | None) -> str | None:
    seen: set[str] = set()
    links: list[str] = []
    for i, index in enumerate(indexes):
        page = index / project / "index.html"
        if not page.is_file():
            continue
        for whole, href, name in anchors(page.read_text(encoding="utf-8")):
            if name in seen:
                continue
            seen.add(name)
            local = urljoin(f"/i{i}/{index.name}/{project}/", href)
            links.append(whole.replace(f'href="{href}"', f'href="{local}"'))
    if upstream is not None:
        context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
        request = urllib.request.Request(f"{upstream}{project}/", headers={"Accept": "text/html"})
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                remote = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            remote = ""
        base = f"{upstream}{project}/"
        for whole, href, name in anchors(remote):
            if name not in seen:
                seen.add(name)
                links.append(whole.replace(f'href="{href}"', f'href="{urljoin(base, href)}"'))
    if not links:
        return None
    body = "\n".join(links)
    return f"<!DOCTYPE html><html><body>\n{body}\n</body></html>\n"


def handler(indexes: list[Path], upstream: str | None) -> type[SimpleHTTPRequestHandler]:
    roots = {f"i{i}": index.parent for i, index in enumerate(indexes)}

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if parts[0] == "simple" and len(parts) == 2:
                page = merged_page(normalise(parts[1]), indexes, upstream)
                if page is None:
                    self.send_error(404)
                    return
                data = page.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if parts[0] in roots and ".." not in parts:
                self.directory = str(roots[parts[0]])
                self.path = "/" + "/".join(parts[1:])
                super().do_GET()
                return
            self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("wheel_index: " + format % args + "\n")

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("indexes", nargs="+", type=Path, help="local simple-index folders, in order")
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--upstream", default=UPSTREAM, help="'' for local files only")
    args = p.parse_args(argv)
    indexes = [i.resolve() for i in args.indexes]
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(indexes, args.upstream or None))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

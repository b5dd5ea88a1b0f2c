"""``faceserve cluster DIR``: find the people in a folder of photos, offline.

Every face of every photo is detected and embedded (the service's pipeline), the faces are
clustered (:mod:`models.clustering`; faces of one photo never share a cluster), and the groups
are written as ``person_NNN/`` folders of symbolic links to the photos (a photo of two people
is in two folders; faces alone are under ``unclustered/``) and/or a CSV with one row per face.
No server, no gallery: nothing is stored but the output.

The output tells who is in which photo: the CSV is created ``0o600`` and the folders ``0o700``
(an existing ``--out`` folder keeps its mode, since others may use it; a warning says when it
is open to them). The same rule as ``service.gallery.private``, kept here because ``models``
does not depend on ``service``.
"""

from __future__ import annotations

import argparse
import csv
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

__all__ = ["FaceRow", "add_parsers", "embed_folder", "list_photos", "write_csv", "write_links"]


@dataclass(frozen=True)
class FaceRow:
    photo: str  # path relative to the folder
    face: int  # index of the face in its photo
    box: tuple[int, int, int, int]  # left, top, right, bottom


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from models.clustering import ALGORITHMS, CLUSTER_THRESHOLD

    p = sub.add_parser(
        "cluster",
        help="group the faces of a folder of photos into people (offline, no server)",
        description=(
            "Detect and embed every face of every photo under DIR (any depth), cluster them "
            "into people, and write each group as a folder of symbolic links to its photos "
            "(person_001 is the largest; faces alone go to unclustered/) and/or a CSV with "
            "one row per face (photo, face index, box, cluster; -1 = alone). Two faces of one "
            "photo are never put in one group. Photos without a face are listed in the CSV "
            "with face -1."
        ),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="folder of photos")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (created; must be empty or absent for --format links)")
    p.add_argument("--format", choices=["links", "csv", "both"], default="both",
                   help="symlink folders, clusters.csv, or both (default)")
    p.add_argument("--threshold", type=float, default=CLUSTER_THRESHOLD,
                   help=f"cosine similarity for one person (default {CLUSTER_THRESHOLD}, "
                        "measured on LFW; higher: purer groups, more faces alone)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="average",
                   help="average (default; exact, O(N^2) memory, up to tens of thousands of "
                        "faces) or chinese-whispers (k-NN graph, scales to 10^5+), complete")
    p.add_argument("--min-face-px", type=int, help="smallest face to find, in pixels")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--cache-dir", type=Path, help="converted weights cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cluster)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def list_photos(root: Path) -> list[Path]:
    """Image files under ``root`` (any depth, sorted); hidden files and folders left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in sorted(filenames)
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return found


def embed_folder(
    pipeline: object, root: Path, photos: list[Path], *, min_face_px: int | None = None,
    progress: bool = True,
) -> tuple[list[FaceRow], np.ndarray, list[str], list[str]]:
    """(faces, their embeddings, photos without a face, photos that could not be read)."""
    from tqdm import tqdm

    from models.imageio import ImageError, decode_image

    rows: list[FaceRow] = []
    vectors: list[np.ndarray] = []
    no_face: list[str] = []
    unreadable: list[str] = []
    for path in tqdm(photos, desc="faces", unit="photo", disable=not progress):
        rel = str(path.relative_to(root))
        try:
            image = decode_image(path.read_bytes())
        except (ImageError, OSError):
            unreadable.append(rel)
            continue
        faces = pipeline.embed([image], min_face_px=min_face_px)[0]  # type: ignore[attr-defined]
        if not faces:
            no_face.append(rel)
        for i, face in enumerate(faces):
            rows.append(FaceRow(rel, i, face.box.as_tuple()))
            vectors.append(face.embedding)
    dim = getattr(pipeline, "embedding_size", 128)
    return rows, (np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)), \
        no_face, unreadable


def _private_dir(path: Path) -> None:
    """``path`` created ``0o700`` if missing; an existing folder is never chmodded."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif stat.S_IMODE(path.stat().st_mode) & 0o077:
        print(f"faceserve cluster: {path} is open to other users; the files written in it "
              f"are owner-only, but consider `chmod 700 {path}`", file=sys.stderr)


def _open_private(path: Path) -> TextIO:
    """``path`` truncated for writing, created ``0o600`` (an existing file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o077)
        return os.fdopen(fd, "w", newline="", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_csv(path: Path, rows: list[FaceRow], labels: np.ndarray, no_face: list[str]) -> None:
    with _open_private(path) as f:
        w = csv.writer(f)
        w.writerow(["photo", "face", "left", "top", "right", "bottom", "cluster"])
        for row, label in zip(rows, labels, strict=True):
            w.writerow([row.photo, row.face, *row.box, int(label)])
        for photo in no_face:
            w.writerow([photo, -1, "", "", "", "", ""])


def write_links(out: Path, root: Path, rows: list[FaceRow], labels: np.ndarray) -> None:
    """``person_NNN/`` (1-based, largest first) and ``unclustered/`` folders of symlinks."""
    width = max(3, len(str(int(labels.max()) + 1))) if len(labels) else 3
    for row, label in zip(rows, labels, strict=True):
        folder = out / ("unclustered" if label < 0 else f"person_{int(label) + 1:0{width}d}")
        _private_dir(folder)
        # A flat name that stays unique when two sub-folders hold photos of one name.
        link = folder / row.photo.replace(os.sep, "__")
        if not link.exists():
            link.symlink_to((root / row.photo).resolve())


def _cluster(args: argparse.Namespace) -> int:
    from models.clustering import cluster

    if not args.dir.is_dir():
        print(f"faceserve cluster: {args.dir} is not a folder", file=sys.stderr)
        return 2
    if args.format in ("links", "both") and args.out.exists() and any(
            p for p in args.out.iterdir() if p.name != "clusters.csv"):
        print(f"faceserve cluster: {args.out} is not empty (links would mix with old ones)",
              file=sys.stderr)
        return 2
    import torch

    from models.pipeline import FacePipeline

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    root = args.dir.resolve()
    photos = list_photos(root)
    pipeline = FacePipeline(device=None if args.device == "auto" else args.device,
                            cache_dir=args.cache_dir)
    rows, vectors, no_face, unreadable = embed_folder(
        pipeline, root, photos, min_face_px=args.min_face_px, progress=not args.no_progress)
    labels = (cluster(vectors, args.threshold, algorithm=args.algorithm,
                      photos=[r.photo for r in rows]) if len(rows) else np.zeros(0, np.int64))
    _private_dir(args.out)
    if args.format in ("csv", "both"):
        write_csv(args.out / "clusters.csv", rows, labels, no_face)
    if args.format in ("links", "both"):
        write_links(args.out, root, rows, labels)
    groups = len(set(labels[labels >= 0].tolist()))
    print(f"{len(photos)} photos, {len(rows)} faces: {groups} people, "
          f"{int(np.sum(labels < 0))} faces alone, {len(no_face)} photos without a face, "
          f"{len(unreadable)} unreadable; written to {args.out}")
    return 0

"""Re-computing a gallery's embeddings with another model, from the stored face chips.

Every enrolled face keeps its aligned 150x150 chip (JPEG, ``store_chips``), so a gallery can
move to a new model without the original photos: decode each chip, embed it with the new
model, replace the embedding and its model label. Batches are committed one at a time, and
a face is selected for work by "its model is not the target", so an interrupted run loses
nothing and the next run carries on where it stopped. Until it finishes the gallery holds two
models' embeddings, which the service refuses to serve.

The gallery must be held exclusively meanwhile (``exclusive_store``): the data directory's
lock for SQLite, an exclusive session lock for PostgreSQL, which every replica holds in
shared mode. Nothing here does tensor math: the new model's ``embed`` comes from ``models``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.gallery.gallery import SNAPSHOT_NAME, lock_data_dir, unlock_data_dir
from service.gallery.index import remove_snapshot
from service.gallery.private import private_dir
from service.gallery.store import GalleryStore, open_store
from service.gallery.store.sqlite import FILENAME as SQLITE_FILENAME

__all__ = [
    "ReembedError",
    "ReembedPlan",
    "ReembedResult",
    "decode_chip",
    "exclusive_store",
    "plan_reembed",
    "reembed",
]

CHIP_SIDE = 150
_NORM_TOLERANCE = 1e-3

# (N, 150, 150, 3) uint8 chips -> (N, D) float32 unit vectors
EmbedFn = Callable[[np.ndarray], np.ndarray]


class ReembedError(RuntimeError):
    """Re-embedding cannot start or go on (faces without chips, a bad chip, bad vectors)."""


@dataclass(frozen=True)
class ReembedPlan:
    target: str
    faces: int  # all faces in the gallery
    models: dict[str, int]  # faces per model now
    to_do: int  # faces not embedded by the target model
    without_chip: list[str]  # face ids among ``to_do`` that have no stored chip

    @property
    def done(self) -> int:
        return self.faces - self.to_do


@dataclass
class ReembedResult:
    target: str
    reembedded: int = 0
    deleted_without_chip: int = 0
    already: int = 0  # faces that had the target model before this run
    seconds: float = 0.0
    models_before: dict[str, int] = field(default_factory=dict)
    models_after: dict[str, int] = field(default_factory=dict)
    negatives_reembedded: int = 0
    negatives_without_chip: int = 0  # left of their old model: ignored by the service
    unknown_reembedded: int = 0
    unknown_without_chip: int = 0

    @property
    def faces_per_s(self) -> float:
        return self.reembedded / self.seconds if self.seconds > 0 else 0.0


def decode_chip(data: bytes, face_id: str = "?", side: int | None = CHIP_SIDE) -> np.ndarray:
    """A stored chip as ``(side, side, 3)`` uint8 RGB (150 for dlib's chips, 112 for the
    ArcFace family's; None: any size, for a caller that checks it); ``ReembedError`` when it
    is not one."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ReembedError(f"face {face_id}: stored chip cannot be decoded ({exc})") from None
    chip = np.asarray(rgb, dtype=np.uint8)
    if side is not None and chip.shape != (side, side, 3):
        raise ReembedError(f"face {face_id}: stored chip is {chip.shape[1]}x{chip.shape[0]}, "
                           f"not {side}x{side}")
    return chip


@contextmanager
def exclusive_store(data_dir: Path, database_url: str | None) -> Iterator[GalleryStore]:
    """The gallery's store, with no other faceserve process on it until the block ends.

    ``ReembedError`` when the data directory holds no SQLite gallery (and no database URL is
    given): re-embedding must never quietly create an empty gallery somewhere else.
    """
    data_dir = Path(data_dir)
    if not database_url and not (data_dir / SQLITE_FILENAME).is_file():
        raise ReembedError(f"no gallery in {data_dir.resolve()} (no {SQLITE_FILENAME}); "
                           "pass --data-dir, or --database-url for a PostgreSQL gallery")
    private_dir(data_dir)
    fd = lock_data_dir(data_dir)  # GalleryLocked when a server has this data directory
    try:
        store = open_store(data_dir, database_url, exclusive=True)
        try:
            yield store
        finally:
            store.close()
    finally:
        unlock_data_dir(fd)


def plan_reembed(store: GalleryStore, target: str) -> ReembedPlan:
    """What a run towards ``target`` would do, read without changing anything."""
    state = store.state()
    to_do = state.face_count - state.model_counts.get(target, 0)
    return ReembedPlan(target, state.face_count, dict(state.model_counts), to_do,
                       store.faces_without_chips(target))


def _check_vectors(vectors: np.ndarray, n: int, dim: int | None) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] != n or (dim is not None and v.shape[1] != dim):
        raise ReembedError(f"the model returned {v.shape} for {n} chips")
    if not np.all(np.isfinite(v)):
        raise ReembedError("the model returned non-finite embeddings")
    norms = np.linalg.norm(v, axis=1)
    if np.any(np.abs(norms - 1.0) > _NORM_TOLERANCE):
        raise ReembedError("the model returned embeddings that are not L2-normalised")
    return v


def reembed(
    store: GalleryStore,
    embed: EmbedFn,
    target: str,
    *,
    dim: int | None = None,
    batch_size: int = 256,
    delete_without_chip: bool = False,
    snapshot_dir: Path | None = None,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
    chip_side: int = CHIP_SIDE,
) -> ReembedResult:
    """Give every face an embedding by ``target`` (see the module docstring).

    Faces without a stored chip cannot be re-embedded: the run refuses to start while there
    are any, unless ``delete_without_chip`` erases them first. ``snapshot_dir``: where the
    SQLite gallery's index snapshot is (it holds the old vectors; removed before any change).
    ``after_batch(done)`` is called after each committed batch (tests interrupt a run there).
    ``chip_side``: the target model's chip size; the caller has checked that the stored
    chips were cut the way the target model wants (``chip_geometry_of``).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    start = time.perf_counter()
    plan = plan_reembed(store, target)
    result = ReembedResult(target, already=plan.done, models_before=plan.models)
    if plan.without_chip and not delete_without_chip:
        shown = ", ".join(plan.without_chip[:5]) + (" ..." if len(plan.without_chip) > 5 else "")
        raise ReembedError(
            f"{len(plan.without_chip)} of the {plan.to_do} faces to re-embed have no stored "
            f"chip (enrolled with store_chips off), e.g. {shown}; nothing was changed. "
            "Re-enroll them from their photos afterwards and pass --delete-faces-without-chips "
            "to erase them now, or keep serving this gallery with its model."
        )
    if snapshot_dir is not None and plan.to_do:
        remove_snapshot(Path(snapshot_dir) / SNAPSHOT_NAME)
    for face_id in plan.without_chip:
        result.deleted_without_chip += int(bool(store.delete_face(face_id).row_ids))

    after = 0
    with tqdm(total=plan.to_do - len(plan.without_chip), desc=f"re-embedding with {target}",
              unit="face", disable=not progress) as bar:
        while rows := store.faces_to_reembed(target, after, batch_size):
            after = rows[-1][0]
            usable = [(row_id, face_id, chip) for row_id, face_id, chip in rows
                      if chip is not None]
            if not usable:
                continue
            chips = np.stack([decode_chip(chip, face_id, chip_side)
                              for _, face_id, chip in usable])
            vectors = _check_vectors(embed(chips), len(usable), dim)
            dim = vectors.shape[1]
            changed = store.set_embeddings(
                [(row_id, vectors[i]) for i, (row_id, _, _) in enumerate(usable)], target
            )
            result.reembedded += changed
            bar.update(len(usable))
            if after_batch is not None:
                after_batch(result.reembedded)
    if hasattr(store, "negatives_to_reembed"):
        result.negatives_reembedded, result.negatives_without_chip = _reembed_extra(
            store.negatives_to_reembed, store.set_negative_embeddings,  # type: ignore[attr-defined]
            embed, target, dim, batch_size)
    if hasattr(store, "unknown_to_reembed"):
        result.unknown_reembedded, result.unknown_without_chip = _reembed_extra(
            store.unknown_to_reembed, store.set_unknown_embeddings,  # type: ignore[attr-defined]
            embed, target, dim, batch_size)
    result.models_after = dict(store.state().model_counts)
    result.seconds = time.perf_counter() - start
    return result


def _reembed_extra(
    rows_of: Callable[[str, int, int], list[tuple[int, str, bytes | None]]],
    write: Callable[[list[tuple[str, np.ndarray]], str], int],
    embed: EmbedFn, target: str, dim: int | None, batch_size: int,
) -> tuple[int, int]:
    """Re-embed negatives or pool faces from their chips, a batch per transaction; (done,
    left without a chip)."""
    after = done = chipless = 0
    while rows := rows_of(target, after, batch_size):
        after = rows[-1][0]
        usable = [(key, c) for _, key, c in rows if c is not None]
        chipless += len(rows) - len(usable)
        if usable:
            chips = np.stack([decode_chip(c, key) for key, c in usable])
            vectors = _check_vectors(embed(chips), len(usable), dim)
            done += write([(key, vectors[i]) for i, (key, _) in enumerate(usable)], target)
    return done, chipless

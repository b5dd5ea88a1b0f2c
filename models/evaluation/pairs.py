"""The LFW ``pairs.txt`` format: folds of matched and mismatched image pairs.

The first line is ``<folds>\\t<pairs per half-fold>`` (``10\\t300`` for View 2). Each fold is
then that many same-person lines ``Name<TAB>i<TAB>j`` followed by as many different-person
lines ``Name1<TAB>i<TAB>Name2<TAB>j``. Image ``i`` of ``Name`` is ``Name/Name_%04d.jpg``.

The parser is strict on purpose: a wrong count or a line in the wrong half silently shifts
every later pair into the wrong fold, and the ten-fold figures would then be meaningless
rather than merely wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Pair", "PairSet", "PairsFormatError", "image_path", "parse_pairs", "read_pairs"]


class PairsFormatError(ValueError):
    """The text is not an LFW pairs file; the message names the offending line."""


def image_path(name: str, index: int) -> str:
    """LFW's relative path of image ``index`` (1-based) of ``name``, with ``/`` separators."""
    return f"{name}/{name}_{index:04d}.jpg"


@dataclass(frozen=True)
class Pair:
    left: str  # relative image path, see image_path()
    right: str
    same: bool
    fold: int  # 0-based


@dataclass(frozen=True)
class PairSet:
    """All pairs of a pairs file, in file order, with their fold numbers."""

    pairs: tuple[Pair, ...]
    n_folds: int
    per_half: int  # same-person pairs per fold (= different-person pairs per fold)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def labels(self) -> np.ndarray:
        """``(P,)`` bool, True for same-person pairs."""
        return np.fromiter((p.same for p in self.pairs), dtype=bool, count=len(self.pairs))

    @property
    def folds(self) -> np.ndarray:
        """``(P,)`` int fold index of each pair."""
        return np.fromiter((p.fold for p in self.pairs), dtype=np.int64, count=len(self.pairs))

    def images(self) -> list[str]:
        """Distinct relative image paths, sorted (each is embedded once however often it occurs)."""
        return sorted({p.left for p in self.pairs} | {p.right for p in self.pairs})

    def limit_folds(self, n: int) -> PairSet:
        """The first ``n`` folds only (a quick run of the same protocol)."""
        if not 1 <= n <= self.n_folds:
            raise ValueError(f"limit must be between 1 and {self.n_folds}, got {n}")
        return PairSet(tuple(p for p in self.pairs if p.fold < n), n, self.per_half)

    def limit_per_fold(self, n: int) -> PairSet:
        """The first ``n`` same-person and first ``n`` different-person pairs of every fold.

        Keeps every fold balanced, so the ten-fold protocol still applies to the subset.
        """
        if not 1 <= n <= self.per_half:
            raise ValueError(f"pairs per fold half must be between 1 and {self.per_half}, got {n}")
        kept = [
            p for k, p in enumerate(self.pairs)
            if k % (2 * self.per_half) % self.per_half < n
        ]
        return PairSet(tuple(kept), self.n_folds, n)


def _index(text: str, lineno: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PairsFormatError(f"line {lineno}: image number {text!r} is not an integer") from None
    if value < 1:
        raise PairsFormatError(f"line {lineno}: image numbers start at 1, got {value}")
    return value


def parse_pairs(text: str) -> PairSet:
    """Parse the text of a pairs file (fields split on any whitespace; blank lines ignored)."""
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise PairsFormatError("empty pairs file")
    lineno, header = lines[0]
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise PairsFormatError(
            f"line {lineno}: expected a header '<folds> <pairs per half-fold>', got {header}"
        )
    n_folds, per_half = int(header[0]), int(header[1])
    if n_folds < 1 or per_half < 1:
        raise PairsFormatError(f"line {lineno}: folds and pairs must be positive, got {header}")
    body = lines[1:]
    expected = n_folds * 2 * per_half
    if len(body) != expected:
        raise PairsFormatError(
            f"header says {n_folds} folds x 2 x {per_half} = {expected} pairs, "
            f"found {len(body)} pair lines"
        )
    pairs: list[Pair] = []
    for k, (lineno, fields) in enumerate(body):
        fold, within = divmod(k, 2 * per_half)
        same = within < per_half
        if same:
            if len(fields) != 3:
                raise PairsFormatError(
                    f"line {lineno}: fold {fold + 1} same-person pair {within + 1} must be "
                    f"'Name i j', got {len(fields)} fields"
                )
            name, i, j = fields
            pair = Pair(image_path(name, _index(i, lineno)), image_path(name, _index(j, lineno)),
                        True, fold)
        else:
            if len(fields) != 4:
                raise PairsFormatError(
                    f"line {lineno}: fold {fold + 1} different-person pair "
                    f"{within - per_half + 1} must be 'Name1 i Name2 j', got {len(fields)} fields"
                )
            name1, i, name2, j = fields
            pair = Pair(image_path(name1, _index(i, lineno)), image_path(name2, _index(j, lineno)),
                        False, fold)
        pairs.append(pair)
    return PairSet(tuple(pairs), n_folds, per_half)


def read_pairs(path: str | Path) -> PairSet:
    return parse_pairs(Path(path).read_text(encoding="utf-8"))

"""A pairs file without the people a model was trained on, for a fair LFW figure.

A model fine-tuned on LFW identities has seen those faces (training) or been selected on them
(validation); every pair that names one of them must leave the benchmark. The result keeps the
View-2 layout the evaluator expects: the same number of folds, each with ``n`` same-person
lines then ``n`` different-person lines, where ``n`` is the smallest number of surviving
pairs of either kind in any fold. Folds stay person-disjoint (dropping pairs cannot break
that), and the first ``n`` survivors of each kind are kept in file order, so the file is a
pure function of the original file and the excluded names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HeldoutPairs", "heldout_pairs", "read_excluded"]


@dataclass
class HeldoutPairs:
    text: str  # the new pairs file
    folds: int
    per_half: int
    kept: int  # pairs in the new file
    dropped: int  # pairs naming an excluded person
    trimmed: int  # surviving pairs left out to keep the halves equal


def read_excluded(path: str | Path) -> set[str]:
    """Identity names from a run's ``excluded_identities.txt`` (one per line, ``#`` comments),
    an export manifest (``data.identities_seen``) or a run directory (its excluded list)."""
    path = Path(path)
    if path.is_dir():
        path = path / "excluded_identities.txt"
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        names = json.loads(text).get("data", {}).get("identities_seen")
        if names is None:
            raise ValueError(f"{path} has no data.identities_seen; is it an export manifest?")
        return set(names)
    return {s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")}


def heldout_pairs(pairs_text: str, excluded: set[str]) -> HeldoutPairs:
    """Drop every pair naming an ``excluded`` person and re-balance the folds (see module)."""
    lines = [line for line in pairs_text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty pairs file")
    header = lines[0].split()
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise ValueError(f"expected a '<folds> <pairs per half-fold>' header, got {lines[0]!r}")
    folds, per_half = int(header[0]), int(header[1])
    body = lines[1:]
    if len(body) != folds * 2 * per_half:
        raise ValueError(f"header promises {folds * 2 * per_half} pairs, found {len(body)}")
    same: list[list[str]] = [[] for _ in range(folds)]
    diff: list[list[str]] = [[] for _ in range(folds)]
    dropped = 0
    for k, line in enumerate(body):
        fold, within = divmod(k, 2 * per_half)
        fields = line.split()
        is_same = within < per_half
        names = [fields[0]] if is_same else [fields[0], fields[2]]
        if any(n in excluded for n in names):
            dropped += 1
            continue
        (same if is_same else diff)[fold].append("\t".join(fields))
    n = min(len(x) for x in same + diff)
    if n == 0:
        raise ValueError("a fold has no pair left of one kind: too many people excluded")
    out = [f"{folds}\t{n}"]
    for fold in range(folds):
        out += same[fold][:n] + diff[fold][:n]
    kept = folds * 2 * n
    return HeldoutPairs(
        text="\n".join(out) + "\n",
        folds=folds,
        per_half=n,
        kept=kept,
        dropped=dropped,
        trimmed=len(body) - dropped - kept,
    )

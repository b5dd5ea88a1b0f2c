"""Pairs files without a training run's people: nothing seen survives, folds stay balanced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.training.heldout_pairs import heldout_pairs, read_excluded
from tests.models.training.cli_helper import cli_main

# 2 folds x 3 same + 3 different.
PAIRS = """2\t3
Ann\t1\t2
Bob\t1\t3
Cat\t2\t4
Ann\t1\tDan\t1
Eve\t1\tFay\t2
Gus\t3\tHal\t1
Ida\t1\t2
Jon\t1\t2
Kim\t1\t2
Lou\t1\tMax\t1
Ned\t1\tOla\t1
Pam\t1\tBob\t2
"""


def test_pairs_naming_an_excluded_person_are_dropped_and_folds_rebalanced() -> None:
    result = heldout_pairs(PAIRS, {"Ann", "Bob"})
    lines = result.text.splitlines()
    # Fold 1 loses 2 same (Ann, Bob) and 1 different (Ann-Dan): 1 same left -> n = 1.
    # Fold 2 loses the Pam-Bob pair; its halves are cut back to the first survivor each.
    assert lines == [
        "2\t1",
        "Cat\t2\t4",
        "Eve\t1\tFay\t2",
        "Ida\t1\t2",
        "Lou\t1\tMax\t1",
    ]
    assert (result.per_half, result.kept, result.dropped, result.trimmed) == (1, 4, 4, 4)
    assert heldout_pairs(PAIRS, set()).text.splitlines()[1:] == PAIRS.splitlines()[1:]


def test_refuses_when_a_fold_loses_every_pair_of_one_kind() -> None:
    with pytest.raises(ValueError, match="no pair left"):
        heldout_pairs(PAIRS, {"Ann", "Bob", "Cat"})
    with pytest.raises(ValueError, match="promises"):
        heldout_pairs("1\t2\nAnn\t1\t2\n", set())


def test_read_excluded_from_list_manifest_or_run_dir(tmp_path: Path) -> None:
    (tmp_path / "excluded_identities.txt").write_text("# seen\nAnn\n\nBob\n")
    assert read_excluded(tmp_path) == {"Ann", "Bob"}
    manifest = tmp_path / "m.safetensors.json"
    manifest.write_text(json.dumps({"data": {"identities_seen": ["Cat"]}}))
    assert read_excluded(manifest) == {"Cat"}


def test_cli_writes_the_heldout_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "excluded_identities.txt").write_text("Ann\nBob\n")
    (tmp_path / "pairs.txt").write_text(PAIRS)
    out = tmp_path / "heldout.txt"
    assert cli_main(["heldout-pairs", str(tmp_path), "--pairs", str(tmp_path / "pairs.txt"),
                     "--out", str(out)]) == 0  # fmt: skip
    assert out.read_text() == heldout_pairs(PAIRS, {"Ann", "Bob"}).text
    assert "4 dropped" in capsys.readouterr().out

"""The LFW pairs parser, on a small file in the real format and on the real View-2 file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.evaluation.pairs import PairsFormatError, image_path, parse_pairs, read_pairs

# Two folds of two same + two different pairs, tab-separated like the official file
# (which ends with a newline; a trailing blank line is tolerated).
SMALL = (
    "2\t2\n"
    "Abel_Pacheco\t1\t4\n"
    "Zico\t2\t3\n"
    "Abdel_Madi_Shabneh\t1\tDean_Barker\t1\n"
    "Abdul_Rahman\t1\tPortia_de_Rossi\t12\n"
    "Akhmed_Zakayev\t1\t3\n"
    "Amber_Tamblyn\t1\t2\n"
    "Zico\t1\tAbel_Pacheco\t2\n"
    "Dean_Barker\t1\tZico\t3\n"
    "\n"
)


def test_small_file_in_the_official_format(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(SMALL, encoding="utf-8")
    pairs = read_pairs(path)
    assert (len(pairs), pairs.n_folds, pairs.per_half) == (8, 2, 2)
    first, third, fourth = pairs.pairs[0], pairs.pairs[2], pairs.pairs[3]
    assert (first.left, first.right, first.same, first.fold) == (
        "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True, 0)
    assert (third.left, third.right, third.same) == (
        "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg", "Dean_Barker/Dean_Barker_0001.jpg",
        False)
    assert fourth.right == "Portia_de_Rossi/Portia_de_Rossi_0012.jpg"
    np.testing.assert_array_equal(pairs.labels, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(pairs.folds, [0, 0, 0, 0, 1, 1, 1, 1])
    # 16 mentions; Zico_0003 and Dean_Barker_0001 occur twice each: 14 distinct images.
    assert len(pairs.images()) == 14
    assert pairs.limit_folds(1).pairs == pairs.pairs[:4]


def test_balanced_subset_keeps_the_first_pairs_of_each_half() -> None:
    """Per fold, pairs 1-2 are same-person and 3-4 different; keeping 1 per half keeps file
    positions 0 and 2 of fold 1 and 4 and 6 of fold 2, still one fold each."""
    pairs = parse_pairs(SMALL)
    sub = pairs.limit_per_fold(1)
    assert sub.pairs == (pairs.pairs[0], pairs.pairs[2], pairs.pairs[4], pairs.pairs[6])
    assert (sub.n_folds, sub.per_half) == (2, 1)
    np.testing.assert_array_equal(sub.labels, [1, 0, 1, 0])
    np.testing.assert_array_equal(sub.folds, [0, 0, 1, 1])
    assert sub.limit_per_fold(1) == sub
    with pytest.raises(ValueError, match="between 1 and 2"):
        pairs.limit_per_fold(3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("ten\t300\n", "header"),
        ("1\t1\nA\t1\t2\n", "found 1 pair lines"),
        ("1\t1\nA\t1\tB\t2\nA\t1\t2\n", "same-person pair 1 must be 'Name i j'"),
        ("1\t1\nA\t1\t2\nA\t1\t2\n", "different-person pair 1 must be"),
        ("1\t1\nA\t1\tx\nA\t1\tB\t2\n", "not an integer"),
        ("1\t1\nA\t0\t2\nA\t1\tB\t2\n", "start at 1"),
    ],
)
def test_malformed_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(PairsFormatError, match=message):
        parse_pairs(text)


def test_image_path() -> None:
    assert image_path("Zico", 3) == "Zico/Zico_0003.jpg"


def test_real_view2_file(shared_data: Path) -> None:
    """10 folds x (300 same + 300 different) = 6000 pairs over 7701 images, all present."""
    root = shared_data / "lfw"
    pairs = read_pairs(root / "pairs.txt")
    assert (pairs.n_folds, pairs.per_half, len(pairs)) == (10, 300, 6000)
    assert np.bincount(pairs.folds).tolist() == [600] * 10
    assert int(pairs.labels.sum()) == 3000
    for fold in range(10):
        in_fold = pairs.labels[pairs.folds == fold]
        assert in_fold[:300].all() and not in_fold[300:].any()
    sub = pairs.limit_folds(2).limit_per_fold(75)
    assert (len(sub), int(sub.labels.sum()), len(sub.images())) == (300, 150, 457)
    assert sub.pairs[75] == pairs.pairs[300]  # fold 1's first different-person pair
    sub = pairs.limit_per_fold(15)  # the end-to-end test's subset
    assert (len(sub), sub.n_folds, len(sub.images())) == (300, 10, 463)
    assert np.bincount(sub.folds).tolist() == [30] * 10
    images = pairs.images()
    assert len(images) == 7701
    missing = [p for p in images if not (root / "lfw-deepfunneled" / p).is_file()]
    assert missing == []

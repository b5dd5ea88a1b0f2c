"""models/cpu_share.py: how many torch threads each inference stage gets."""

from __future__ import annotations

import threading

import numpy as np
import torch

from models.cpu_share import PARALLEL_FACES, PARALLEL_PIXELS, CoreShare


def test_a_small_stage_gets_one_thread_and_a_large_one_alone_gets_every_core() -> None:
    share = CoreShare(cores=4)
    before = torch.get_num_threads()
    with share.photo_stage(640 * 480) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    with share.photo_stage(PARALLEL_PIXELS) as threads:
        assert threads == 4 and torch.get_num_threads() == 4
    assert share.running == 0
    assert torch.get_num_threads() == before  # restored after the stage


def test_a_large_stage_beside_others_gets_its_part() -> None:
    share = CoreShare(cores=4)
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with share.stage():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=other)
    worker.start()
    try:
        assert entered.wait(10)
        with share.photo_stage(4000 * 3000) as threads:
            assert threads == 2 and share.running == 2
    finally:
        release.set()
        worker.join(10)
    assert share.running == 0


def test_the_thread_count_is_set_per_thread() -> None:
    """The premise: a stage on one thread leaves other threads' torch thread counts alone
    (OpenMP's and MKL's are thread-local), so concurrent stages keep their own shares."""
    before = torch.get_num_threads()
    seen: list[int] = []

    def stage() -> None:
        with CoreShare(cores=before).stage():
            seen.append(torch.get_num_threads())

    worker = threading.Thread(target=stage)
    worker.start()
    worker.join(10)
    assert seen == [1]
    assert torch.get_num_threads() == before


def test_embedding_batches_are_large_from_parallel_faces() -> None:
    share = CoreShare(cores=2)
    got = share.embedding(lambda chips: torch.get_num_threads())
    assert got(np.zeros((1, 150, 150, 3), np.uint8)) == 1
    assert got(np.zeros((PARALLEL_FACES, 150, 150, 3), np.uint8)) == 2
    assert share.running == 0

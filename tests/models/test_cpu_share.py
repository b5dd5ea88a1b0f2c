"""models/cpu_share.py: how many torch threads each inference stage gets."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from models.cpu_share import (
    PARALLEL_FACES,
    PARALLEL_PIXELS,
    CoreShare,
    available_cores,
    cpu_quota,
    rebalance,
)
from models.detector import MMODNet


def test_a_small_stage_gets_one_thread_and_a_large_one_alone_gets_every_core() -> None:
    share = CoreShare(cores=4)
    before = torch.get_num_threads()
    with share.photo_stage(640 * 480) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    with share.photo_stage(PARALLEL_PIXELS) as threads:
        assert threads == 4 and torch.get_num_threads() == 4
    assert share.running == 0
    assert torch.get_num_threads() == before  # restored after the stage


@contextmanager
def _stage_beside(share: CoreShare) -> Iterator[None]:
    """Another thread's (small) stage of ``share``, running until the block ends."""
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with share.stage():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=other)
    worker.start()
    try:
        assert entered.wait(10)
        yield
    finally:
        release.set()
        worker.join(10)


def test_a_large_stage_beside_others_gets_its_part() -> None:
    share = CoreShare(cores=4)
    with _stage_beside(share), share.photo_stage(4000 * 3000) as threads:
        assert threads == 2 and share.running == 2
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


def test_stages_are_counted_across_shares_with_one_counter() -> None:
    """Two processes' shares on one ``multiprocessing.Value`` (here two shares in one process)
    see each other's stages: a large photo beside a running stage gets half the cores."""
    counter = get_context("spawn").Value("i", 0)
    server, worker = CoreShare(4, counter=counter), CoreShare(4, counter=counter)
    with server.stage():
        assert worker.running == 1
        with worker.stage(large=True) as threads:
            assert threads == 2 and server.running == 2
    assert counter.value == 0
    with worker.stage(large=True) as threads:
        assert threads == 4


def test_a_photo_alone_in_its_process_runs_mid_sized_photos_on_every_core() -> None:
    """A 640x480 photo alone in its process is large; LFW's 250x250 is not."""
    share = CoreShare(cores=4)
    with share.photo_stage(640 * 480, alone=True) as threads:
        assert threads == 4
    with share.photo_stage(250 * 250, alone=True) as threads:
        assert threads == 1


def test_a_large_stage_gives_cores_back_while_another_runs_and_takes_them_again() -> None:
    """``rebalance`` resizes a running large stage's pool to its share now: halved while a
    second stage runs beside it, whole again after; a small stage and a thread outside any
    stage keep theirs."""
    share = CoreShare(cores=4)
    before = torch.get_num_threads()
    rebalance()
    assert torch.get_num_threads() == before  # outside a stage: untouched
    with share.stage(large=True) as threads:
        assert threads == 4
        with _stage_beside(share):
            rebalance()
            assert torch.get_num_threads() == 2
        rebalance()
        assert torch.get_num_threads() == 4
        with share.stage() as inner:  # a small stage inside: one thread, left alone
            rebalance()
            assert inner == 1 and torch.get_num_threads() == 1
        rebalance()
        assert torch.get_num_threads() == 4  # the inner stage ended: all four again
    assert torch.get_num_threads() == before


def test_the_detector_network_rebalances_between_its_layers() -> None:
    """The detector calls ``rebalance`` between layers: a stage that starts while the
    network runs takes threads from it at the next layer."""
    share = CoreShare(cores=4)
    net = MMODNet().eval()
    seen: list[int] = []
    beside = ExitStack()

    def record(module: torch.nn.Module, args: object) -> None:
        seen.append(torch.get_num_threads())
        if len(seen) == 2:  # a second stage starts during the network's second layer
            beside.enter_context(_stage_beside(share))

    hooks = [m.register_forward_pre_hook(record) for m in net.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        with beside, share.stage(large=True), torch.inference_mode():
            net(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert seen[:2] == [4, 4] and seen[2:] == [2] * (len(seen) - 2)


def test_the_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # docker run --cpus=1.5
    assert cpu_quota(v2) == 1.5
    assert available_cores(v2) == min(2, len(os.sched_getaffinity(0)))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2) is None
    assert available_cores(v2) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path / "v1") == 1.0 and available_cores(tmp_path / "v1") == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path / "v1") is None
    assert cpu_quota(tmp_path / "none") is None

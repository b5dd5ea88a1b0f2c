"""The micro-batcher merges concurrent requests into one embed call and routes results back.

No test depends on timing: batches are closed by size (the wait is far longer than any
test), and the worker is held inside a call with an event while the next requests queue up.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import numpy as np
import pytest

from service.inference.batcher import BatcherClosed, DirectEmbedder, MicroBatcher

NEVER = 60.0  # seconds: a batch in these tests is always closed by size, never by the clock


def chips_for(caller: int, n: int) -> np.ndarray:
    """``n`` tiny fake chips, each marked with its caller and its index."""
    chips = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    chips[:, 0, 0, 0] = caller
    chips[:, 0, 0, 1] = np.arange(n)
    return chips


class RecordingEmbed:
    """A fake ``embed_chips``: the 'embedding' of a chip is its (caller, index) mark."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self.calls.append(len(chips))
        self.entered.set()
        assert self.release.wait(NEVER)
        return chips[:, 0, 0, :2].astype(np.float32)


def expected(caller: int, n: int) -> np.ndarray:
    return np.stack([np.full(n, caller), np.arange(n)], axis=1).astype(np.float32)


def test_concurrent_requests_are_merged_into_one_call_and_routed_back() -> None:
    embed = RecordingEmbed()
    sizes = [1, 2, 3, 4, 5, 1]
    batcher = MicroBatcher(embed, max_batch_size=sum(sizes), max_wait_s=NEVER)
    barrier = threading.Barrier(len(sizes))
    results: dict[int, np.ndarray] = {}

    def client(caller: int) -> None:
        barrier.wait()
        results[caller] = batcher.submit(chips_for(caller, sizes[caller])).result(NEVER)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER)
    batcher.close()

    assert embed.calls == [sum(sizes)]  # one forward pass for every request
    for caller, n in enumerate(sizes):
        np.testing.assert_array_equal(results[caller], expected(caller, n))


def test_requests_queued_during_a_pass_form_the_next_batches_without_splitting() -> None:
    embed = RecordingEmbed(hold_first=True)
    batcher = MicroBatcher(embed, max_batch_size=4, max_wait_s=NEVER)
    first = batcher.submit(chips_for(0, 4))  # fills a batch: runs at once, held inside
    assert embed.entered.wait(NEVER)
    later = [(1, 3), (2, 3), (3, 1)]
    queued = {caller: batcher.submit(chips_for(caller, n)) for caller, n in later}
    embed.release.set()

    np.testing.assert_array_equal(first.result(NEVER), expected(0, 4))
    for caller, n in later:
        np.testing.assert_array_equal(queued[caller].result(NEVER), expected(caller, n))
    batcher.close()
    # 3 + 3 > 4, so the second request waits for the next pass, where the 1-chip one joins it.
    assert embed.calls == [4, 3, 4]


def test_a_request_larger_than_the_batch_runs_alone_and_whole() -> None:
    embed = RecordingEmbed()
    batcher = MicroBatcher(embed, max_batch_size=4, max_wait_s=NEVER)
    out = batcher.submit(chips_for(7, 10)).result(NEVER)
    batcher.close()
    assert embed.calls == [10]
    np.testing.assert_array_equal(out, expected(7, 10))


def test_an_error_reaches_every_request_of_its_batch_and_the_batcher_goes_on() -> None:
    calls: list[int] = []

    def failing_once(chips: np.ndarray) -> np.ndarray:
        calls.append(len(chips))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return chips[:, 0, 0, :2].astype(np.float32)

    batcher = MicroBatcher(failing_once, max_batch_size=3, max_wait_s=NEVER)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def client(caller: int) -> None:
        barrier.wait()
        try:
            batcher.submit(chips_for(caller, 1)).result(NEVER)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER)
    assert len(errors) == 3 and all("device lost" in str(e) for e in errors)
    later = batcher.submit(chips_for(5, 3)).result(NEVER)
    batcher.close()
    np.testing.assert_array_equal(later, expected(5, 3))
    assert calls == [3, 3]


def test_a_cancelled_request_is_not_computed() -> None:
    embed = RecordingEmbed(hold_first=True)
    batcher = MicroBatcher(embed, max_batch_size=2, max_wait_s=NEVER)
    batcher.submit(chips_for(0, 2))
    assert embed.entered.wait(NEVER)
    gone = batcher.submit(chips_for(1, 1))
    kept = batcher.submit(chips_for(2, 1))
    assert gone.cancel()  # the client went away while it was queued
    embed.release.set()
    np.testing.assert_array_equal(kept.result(NEVER), expected(2, 1))
    batcher.close()
    assert embed.calls == [2, 1]
    with pytest.raises(CancelledError):
        gone.result()


def test_close_answers_what_is_queued_then_refuses_new_work() -> None:
    embed = RecordingEmbed(hold_first=True)
    batcher = MicroBatcher(embed, max_batch_size=1, max_wait_s=NEVER)
    futures = [batcher.submit(chips_for(0, 1))]
    assert embed.entered.wait(NEVER)
    futures += [batcher.submit(chips_for(i, 1)) for i in (1, 2)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    embed.release.set()
    closer.join(NEVER)
    for caller, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(NEVER), expected(caller, 1))
    with pytest.raises(BatcherClosed):
        batcher.submit(chips_for(9, 1))


def test_async_callers_are_merged_and_get_their_own_rows() -> None:
    embed = RecordingEmbed()
    sizes = [2, 1, 3]
    batcher = MicroBatcher(embed, max_batch_size=sum(sizes), max_wait_s=NEVER)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(
            *(batcher.embed(chips_for(c, n)) for c, n in enumerate(sizes))
        )

    outs = asyncio.run(main())
    batcher.close()
    assert embed.calls == [6]
    for caller, (n, out) in enumerate(zip(sizes, outs, strict=True)):
        np.testing.assert_array_equal(out, expected(caller, n))


def test_observer_sees_faces_and_requests_per_pass() -> None:
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(
        RecordingEmbed(), max_batch_size=3, max_wait_s=NEVER,
        on_batch=lambda faces, requests: seen.append((faces, requests)),
    )
    barrier = threading.Barrier(2)

    def client(caller: int, n: int) -> None:
        barrier.wait()
        batcher.submit(chips_for(caller, n)).result(NEVER)

    threads = [threading.Thread(target=client, args=a) for a in [(0, 1), (1, 2)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER)
    batcher.close()
    assert seen == [(3, 2)]


def test_no_chips_needs_no_call() -> None:
    embed = RecordingEmbed()
    batcher = MicroBatcher(embed, max_batch_size=4, max_wait_s=NEVER)
    out = batcher.submit(np.zeros((0, 2, 2, 3), dtype=np.uint8)).result(NEVER)
    batcher.close()
    assert out.shape == (0, 128) and embed.calls == []


def test_direct_embedder_runs_one_call_per_request() -> None:
    embed = RecordingEmbed()
    with ThreadPoolExecutor(4) as pool:
        direct = DirectEmbedder(embed, pool)
        futures = [direct.submit(chips_for(c, n)) for c, n in [(0, 1), (1, 2), (2, 3)]]
        outs = [f.result(NEVER) for f in futures]
    assert sorted(embed.calls) == [1, 2, 3]
    for caller, (n, out) in enumerate(zip([1, 2, 3], outs, strict=True)):
        np.testing.assert_array_equal(out, expected(caller, n))
    direct.close()
    with pytest.raises(BatcherClosed):
        direct.submit(chips_for(0, 1))


def test_a_pass_is_observed_before_its_callers_are_answered() -> None:
    """Metrics first: a client that scrapes /metrics right after its response sees its faces."""
    entered, release = threading.Event(), threading.Event()

    def observe(faces: int, requests: int) -> None:
        entered.set()
        assert release.wait(NEVER)

    batcher = MicroBatcher(RecordingEmbed(), max_batch_size=1, max_wait_s=NEVER,
                           on_batch=observe)
    future = batcher.submit(chips_for(0, 1))
    assert entered.wait(NEVER)
    assert not future.done()  # the observer is still running: no answer yet
    release.set()
    np.testing.assert_array_equal(future.result(NEVER), expected(0, 1))
    batcher.close()


def test_a_batch_waits_only_while_chips_are_on_their_way() -> None:
    """``expecting`` says whether photos are being detected: while they are, a batch waits for
    their chips; once none are, a lone request runs at once (not after ``max_wait_s``)."""
    embed = RecordingEmbed()
    batcher = MicroBatcher(embed, max_batch_size=2, max_wait_s=NEVER)
    on_their_way = [True]
    batcher.expecting = lambda: on_their_way[0]
    first = batcher.submit(chips_for(1, 1))
    second = batcher.submit(chips_for(2, 1))
    np.testing.assert_array_equal(first.result(10), expected(1, 1))
    np.testing.assert_array_equal(second.result(10), expected(2, 1))
    assert embed.calls == [2]  # the first waited for the second
    on_their_way[0] = False
    alone = batcher.submit(chips_for(3, 1))
    np.testing.assert_array_equal(alone.result(10), expected(3, 1))  # NEVER would time out
    assert embed.calls == [2, 1]
    batcher.close()

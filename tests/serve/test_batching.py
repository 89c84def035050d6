"""The replica's adaptive batcher, on asyncio alone."""

import asyncio
import time

from radlab.serve.batching import AdaptiveBatcher


def batcher(max_size=8, idle_s=0.02, max_wait_s=0.5, fail_on=None, run_s=0.0):
    sizes = []

    async def run(items):
        sizes.append(len(items))
        await asyncio.sleep(run_s)  # generation's time
        if fail_on is not None and fail_on in items:
            raise RuntimeError(f"item {fail_on}")
        return [item * 10 for item in items]
    return AdaptiveBatcher(run, max_size, idle_s, max_wait_s), sizes


async def arrivals(b: AdaptiveBatcher, count: int, gap_s: float) -> list:
    async def one(i):
        await asyncio.sleep(i * gap_s)
        return await b.submit(i)
    return await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)


def test_a_lone_request_waits_only_the_idle_gap():
    b, sizes = batcher(idle_s=0.02, max_wait_s=2.0)
    started = time.perf_counter()
    assert asyncio.run(arrivals(b, 1, 0)) == [0]
    assert time.perf_counter() - started < 0.5 and sizes == [1]


def test_after_a_lone_request_the_next_goes_at_once_and_a_burst_batches_again():
    b, sizes = batcher(max_size=8, idle_s=0.3, max_wait_s=2.0, run_s=0.05)

    async def scenario():
        timings = []
        for i in range(3):  # a client sending one request after another
            started = time.perf_counter()
            await b.submit(i)
            timings.append(time.perf_counter() - started)
        burst = await arrivals(b, 9, 0.002)  # the first goes alone, the rest arrive while it runs
        return timings, burst
    timings, burst = asyncio.run(scenario())
    assert timings[0] >= 0.3  # the first request waits the idle gap: nothing says the load is light yet
    assert max(timings[1:]) < 0.2  # after a batch of one, the next goes at once
    assert burst == [i * 10 for i in range(9)] and sizes[:3] == [1, 1, 1] and sizes[3:] == [1, 8]


def test_requests_arriving_closer_than_the_gap_fill_the_batch():
    b, sizes = batcher(max_size=8, idle_s=0.05)
    assert asyncio.run(arrivals(b, 16, 0.002)) == [i * 10 for i in range(16)]
    assert sizes == [8, 8]


def test_the_window_has_a_ceiling():
    b, sizes = batcher(max_size=100, idle_s=0.05, max_wait_s=0.06)
    asyncio.run(arrivals(b, 12, 0.01))  # a steady trickle, never idle for 50 ms
    assert len(sizes) >= 2 and sum(sizes) == 12 and max(sizes) < 12


def test_a_failing_batch_fails_its_requests_only():
    b, _ = batcher(max_size=2, idle_s=0.05, fail_on=1)

    async def scenario():
        first = await arrivals(b, 2, 0)
        second = await b.submit(5)
        return first, second
    first, second = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in first) and second == 50


def test_no_idle_gap_sends_what_has_arrived():
    b, sizes = batcher(idle_s=0.0)
    assert asyncio.run(arrivals(b, 3, 0.05)) == [0, 10, 20] and sizes == [1, 1, 1]

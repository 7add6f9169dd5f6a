"""The serve micro-batcher on its own: grouping by key, the bounded wait, failure isolation."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bonsynth.serve.batcher import MicroBatcher


def run(coro):
    return asyncio.run(coro)


def make(calls: list[list], *, wait: float, max_items: int = 8, others=None, fail_on=None) -> MicroBatcher:
    def fn(items: list) -> list:
        calls.append(list(items))
        if fail_on is not None and fail_on in items:
            raise ValueError(f"bad item {fail_on}")
        return [x * 10 for x in items]

    return MicroBatcher(fn, ThreadPoolExecutor(1), max_wait_s=wait, max_items=max_items, others=others)


def test_items_arriving_together_share_a_batch_per_key():
    calls: list[list] = []

    async def main():
        b = make(calls, wait=0.2)
        out = await asyncio.gather(*[b.submit(i, key=i % 2) for i in range(6)])
        await b.aclose()
        return out

    assert run(main()) == [0, 10, 20, 30, 40, 50]
    assert sorted(map(sorted, calls)) == [[0, 2, 4], [1, 3, 5]]  # one batch per key, never mixed


def test_max_items_caps_a_batch():
    calls: list[list] = []

    async def main():
        b = make(calls, wait=0.2, max_items=2)
        await asyncio.gather(*[b.submit(i) for i in range(5)])
        await b.aclose()

    run(main())
    assert max(len(c) for c in calls) == 2 and sum(len(c) for c in calls) == 5


def test_a_lone_item_is_not_held_back_when_nothing_else_is_coming():
    calls: list[list] = []

    async def main():
        b = make(calls, wait=2.0, others=lambda: 0)
        t = time.perf_counter()
        assert await b.submit(7) == 70
        took = time.perf_counter() - t
        await b.aclose()
        return took

    assert run(main()) < 1.0  # not the 2 s wait


def test_the_wait_is_bounded_from_the_first_arrival():
    calls: list[list] = []

    async def main():
        b = make(calls, wait=0.1, others=lambda: 1)  # says more may come, but nothing does
        t = time.perf_counter()
        await b.submit(1)
        took = time.perf_counter() - t
        await b.aclose()
        return took

    took = run(main())
    assert 0.09 <= took < 1.0


def test_one_failing_item_fails_only_itself():
    calls: list[list] = []

    async def main():
        b = make(calls, wait=0.2, fail_on=3)
        out = await asyncio.gather(*[b.submit(i) for i in range(5)], return_exceptions=True)
        await b.aclose()
        return out

    out = run(main())
    assert out[:3] == [0, 10, 20] and out[4] == 40
    assert isinstance(out[3], ValueError)
    assert calls[0] == [0, 1, 2, 3, 4] and [3] in calls[1:]  # batch failed, then each item alone


@pytest.mark.parametrize("workers", [1, 3])
def test_no_item_is_lost_under_load(workers):
    async def main():
        def fn(items):
            time.sleep(0.002)
            return [x + 1 for x in items]

        b = MicroBatcher(fn, ThreadPoolExecutor(workers), max_wait_s=0.001, max_items=4, workers=workers)
        out = await asyncio.gather(*[b.submit(i, key=i % 3) for i in range(200)])
        await b.aclose()
        return out

    assert run(main()) == [i + 1 for i in range(200)]

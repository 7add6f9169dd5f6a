"""A micro-batcher: requests that arrive together are run as one batch on a worker thread.

`submit(item, key)` queues an item and waits for its result. A dispatcher task takes the oldest item and
waits up to `max_wait_s` *from that item's arrival* for more items with the same key (at most `max_items`),
then runs `fn(items)` on the executor, one batch per free worker. It waits only while `others()` says more
work is in the server that could still join (requests admitted but not queued here): a lone request is
never held back for company that does not exist. While every worker is busy the queue
simply grows, so under load batches fill up without waiting at all; with `max_wait_s = 0` and
`max_items = 1` every item runs alone (no cross-request batching).

A batch that raises is split: each of its items is run alone, so one bad request fails only itself. The
queue is bounded by the caller's admission control (`BestOfNService`), not here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Pending:
    item: Any
    key: Hashable
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], executor: Executor, *, max_wait_s: float,
                 max_items: int, workers: int = 1, name: str = "batch",
                 others: Callable[[], int] | None = None) -> None:
        self.fn = fn
        self.executor = executor
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.max_items = max(1, int(max_items))
        self.workers = max(1, int(workers))
        self.name = name
        self.others = others
        self._pending: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> None:
        """Started lazily in the loop that serves (the app may be built outside any loop, or mounted)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop or self._task.done():
            self._loop = loop
            self._wake = asyncio.Event()
            self._slots = asyncio.Semaphore(self.workers)
            self._task = loop.create_task(self._dispatch(), name=f"bonsynth-{self.name}-dispatcher")

    async def submit(self, item: Any, key: Hashable = None) -> Any:
        self._start()
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, key, fut))
        assert self._wake is not None
        self._wake.set()
        return await fut

    def _same_key(self, key: Hashable) -> int:
        return sum(1 for p in self._pending if p.key == key and not p.future.done())

    def queued(self) -> int:
        """Items waiting here, not yet in a running batch."""
        return sum(1 for p in self._pending if not p.future.done())

    def _more_may_come(self) -> bool:
        return self.others is None or self.others() > 0

    def _take(self) -> list[_Pending]:
        """Up to `max_items` live items with the oldest item's key, oldest first; the rest stay queued."""
        while self._pending and self._pending[0].future.done():  # cancelled (client went away)
            self._pending.popleft()
        if not self._pending:
            return []
        key = self._pending[0].key
        batch, rest = [], deque()
        while self._pending:
            p = self._pending.popleft()
            if p.future.done():
                continue
            if p.key == key and len(batch) < self.max_items:
                batch.append(p)
            else:
                rest.append(p)
        self._pending = rest
        return batch

    async def _dispatch(self) -> None:
        assert self._wake is not None and self._slots is not None
        while True:
            await self._slots.acquire()
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            first = self._pending[0]
            while self._same_key(first.key) < self.max_items and self._more_may_come():
                remaining = first.arrived + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        assert self._slots is not None
        try:
            try:
                results = await loop.run_in_executor(self.executor, self._call, [p.item for p in batch])
            except Exception as e:
                if len(batch) == 1:
                    _set_exception(batch[0].future, e)
                    return
                # one bad item must not fail its neighbours: run each alone
                for p in batch:
                    try:
                        (res,) = await loop.run_in_executor(self.executor, self._call, [p.item])
                    except Exception as e1:
                        _set_exception(p.future, e1)
                    else:
                        _set_result(p.future, res)
                return
            for p, res in zip(batch, results, strict=True):
                _set_result(p.future, res)
        finally:
            self._slots.release()

    def _call(self, items: list[Any]) -> list[Any]:
        out = list(self.fn(items))
        if len(out) != len(items):
            raise RuntimeError(f"{self.name}: {len(out)} results for {len(items)} items")
        return out

    async def aclose(self) -> None:
        """Finish the batches already running; fail what is still queued (the server is going away)."""
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        while self._pending:
            _set_exception(self._pending.popleft().future, RuntimeError("the server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, RuntimeError):
                pass
            self._task = None


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)

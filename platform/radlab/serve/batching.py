"""Adaptive request batching for a replica.

A batch goes when it is full, when no request has arrived for `idle_s`, or `max_wait_s` after its
first request, whichever comes first: under load the batch keeps filling as requests arrive. After
a batch of one (light load: nothing came within `idle_s` of the last request) the next request goes
at once, as a lone client's would otherwise wait `idle_s` every time for company that does not
come; the first request of a burst after such a lull goes alone, and the rest batch behind it.
Ray Serve's `@serve.batch` waits a fixed window from the first request instead: a short window
closes before the requests still being read arrive (batches of a third of their size at
concurrency 32), a long one delays every lone request by all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class AdaptiveBatcher(Generic[Item, Result]):
    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]], max_size: int, idle_s: float,
                 max_wait_s: float, on_batch: Callable[[int], None] | None = None):
        self.run, self.max_size, self.idle_s, self.max_wait_s = run, max_size, idle_s, max_wait_s
        self.on_batch = on_batch
        self.last_size = 0  # the size of the batch before; 0: none yet
        self.queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self.collector: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        if self.collector is None or self.collector.done():  # started in the replica's own event loop
            self.queue = self.queue or asyncio.Queue()
            self.collector = asyncio.get_running_loop().create_task(self._collect())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        batch = [await self.queue.get()]
        idle_s = 0.0 if self.last_size == 1 else self.idle_s
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            if not self.queue.empty():  # what has arrived joins without waiting
                batch.append(self.queue.get_nowait())
                continue
            wait = min(idle_s, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), wait))
            except TimeoutError:
                break
        self.last_size = len(batch)
        return batch

    async def _collect(self) -> None:
        while True:
            batch = await self._next_batch()
            waiting = [(item, future) for item, future in batch if not future.cancelled()]  # a client gone
            if not waiting:
                continue
            if self.on_batch is not None:
                self.on_batch(len(waiting))
            try:
                results = await self.run([item for item, _ in waiting])
            except Exception as err:  # every request of the batch gets the error; the next batch runs
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(waiting, results):
                if not future.done():
                    future.set_result(result)

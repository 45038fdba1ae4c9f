"""Dynamic batching: concurrent requests of the same shape run as one ONNX Runtime call.

Requests wait in an asyncio queue. One worker task lets the event loop turn once (so requests already read off
their sockets get queued), takes the oldest request and adds every queued request with the same per-row shapes
and dtypes, oldest first, while the rows fit in `max_batch`; it can also wait up to `window_s` for more when the
batch is not full (default 0: a fixed wait costs every lone request its full length, 2 ms cost ~2.3 ms here).
It concatenates along axis 0, runs the model in one worker thread (ORT releases the GIL, so the event loop keeps
reading and parsing requests meanwhile) and splits the outputs back by rows. Requests of another shape wait for a
later batch, in order. While one batch runs the next accumulates, so under load batches grow on their own.

A request of more than `max_batch` rows (with `chunk=True`, for models whose rows are independent) is queued one
chunk of `max_batch` rows at a time, the next chunk only once the previous one ran: requests that arrive meanwhile
queue between its chunks (a 1-row request waits for one chunk, not for 1,000 rows), and ONNX Runtime never holds
more than one batch's working memory (one 19,000-row run took the server from 0.1 to 3.5 GB, and kept it).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Feeds = dict[str, np.ndarray]


class ServerStopping(Exception):
    """The server shut down before the request ran."""


@dataclass
class _Item:
    feeds: Feeds
    future: asyncio.Future
    rows: int
    first: bool = True  # the first chunk of its request (what the request count counts)
    key: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(self.feeds.items()))


@dataclass
class BatchStats:
    requests: int = 0
    runs: int = 0
    largest: int = 0  # most rows in one run

    def to_dict(self) -> dict:
        mean = self.requests / self.runs if self.runs else 0.0
        return {"requests": self.requests, "runs": self.runs, "largest_batch": self.largest,
                "mean_requests_per_run": round(mean, 2)}


class DynamicBatcher:
    def __init__(self, run: Callable[[Feeds], Feeds], *, max_batch: int = 8, window_s: float = 0.0,
                 chunk: bool = True) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run = run
        self.max_batch = max_batch
        self.chunk = chunk
        self.window_s = max(0.0, window_s)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._waiting: collections.deque[_Item] = collections.deque()
        self._inflight: list[_Item] = []
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zoo-serve-ort")
        self._task = asyncio.create_task(self._loop(), name="zoo-serve-batcher")

    async def stop(self) -> None:
        """Stop taking work, fail whatever still waits with ServerStopping, and let a running batch finish."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        pending = [*self._inflight, *self._waiting]
        self._waiting.clear()
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for item in pending:
            if not item.future.done():
                item.future.set_exception(ServerStopping("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def infer(self, feeds: Feeds, rows: int) -> Feeds:
        """Run one request of `rows` rows (its leading dim); returns its own outputs."""
        if not self.chunk or rows <= self.max_batch:
            return await self._submit(feeds, rows, first=True)
        parts = []
        for start in range(0, rows, self.max_batch):
            stop = min(start + self.max_batch, rows)
            part = {name: value[start:stop] for name, value in feeds.items()}
            parts.append(await self._submit(part, stop - start, first=not start))
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    async def _submit(self, feeds: Feeds, rows: int, *, first: bool) -> Feeds:
        if not self.running or self._queue is None:
            raise ServerStopping("the server is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(feeds, future, rows, first))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            if not self._waiting:
                self._waiting.append(await self._queue.get())
            await asyncio.sleep(0)  # one event-loop turn: handlers whose requests are already read enqueue now
            self._drain()
            batch = self._take_batch()
            rows = sum(item.rows for item in batch)
            if rows < self.max_batch and self.window_s > 0:
                deadline = loop.time() + self.window_s
                while rows < self.max_batch and (left := deadline - loop.time()) > 0:
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                    if item.key == batch[0].key and rows + item.rows <= self.max_batch:
                        batch.append(item)
                        rows += item.rows
                    else:
                        self._waiting.append(item)
            batch = [item for item in batch if not item.future.done()]  # a client that went away
            if batch:
                self._inflight = batch
                try:
                    await self._execute(batch)
                finally:
                    self._inflight = []

    def _drain(self) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            self._waiting.append(self._queue.get_nowait())

    def _take_batch(self) -> list[_Item]:
        """The oldest waiting request plus, in order, each later one of the same key that still fits."""
        first = self._waiting.popleft()
        batch, rows, keep = [first], first.rows, collections.deque()
        while self._waiting:
            item = self._waiting.popleft()
            if item.key == first.key and rows + item.rows <= self.max_batch:
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
        self._waiting = keep
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(item.rows for item in batch)
        self.stats.requests += sum(item.first for item in batch)
        self.stats.runs += 1
        self.stats.largest = max(self.stats.largest, rows)
        if len(batch) == 1:
            await self._execute_alone(batch[0])
            return
        feeds = {name: np.concatenate([item.feeds[name] for item in batch]) for name in batch[0].feeds}
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, feeds)
            parts = _split(outputs, [item.rows for item in batch])
        except Exception:  # noqa: BLE001 - retried one by one below, so the error lands on its own request
            self.stats.runs += len(batch) - 1
            for item in batch:
                await self._execute_alone(item)
            return
        for item, part in zip(batch, parts):
            if not item.future.done():
                item.future.set_result(part)

    async def _execute_alone(self, item: _Item) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._run, item.feeds)
        except Exception as e:  # noqa: BLE001 - the request's own failure, answered to it
            if not item.future.done():
                item.future.set_exception(e)
            return
        if not item.future.done():
            item.future.set_result(result)


def _split(outputs: Feeds, rows: list[int]) -> list[Feeds]:
    total = sum(rows)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise ValueError(f"output {name!r} has shape {value.shape}, not {total} rows: cannot split a batch")
    bounds = np.cumsum([0, *rows])
    return [{name: value[start:stop] for name, value in outputs.items()}
            for start, stop in zip(bounds[:-1], bounds[1:])]

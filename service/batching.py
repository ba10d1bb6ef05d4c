"""Server-side dynamic batching: images from concurrent requests run as one model call. No FastAPI here.

As Ray Serve's batcher: a future per image, one consumer task, a size cap and a wait cap measured from the first
queued image, results set only on futures still waiting, a failed batch fails only its own images, and the loop
keeps running. The wait cap is only spent while more images are known to be on their way (requests still being
decoded), so a lone request is never held back for company that is not coming.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import BatcherStopped, InferenceFailed, QueueFull, QueueTimeout, ServiceError, ShuttingDown

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]
"""A batch of images (N, ...) -> one result row per image (N, ...)."""


class BatchObserver(Protocol):
    """Receives what the batcher does, e.g. to export metrics."""

    def observe_batch(self, size: int, queue_waits: list[float], inference_s: float) -> None: ...
    def observe_queue_depth(self, depth: int) -> None: ...
    def observe_failure(self) -> None: ...


class _NoObserver:
    def observe_batch(self, size: int, queue_waits: list[float], inference_s: float) -> None:
        pass

    def observe_queue_depth(self, depth: int) -> None:
        pass

    def observe_failure(self) -> None:
        pass


@dataclass
class RequestTiming:
    """Where one request's time went: its longest queue wait and the model time of the batches it was in."""

    queue_wait_s: float = 0.0
    inference_s: float = 0.0


@dataclass(eq=False)
class _Item:
    request: int
    image: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued_at: float
    deadline: float | None
    timing: RequestTiming


@dataclass
class BatchStats:
    """What the last batches looked like; the metrics layer reads it."""

    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    expired_images: int = 0
    cancelled_images: int = 0


class Batcher:
    """Queues single images, runs them in batches of up to `max_batch_size` on one worker thread.

    With `merge_requests` off, a batch never mixes requests: each request runs alone (split into batches of at
    most `max_batch_size`), which is the no-batching baseline.
    """

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        queue_capacity: int,
        queue_timeout_ms: float | None = None,
        merge_requests: bool = True,
        retry_after_s: int = 1,
        observer: BatchObserver | None = None,
        on_failure: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        if max_batch_size < 1 or queue_capacity < 1 or max_delay_ms < 0:
            raise ValueError("max_batch_size and queue_capacity must be >= 1 and max_delay_ms >= 0")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.queue_capacity = queue_capacity
        self._max_delay = max_delay_ms / 1000
        self._queue_timeout = queue_timeout_ms / 1000 if queue_timeout_ms else None
        self._retry_after_s = retry_after_s
        self.merge_requests = merge_requests
        self._observer: BatchObserver = observer or _NoObserver()
        self._on_failure = on_failure
        self._requests = 0
        self._queue: deque[_Item] = deque()
        self._changed = asyncio.Event()
        self._incoming = 0
        self._accepting = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.stats = BatchStats()

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch (a cancelled request's images leave the queue at once)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """True while the consumer task runs: false before start, after stop, and if it ever failed."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the consumer task on the running event loop."""
        self._accepting = True
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The consumer task ended: expected after `stop`; otherwise a fault, and nothing queued may hang."""
        if self._stopping:
            return
        self._accepting = False
        error: BaseException = task.exception() if not task.cancelled() else asyncio.CancelledError()  # type: ignore[assignment]
        error = error or RuntimeError("the batcher's loop returned")
        log.critical("event=batcher_died error=%r queued=%d", error, len(self._queue))
        self._fail_queued(BatcherStopped("the server's inference loop stopped; retry on another replica"))
        self._on_failure(error)

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new images, answer every queued one, then stop; what is left after `timeout` fails with 503."""
        self._accepting = False
        self._stopping = True
        self._changed.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                self._fail_queued(ShuttingDown("the server stopped before this image was processed"))
        # A model call still running after the timeout finishes on its own; the event loop does not wait for it.
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info(
            "event=batcher_stopped batches=%d images=%d failed_batches=%d expired_images=%d cancelled_images=%d",
            self.stats.batches, self.stats.images, self.stats.failed_batches, self.stats.expired_images,
            self.stats.cancelled_images,
        )  # fmt: skip

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Mark a request whose images are being decoded: the batcher may wait (up to max_delay) for them."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            self._changed.set()

    def check_capacity(self, count: int) -> None:
        """Raise QueueFull (503) at once if `count` more images would overflow the queue."""
        if not self._accepting:
            if self._task is not None and not self._stopping:
                raise BatcherStopped("the server's inference loop stopped; retry on another replica")
            raise ShuttingDown("the server is shutting down and accepts no new requests")
        if len(self._queue) + count > self.queue_capacity:
            raise QueueFull(
                f"the queue holds {len(self._queue)} of {self.queue_capacity} images; "
                f"{count} more do not fit, retry later",
                retry_after_s=self._retry_after_s,
            )

    async def submit(self, images: np.ndarray, timing: RequestTiming | None = None) -> np.ndarray:
        """Queue each image of `images`, wait for all of them, return their results in order.

        `timing`, if given, is filled in with where the request's time went."""
        self.check_capacity(len(images))
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + self._queue_timeout if self._queue_timeout else None
        self._requests += 1
        timing = timing or RequestTiming()
        items = [_Item(self._requests, image, loop.create_future(), now, deadline, timing) for image in images]
        self._queue.extend(items)
        self._queue_changed()
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            # The request ended (timeout, client gone): its images leave the queue now, so they stop counting
            # against the capacity and the queue depth at once.
            self._drop_requests({items[0].request})
            raise
        return np.stack(results)

    def _queue_changed(self) -> None:
        self._observe("observe_queue_depth", len(self._queue))
        self._changed.set()

    def _observe(self, event: str, *args: object) -> None:
        """Tell the observer; its faults (a metrics write failing) are logged, never passed on to requests."""
        try:
            getattr(self._observer, event)(*args)
        except Exception as error:
            log.error("event=observer_failed call=%s error=%r", event, error)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if not self._accepting:
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            batch: list[_Item] = []
            try:
                await self._wait_for_more()
                batch = self._take_batch()
                if batch:
                    await self._execute(batch)
            except Exception as error:  # a fault of our own bookkeeping: fail this batch, keep serving
                log.error("event=batcher_fault size=%d error=%r", len(batch), error)
                self._fail_requests(batch, InferenceFailed(f"the batch could not be run: {error!r}"))
            except BaseException:  # the loop is ending (stop, or worse): nobody may wait for this batch
                _fail(batch, BatcherStopped("the server's inference loop stopped; retry on another replica"))
                raise

    async def _wait_for_more(self) -> None:
        """Wait while the batch is not full, images are still being decoded, and the first image's wait is short."""
        deadline = self._queue[0].enqueued_at + self._max_delay
        if not self.merge_requests:
            return
        while len(self._queue) < self.max_batch_size and self._incoming > 0 and self._accepting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # cancelled: its request is gone
                continue
            if not self.merge_requests and batch and item.request != batch[0].request:
                self._queue.appendleft(item)  # batching off: each request runs alone
                break
            if item.deadline is not None and now > item.deadline:
                self.stats.expired_images += 1
                waited_ms = (now - item.enqueued_at) * 1000
                self._fail_requests([item], QueueTimeout(f"the image waited {waited_ms:.0f} ms in the queue"))
                continue
            batch.append(item)
        self._observe("observe_queue_depth", len(self._queue))
        return [item for item in batch if not item.future.done()]  # a sibling may have failed meanwhile

    async def _execute(self, batch: list[_Item]) -> None:
        images = np.stack([item.image for item in batch])
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        waits = [started - item.enqueued_at for item in batch]
        try:
            results = await loop.run_in_executor(self._executor, self._predict, images)
            if len(results) != len(batch):
                raise InferenceFailed(f"the model returned {len(results)} results for {len(batch)} images")
        except asyncio.CancelledError:  # stop() gave up waiting: answer rather than leave requests hanging
            _fail(batch, ShuttingDown("the server stopped while this image was being processed"))
            raise
        except Exception as error:  # any fault of the model fails this batch only
            self.stats.failed_batches += 1
            self._observe("observe_failure")
            failure = error if isinstance(error, ServiceError) else InferenceFailed(f"inference failed: {error}")
            log.error("event=batch_failed size=%d error=%s", len(batch), failure)
            self._fail_requests(batch, failure)
            return
        elapsed = time.monotonic() - started
        self.stats.batches += 1
        self.stats.images += len(batch)
        self._observe("observe_batch", len(batch), waits, elapsed)
        for timing in {id(item.timing): item.timing for item in batch}.values():
            timing.inference_s += elapsed
        for item, wait in zip(batch, waits, strict=True):
            item.timing.queue_wait_s = max(item.timing.queue_wait_s, wait)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _fail_requests(self, items: list[_Item], error: Exception) -> None:
        """Fail `items`; their requests have failed as a whole, so their other images leave the queue at once."""
        _fail(items, error)
        self._drop_requests({item.request for item in items})

    def _drop_requests(self, requests: set[int]) -> None:
        """Cancel the queued images of `requests` and take them out of the queue."""
        kept: deque[_Item] = deque()
        for item in self._queue:
            if item.request not in requests:
                kept.append(item)
            else:
                item.future.cancel()  # a no-op where gather already cancelled it
                self.stats.cancelled_images += 1
        if len(kept) != len(self._queue):
            self._queue = kept
            self._queue_changed()

    def _fail_queued(self, error: ServiceError) -> None:
        _fail(self._queue, error)
        self._queue.clear()
        self._observe("observe_queue_depth", 0)


def _fail(items: Iterable[_Item], error: Exception) -> None:
    """Set `error` on every item still waiting."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)

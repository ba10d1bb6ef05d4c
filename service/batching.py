"""Server-side dynamic batching: images from concurrent requests run as one model call. No FastAPI here.

As Ray Serve's batcher: one consumer task, a size cap and a wait cap measured from the first queued image, results
set only on requests still waiting, a failed batch fails only its own requests, and the loop keeps running. Each
request has one future for all its images, so a request costs no task of its own. The wait cap is only spent
while more images are known to be on their way (requests still being decoded), so a lone request is never held
back for company that is not coming.
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


class _Request:
    """One submitted request: its future (the stacked results), its results so far, and its timing."""

    __slots__ = ("future", "number", "remaining", "rows", "timing")

    def __init__(self, number: int, future: asyncio.Future[np.ndarray], count: int, timing: RequestTiming) -> None:
        self.number = number
        self.future = future
        self.rows: list[np.ndarray | None] = [None] * count
        self.remaining = count
        self.timing = timing


@dataclass(eq=False, slots=True)
class _Item:
    request: _Request
    index: int
    image: np.ndarray
    enqueued_at: float
    deadline: float | None

    @property
    def done(self) -> bool:
        """Its request has its answer already: failed, cancelled, or (never for a queued image) answered."""
        return self.request.future.done()


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
        error = (task.exception() if not task.cancelled() else asyncio.CancelledError()) or RuntimeError(
            "the batcher's loop returned"
        )
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
        return await self.enqueue(images, timing)

    def enqueue(self, images: np.ndarray, timing: RequestTiming | None = None) -> asyncio.Future[np.ndarray]:
        """Queue each image of `images` now; the future gets their results in order. Cancelling it (its request
        ended: timeout, client gone) takes its images out of the queue, so they stop counting against the
        capacity and the queue depth at once."""
        self.check_capacity(len(images))
        now = time.monotonic()
        deadline = now + self._queue_timeout if self._queue_timeout else None
        self._requests += 1
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        request = _Request(self._requests, future, len(images), timing or RequestTiming())
        self._queue.extend(_Item(request, index, image, now, deadline) for index, image in enumerate(images))
        future.add_done_callback(self._request_ended)
        self._queue_changed()
        return future

    def _request_ended(self, future: asyncio.Future[np.ndarray]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._drop_ended()

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
            if item.done:  # cancelled or failed: its request is gone
                continue
            if not self.merge_requests and batch and item.request is not batch[0].request:
                self._queue.appendleft(item)  # batching off: each request runs alone
                break
            if item.deadline is not None and now > item.deadline:
                self.stats.expired_images += 1
                waited_ms = (now - item.enqueued_at) * 1000
                self._fail_requests([item], QueueTimeout(f"the image waited {waited_ms:.0f} ms in the queue"))
                continue
            batch.append(item)
        self._observe("observe_queue_depth", len(self._queue))
        return [item for item in batch if not item.done]  # a sibling may have failed meanwhile

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
        for request in {id(item.request): item.request for item in batch}.values():
            request.timing.inference_s += elapsed
        for item, wait, result in zip(batch, waits, results, strict=True):
            request = item.request
            if request.future.done():
                continue
            request.timing.queue_wait_s = max(request.timing.queue_wait_s, wait)
            request.rows[item.index] = result
            request.remaining -= 1
            if not request.remaining:
                request.future.set_result(np.stack(request.rows))  # type: ignore[arg-type]  # no None left: all rows are in

    def _fail_requests(self, items: list[_Item], error: Exception) -> None:
        """Fail the requests of `items` as a whole; their other images leave the queue at once."""
        _fail(items, error)
        self._drop_ended()

    def _drop_ended(self) -> None:
        """Take the images of requests that have ended (failed, or cancelled) out of the queue."""
        kept = deque(item for item in self._queue if not item.done)
        if len(kept) != len(self._queue):
            self.stats.cancelled_images += len(self._queue) - len(kept)
            self._queue = kept
            self._queue_changed()

    def _fail_queued(self, error: ServiceError) -> None:
        _fail(self._queue, error)
        self._queue.clear()
        self._observe("observe_queue_depth", 0)


def _fail(items: Iterable[_Item], error: Exception) -> None:
    """Fail the request of every item still waiting with `error`."""
    for item in items:
        if not item.done:
            item.request.future.set_exception(error)

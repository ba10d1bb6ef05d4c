"""A memory budget shared by the requests of one process: work reserves its estimated bytes before it starts and
waits while the budget has no room. No FastAPI here."""

import asyncio
import contextlib
import threading
from collections import deque


class MemoryBudget:
    """At most `capacity` bytes reserved at once. A reservation that fits goes at once, even past waiters that do
    not fit yet: a large request waiting for room must not hold up every smaller one behind it (it waits at most
    its request's timeout). Waiters are granted in arrival order whenever they fit.

    `release` may come from a callback once the work really ended (a thread cannot be cancelled mid-decode), so
    reservations are plain acquire/release calls rather than a context manager. `try_acquire` may be called from
    any thread; the rest from the event loop's."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.reserved = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._lock = threading.Lock()  # `reserved` is also changed by `try_acquire`, from decoding threads

    def try_acquire(self, size: int) -> bool:
        """Reserve `size` bytes if they fit now; from any thread."""
        with self._lock:
            if self.reserved + size > self.capacity:
                return False
            self.reserved += size
            return True

    async def acquire(self, size: int) -> None:
        """Reserve `size` bytes (at most `capacity`), waiting while they do not fit."""
        if size > self.capacity:
            raise ValueError(f"{size} bytes can never fit a budget of {self.capacity}")
        if self.try_acquire(size):
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted just as it was cancelled: hand the room on
            else:
                waiter.cancel()  # so that `_wake` skips it if it is still queued
                with contextlib.suppress(ValueError):  # `_wake` may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # the next waiter may fit now that this one is gone
            raise

    def release(self, size: int) -> None:
        """Give back `size` bytes reserved by `acquire` or `try_acquire`."""
        with self._lock:
            self.reserved -= size
        self._wake()

    def _wake(self) -> None:
        """Grant, in arrival order, every waiting reservation that fits; drop waiters already gone."""
        waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        while self._waiters:
            size, waiter = entry = self._waiters.popleft()
            if waiter.done():  # cancelled while queued: its own cleanup has not run yet
                continue
            with self._lock:
                fits = self.reserved + size <= self.capacity
                if fits:
                    self.reserved += size
            if fits:
                waiter.set_result(None)
            else:
                waiting.append(entry)
        self._waiters = waiting

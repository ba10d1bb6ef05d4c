"""The batcher with a fake model that the tests hold back: sizes, delay, splitting, order, cancellation,
failures, a full queue, deadlines and shutdown."""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from service.batching import Batcher
from service.error_responses import http_status
from service.errors import BatcherStopped, InferenceFailed, QueueFull, QueueTimeout, ShuttingDown

POISON = 666


class FakeModel:
    """Returns each image's value times ten; blocks while `gate` is clear; fails a batch holding POISON."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[int]] = []
        self.started = threading.Event()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.started.set()
        self.gate.wait(timeout=10)
        values = [int(value) for value in images]
        self.batches.append(values)
        if POISON in values:
            raise RuntimeError("the model choked")
        return np.asarray(values) * 10


def run(test: Callable[[FakeModel, Batcher], Awaitable[None]], **options: object) -> FakeModel:
    """Run `test` against a started batcher over a fake model, then stop the batcher."""
    model = FakeModel()
    settings = {"max_batch_size": 4, "max_delay_ms": 0, "queue_capacity": 64} | options

    async def main() -> None:
        batcher = Batcher(model, **settings)  # type: ignore[arg-type]
        batcher.start()
        try:
            await test(model, batcher)
        finally:
            model.gate.set()
            await batcher.stop(timeout=10)

    asyncio.run(main())
    return model


def images(*values: int) -> np.ndarray:
    return np.asarray(values)


async def hold_first_batch(model: FakeModel, batcher: Batcher) -> asyncio.Task[np.ndarray]:
    """Start a one-image request and wait until the model is busy with it (and held)."""
    model.gate.clear()
    model.started.clear()
    first = asyncio.create_task(batcher.submit(images(0)))
    await asyncio.to_thread(model.started.wait, 10)
    return first


def test_one_request_one_image() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        assert (await batcher.submit(images(7))).tolist() == [70]

    assert run(test).batches == [[7]]


def test_concurrent_requests_are_merged_into_one_batch() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        waiting = [asyncio.create_task(batcher.submit(images(value))) for value in (1, 2, 3)]
        await asyncio.sleep(0.05)
        assert batcher.queue_depth == 3
        model.gate.set()
        assert (await first).tolist() == [0]
        assert [(await task).tolist() for task in waiting] == [[10], [20], [30]]

    assert run(test).batches == [[0], [1, 2, 3]]


def test_large_request_is_split_and_answered_in_order() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        assert (await batcher.submit(images(*range(1, 11)))).tolist() == [v * 10 for v in range(1, 11)]

    assert run(test).batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_each_result_reaches_its_own_request_in_order() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        requests = [images(*range(start, start + size)) for start, size in ((100, 3), (200, 1), (300, 5), (400, 2))]
        tasks = [asyncio.create_task(batcher.submit(request)) for request in requests]
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        for request, task in zip(requests, tasks, strict=True):
            assert (await task).tolist() == (request * 10).tolist()

    model = run(test)
    assert [len(batch) for batch in model.batches] == [1, 4, 4, 3]


def test_a_lone_request_is_not_held_for_the_delay() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        started = time.monotonic()
        await batcher.submit(images(1))
        assert time.monotonic() - started < 5  # the delay is 60 s: it was not spent

    run(test, max_delay_ms=60_000)


def test_delay_waits_for_a_request_still_being_decoded() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        with batcher.expecting():  # a second request is being decoded
            first = asyncio.create_task(batcher.submit(images(1)))
            await asyncio.sleep(0.1)
            assert not first.done()  # held back for the request on its way
            second = asyncio.create_task(batcher.submit(images(2)))
            await asyncio.sleep(0)
        assert ((await first).tolist(), (await second).tolist()) == ([10], [20])

    assert run(test, max_delay_ms=60_000).batches == [[1, 2]]


def test_delay_is_measured_from_the_first_queued_image() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        with batcher.expecting():  # announced, but never arrives
            started = time.monotonic()
            assert (await batcher.submit(images(1))).tolist() == [10]
            waited = time.monotonic() - started
        assert 0.15 <= waited < 5

    run(test, max_delay_ms=200)


def test_a_cancelled_request_has_its_queued_images_dropped() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        gone = asyncio.create_task(batcher.submit(images(5, 6)))
        staying = asyncio.create_task(batcher.submit(images(7)))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0)
        model.gate.set()
        await first
        assert (await staying).tolist() == [70]
        assert gone.cancelled()
        assert batcher.stats.cancelled_images == 2

    assert run(test).batches == [[0], [7]]


def test_a_cancelled_request_leaves_the_queue_and_frees_its_capacity_at_once() -> None:
    depths: list[int] = []

    class Depths:
        def observe_batch(self, size: int, queue_waits: list[float], inference_s: float) -> None:
            pass

        def observe_queue_depth(self, depth: int) -> None:
            depths.append(depth)

        def observe_failure(self) -> None:
            pass

    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        gone = asyncio.create_task(batcher.submit(images(5, 6, 7, 8)))
        await asyncio.sleep(0)
        assert batcher.queue_depth == 4
        with pytest.raises(QueueFull):
            batcher.check_capacity(1)
        gone.cancel()
        await asyncio.wait([gone])
        # The model is still held: nothing was skipped by the batcher, the cancelled images left by themselves.
        assert batcher.queue_depth == 0 and depths[-1] == 0
        batcher.check_capacity(4)
        staying = asyncio.create_task(batcher.submit(images(1, 2, 3, 4)))
        model.gate.set()
        await first
        assert (await staying).tolist() == [10, 20, 30, 40]

    assert run(test, queue_capacity=4, observer=Depths()).batches == [[0], [1, 2, 3, 4]]


def test_a_failed_image_takes_its_requests_other_images_out_of_the_queue() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        with pytest.raises(InferenceFailed):
            await batcher.submit(images(POISON, 5, 6, 7))
        assert batcher.queue_depth == 0
        assert (await batcher.submit(images(8))).tolist() == [80]

    assert run(test, max_batch_size=1).batches == [[POISON], [8]]


def test_an_observer_that_raises_never_stops_the_batcher() -> None:
    class Broken:
        def observe_batch(self, size: int, queue_waits: list[float], inference_s: float) -> None:
            raise OSError("metrics file not writable")

        def observe_queue_depth(self, depth: int) -> None:
            raise OSError("metrics file not writable")

        def observe_failure(self) -> None:
            raise OSError("metrics file not writable")

    async def test(model: FakeModel, batcher: Batcher) -> None:
        for value in (1, 2, POISON, 3):
            if value == POISON:
                with pytest.raises(InferenceFailed):
                    await batcher.submit(images(value))
            else:
                assert (await batcher.submit(images(value))).tolist() == [value * 10]
        assert batcher.running

    run(test, observer=Broken())


def test_a_fault_in_the_batchers_own_work_fails_that_batch_only() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        ragged = asyncio.create_task(batcher.submit(np.asarray([[1, 2], [3, 4]])))
        await asyncio.sleep(0)
        batcher._queue[1].image = np.zeros(5)  # images of different shapes: np.stack raises in the loop itself
        with pytest.raises(InferenceFailed, match="could not be run"):
            await ragged
        assert batcher.running
        assert (await batcher.submit(images(3))).tolist() == [30]

    run(test)


class Fatal(BaseException):
    """Not an Exception: nothing in the batcher may swallow it."""


def test_if_the_loop_ever_stops_queued_requests_fail_at_once_and_the_owner_is_told() -> None:
    failures: list[BaseException] = []

    class FatalModel(FakeModel):
        def __call__(self, images: np.ndarray) -> np.ndarray:
            if POISON in [int(value) for value in images]:
                raise Fatal("the interpreter is going down")
            return super().__call__(images)

    async def main() -> None:
        model = FatalModel()
        batcher = Batcher(model, max_batch_size=1, max_delay_ms=0, queue_capacity=8, on_failure=failures.append)
        batcher.start()
        killer = asyncio.create_task(batcher.submit(images(POISON)))
        waiting = asyncio.create_task(batcher.submit(images(1)))
        with pytest.raises(BatcherStopped):
            await waiting
        with pytest.raises((Fatal, BatcherStopped)):
            await killer
        assert not batcher.running
        with pytest.raises(BatcherStopped):
            batcher.check_capacity(1)
        await batcher.stop(timeout=1)

    asyncio.run(main())
    assert len(failures) == 1 and isinstance(failures[0], Fatal)


def test_a_failing_batch_fails_only_its_requests_and_the_batcher_keeps_running() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        poisoned = asyncio.create_task(batcher.submit(images(1, POISON)))
        bystander = asyncio.create_task(batcher.submit(images(2)))
        later = asyncio.create_task(batcher.submit(images(*range(10, 14))))
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        with pytest.raises(InferenceFailed, match="the model choked"):
            await poisoned
        with pytest.raises(InferenceFailed):
            await bystander  # shared the poisoned batch
        assert (await later).tolist() == [100, 110, 120, 130]
        assert (await batcher.submit(images(3))).tolist() == [30]
        assert batcher.stats.failed_batches == 1

    assert run(test, max_batch_size=3).batches == [[0], [1, POISON, 2], [10, 11, 12], [13], [3]]


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        queued = asyncio.create_task(batcher.submit(images(1, 2, 3)))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="3 of 4") as refused:
            await batcher.submit(images(4, 5))
        assert refused.value.retry_after_s == 1
        assert http_status(refused.value) == 503
        model.gate.set()
        await first
        await queued

    async def fits_exactly(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        tasks = [asyncio.create_task(batcher.submit(images(v))) for v in (1, 2, 3, 4)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            batcher.check_capacity(1)
        model.gate.set()
        await first
        assert [(await task).tolist() for task in tasks] == [[10], [20], [30], [40]]

    run(test, queue_capacity=4)
    run(fits_exactly, queue_capacity=4)


def test_an_image_queued_past_its_deadline_gets_a_timeout() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        late = asyncio.create_task(batcher.submit(images(1)))
        await asyncio.sleep(0.3)
        model.gate.set()
        await first
        with pytest.raises(QueueTimeout, match="waited"):
            await late
        assert (await batcher.submit(images(2))).tolist() == [20]
        assert batcher.stats.expired_images == 1

    run(test, queue_timeout_ms=100)


def test_shutdown_answers_everything_queued_and_refuses_new_work() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        queued = [asyncio.create_task(batcher.submit(images(v, v + 1))) for v in (10, 20, 30)]
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(batcher.stop(timeout=10))
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown):
            await batcher.submit(images(99))
        model.gate.set()
        await stopping
        assert (await first).tolist() == [0]
        assert [(await task).tolist() for task in queued] == [[100, 110], [200, 210], [300, 310]]

    model = run(test)
    assert sorted(v for batch in model.batches for v in batch) == [0, 10, 11, 20, 21, 30, 31]


def test_batching_off_runs_each_request_alone() -> None:
    async def test(model: FakeModel, batcher: Batcher) -> None:
        first = await hold_first_batch(model, batcher)
        tasks = [asyncio.create_task(batcher.submit(images(*request))) for request in ((1,), (2, 3), (4, 5, 6, 7, 8))]
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        for task in tasks:
            await task

    assert run(test, merge_requests=False, max_delay_ms=1000).batches == [[0], [1], [2, 3], [4, 5, 6, 7], [8]]

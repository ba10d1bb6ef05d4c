"""The memory budget: reservations fit or wait, in arrival order; a cancelled waiter hands its turn on."""

import asyncio

import pytest

from service.budget import MemoryBudget


def test_reservations_that_fit_go_at_once_and_the_rest_wait_in_order() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget(100)
        order: list[str] = []
        await budget.acquire(60)

        async def take(name: str, size: int) -> None:
            await budget.acquire(size)
            order.append(name)

        big = asyncio.create_task(take("big", 70))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 10))  # would fit, but waits behind the first waiter
        await asyncio.sleep(0)
        assert order == [] and budget.reserved == 60
        budget.release(60)
        await asyncio.gather(big, small)
        assert budget.reserved == 80
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_a_cancelled_waiter_lets_the_next_one_in() -> None:
    async def scenario() -> int:
        budget = MemoryBudget(100)
        await budget.acquire(50)
        blocked = asyncio.create_task(budget.acquire(90))
        await asyncio.sleep(0)
        behind = asyncio.create_task(budget.acquire(40))
        await asyncio.sleep(0)
        blocked.cancel()
        await asyncio.wait_for(behind, 5)
        return budget.reserved

    assert asyncio.run(scenario()) == 90


def test_a_reservation_larger_than_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="never fit"):
        asyncio.run(MemoryBudget(10).acquire(11))


def test_waiters_cancelled_together_lose_no_room_and_raise_only_cancellation() -> None:
    async def scenario() -> tuple[int, bool]:
        budget = MemoryBudget(100)
        await budget.acquire(50)
        first = asyncio.create_task(budget.acquire(60))  # does not fit while 50 are held
        second = asyncio.create_task(budget.acquire(10))  # fits, but waits behind the first
        await asyncio.sleep(0)
        first.cancel()
        second.cancel()  # both requests end in the same pass of the event loop
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task
        budget.release(50)
        whole = asyncio.create_task(budget.acquire(100))
        done, _ = await asyncio.wait([whole], timeout=5)
        return budget.reserved, bool(done)

    assert asyncio.run(scenario()) == (100, True)

"""The memory budget: reservations that fit go at once, the rest wait; a cancelled waiter hands its turn on."""

import asyncio

import pytest

from service.budget import MemoryBudget


async def take(budget: MemoryBudget, size: int, order: list[str], name: str) -> None:
    """Reserve `size`, then note `name` in `order`: the order in which reservations were granted."""
    await budget.acquire(size)
    order.append(name)


def test_reservations_that_fit_go_at_once_even_past_a_waiter_that_does_not() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget(100)
        order: list[str] = []
        await budget.acquire(60)
        big = asyncio.create_task(take(budget, 70, order, "big"))
        await asyncio.sleep(0)
        small = asyncio.create_task(take(budget, 10, order, "small"))  # fits: a large waiter does not hold it up
        await asyncio.sleep(0)
        assert order == ["small"] and budget.reserved == 70
        budget.release(60)
        await asyncio.gather(big, small)
        assert budget.reserved == 80
        return order

    assert asyncio.run(scenario()) == ["small", "big"]


def test_waiters_are_granted_in_arrival_order_when_room_comes() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget(100)
        order: list[str] = []
        await budget.acquire(100)
        sizes = {"first": 60, "second": 50, "third": 40}
        tasks = [asyncio.create_task(take(budget, size, order, name)) for name, size in sizes.items()]
        await asyncio.sleep(0)
        budget.release(100)  # the first and the third fit together; the second waits for room
        await asyncio.sleep(0)
        assert order == ["first", "third"]
        budget.release(60)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["first", "third", "second"]


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
        second = asyncio.create_task(budget.acquire(55))  # nor does this one
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

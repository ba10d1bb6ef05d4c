"""The classification pipeline that /predict and the Open Inference Protocol share."""

import asyncio

import pytest

from service.errors import ClientDisconnected
from service.frontend import client_gone
from service.pipeline import _unless_gone


def test_a_client_that_disconnects_has_its_work_cancelled() -> None:
    async def receive() -> dict:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def scenario() -> bool:
        answer = asyncio.get_running_loop().create_future()
        with pytest.raises(ClientDisconnected):
            await _unless_gone(client_gone(receive), answer)  # type: ignore[arg-type]
        return answer.cancelled()

    assert asyncio.run(scenario()), "the queued work was not cancelled"


def test_an_answer_before_the_client_goes_stops_the_watch() -> None:
    watched: list[str] = []

    async def receive() -> dict:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            watched.append("cancelled")
            raise
        return {"type": "http.disconnect"}

    async def scenario() -> str:
        answer = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(answer.set_result, "done")
        result = await _unless_gone(client_gone(receive), answer)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # let the watcher see its cancellation
        return result

    assert asyncio.run(scenario()) == "done"
    assert watched == ["cancelled"]

"""The served model's swap, in-process: one load at a time, none while draining, and a failed load leaves the
served model as it was. (Through the real server: tests/system/test_model_swap.py.)"""

import asyncio
import threading
from pathlib import Path

import pytest

from service import serving
from service.config import Settings
from service.errors import LoadInProgress, ModelRefused, ShuttingDown
from service.inference import OnnxModel
from service.lifecycle import DrainState
from service.limits import Admission
from service.serving import Serving


def swappable(model_path: Path) -> Serving:
    drain = DrainState()
    state = Serving(drain=drain, admission=Admission(limit=4, drain=drain), settings=Settings(model_path=model_path))
    state.make_pipeline = lambda model: None  # type: ignore[assignment,return-value]  # not reached in these tests
    state.size = (32, 32)
    return state


def test_a_load_while_another_runs_is_refused(bundled_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_load(path: Path, settings: Settings, size: tuple[int, int] | None) -> OnnxModel:
        release.wait(30)
        raise serving.ModelLoadError("refused after all")

    monkeypatch.setattr(serving, "load_checked", slow_load)
    state = swappable(bundled_model)

    async def both() -> tuple[BaseException | None, BaseException | None]:
        first = asyncio.ensure_future(state.swap(bundled_model))
        await asyncio.sleep(0)  # the first has taken the load
        try:
            await state.swap(bundled_model)
            second = None
        except LoadInProgress as error:
            second = error
        release.set()
        return (await asyncio.gather(first, return_exceptions=True))[0], second

    first, second = asyncio.run(both())
    assert isinstance(second, LoadInProgress) and "being loaded (default.onnx)" in str(second)
    assert isinstance(first, ModelRefused) and state.pipeline is None and state.loading is None


def test_no_load_while_draining(bundled_model: Path) -> None:
    state = swappable(bundled_model)
    state.drain.start()
    with pytest.raises(ShuttingDown):
        asyncio.run(state.swap(bundled_model))

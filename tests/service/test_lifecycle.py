"""Fatal faults: if the batcher's loop ever ends, requests fail at once, readiness turns 503 and the server stops
to exit non-zero (to be restarted) instead of hanging every later request."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.inference import OnnxModel
from service.lifecycle import DrainingServer, DrainState
from tests.conftest import encode, noisy_image
from tests.helpers import image_files


class Fatal(BaseException):
    """Not an Exception: no handler in the batcher may swallow it."""


def test_when_the_batchers_loop_dies_requests_fail_fast_and_readiness_turns_503(
    bundled_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_predict = OnnxModel.predict

    def predict(self: OnnxModel, images: np.ndarray) -> np.ndarray:
        if images[:, 0, 0, 0].max() == 255:  # the poisoned upload: a white top-left pixel
            raise Fatal("the inference thread's interpreter state is gone")
        return real_predict(self, images)

    monkeypatch.setattr(OnnxModel, "predict", predict)
    drain = DrainState()
    poisoned = np.zeros((32, 32, 3), dtype=np.uint8)
    poisoned[0, 0] = 255
    from PIL import Image

    files = image_files(("poison.png", encode(Image.fromarray(poisoned), "PNG")))
    good = image_files(("good.png", encode(noisy_image((10, 200, 10)), "PNG")))
    with TestClient(create_app(Settings(model_path=bundled_model), drain=drain)) as client:
        assert client.post("/predict", files=good).status_code == 200
        killed = client.post("/predict", files=files)
        after = client.post("/predict", files=good)
        ready = client.get("/ready")
    assert killed.status_code == 503 and killed.json()["error"] == "unavailable"
    assert after.status_code == 503 and after.json()["error"] in {"unavailable", "shutting_down"}
    assert after.headers["Retry-After"] == "1"
    assert ready.status_code == 503
    assert drain.failure is not None and "Fatal" in drain.failure


def test_a_fatal_fault_stops_the_server_at_once_even_with_requests_in_flight() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        pass

    drain = DrainState()
    server = DrainingServer(uvicorn.Config(app), drain_timeout_s=30, drain=drain)
    server.server_state.tasks.add(object())  # type: ignore[arg-type]  # one request still in flight
    assert asyncio.run(server.on_tick(1)) is False
    drain.start()
    assert asyncio.run(server.on_tick(1)) is False  # draining waits for it
    drain.fail("the batcher's loop stopped")
    assert asyncio.run(server.on_tick(1)) is True


def test_during_the_shutdown_delay_readiness_says_draining_but_requests_are_still_served(bundled_model: Path) -> None:
    drain = DrainState()
    good = image_files(("good.png", encode(noisy_image((10, 200, 10)), "PNG")))
    with TestClient(create_app(Settings(model_path=bundled_model, shutdown_delay_s=5), drain=drain)) as client:
        drain.start()
        ready = client.get("/ready")
        served = client.post("/predict", files=good)
        assert drain.started_at is not None
        drain.started_at -= 5  # the delay is over
        refused = client.post("/predict", files=good)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert served.status_code == 200
    assert refused.status_code == 503 and refused.json()["error"] == "shutting_down"


def test_an_idle_server_stops_only_after_the_shutdown_delay_and_the_drain_timeout_counts_from_its_end() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        pass

    drain = DrainState()
    drain.delay_s = 5
    server = DrainingServer(uvicorn.Config(app), drain_timeout_s=20, drain=drain)
    drain.start()
    assert drain.draining and not drain.refusing
    assert asyncio.run(server.on_tick(1)) is False  # idle, but still within the delay
    assert drain.remaining(20) == 20
    assert drain.started_at is not None
    drain.started_at -= 8  # 3 s past the delay
    assert drain.refusing and 16 < drain.remaining(20) <= 17
    assert asyncio.run(server.on_tick(1)) is True

"""End to end: a model trained and exported here is served by the real server (uvicorn, loopback) and classifies
uploaded PNG and JPEG files."""

import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import COLOURS, encode, noisy_image
from tests.helpers import image_files, running_server, running_server_process

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tiny_run: Path, tmp_path: Path) -> Iterator[str]:
    with running_server(tiny_run / "model.onnx", tmp_path / "server.log") as url:
        yield url


def test_real_server_classifies_uploaded_png_and_jpeg(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    digest = health.pop("digest")
    assert re.fullmatch(r"[0-9a-f]{12}", digest)  # of the model file
    assert health == {
        "status": "ok",
        "model": "tiny-colours",
        "version": "test-1",
        "provider": "CPUExecutionProvider",
    }

    uploads = image_files(
        ("red.png", encode(noisy_image(COLOURS["red"], (64, 48), seed=501), "PNG")),
        ("blue.jpg", encode(noisy_image(COLOURS["blue"], (40, 40), seed=502), "JPEG")),
        ("green.jpg", encode(noisy_image(COLOURS["green"], (32, 32), seed=503), "JPEG")),
    )
    response = httpx.post(f"{server}/predict", files=uploads, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "tiny-colours", "version": "test-1", "digest": digest}
    assert [p["filename"] for p in body["predictions"]] == ["red.png", "blue.jpg", "green.jpg"]
    assert [p["label"] for p in body["predictions"]] == ["red", "blue", "green"]
    for prediction in body["predictions"]:
        assert len(prediction["top_k"]) == 3
        assert abs(sum(entry["probability"] for entry in prediction["top_k"]) - 1) < 1e-4

    bad = httpx.post(f"{server}/predict", files=image_files(("x.png", b"nope")))
    assert bad.status_code == 415
    assert httpx.get(f"{server}/ready").status_code == 200


def test_200_concurrent_requests_each_get_their_own_answer(bundled_model: Path, tmp_path: Path) -> None:
    """Distinct images sent at once are batched together by the server, yet each answer is that image's own."""
    import asyncio

    import numpy as np

    from service.imaging import decode_image
    from service.inference import OnnxModel

    uploads = [
        encode(noisy_image((i * 7 % 256, i * 13 % 256, i * 29 % 256), (40, 30), seed=i), "PNG") for i in range(200)
    ]
    model = OnnxModel(bundled_model)
    expected = [
        model.predict(decode_image(data, filename="x", size=(32, 32), max_pixels=10**6)[None])[0] for data in uploads
    ]

    async def send_all(url: str) -> list[dict]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

            async def send(index: int) -> dict:
                files = image_files((f"img{index}.png", uploads[index]))
                response = await client.post("/predict", files=files, params={"top_k": 10})
                assert response.status_code == 200, response.text
                return response.json()

            return await asyncio.gather(*(send(i) for i in range(200)))

    settings = {"max_delay_ms": "20", "max_concurrent_requests": "256", "queue_capacity": "256"}
    with running_server(bundled_model, tmp_path / "server.log", **settings) as url:
        answers = asyncio.run(send_all(url))
    labels = model.info.labels
    for index, (answer, probabilities) in enumerate(zip(answers, expected, strict=True)):
        (prediction,) = answer["predictions"]
        assert prediction["filename"] == f"img{index}.png"
        served = np.zeros(len(labels))
        for entry in prediction["top_k"]:
            served[labels.index(entry["label"])] = entry["probability"]
        assert np.abs(served - probabilities).max() < 1e-5, index
    log = (tmp_path / "server.log").read_text()
    assert "batch_failed" not in log
    stopped = re.search(r"event=batcher_stopped batches=(\d+) images=(\d+)", log)
    assert stopped, log
    batches, images = int(stopped[1]), int(stopped[2])
    assert images == 200  # every image ran exactly once (warm-up does not go through the batcher)
    assert batches < images, "no two requests were merged: the test proved nothing about batching"


def test_several_workers_serve_and_metrics_add_up_across_them(bundled_model: Path, tmp_path: Path) -> None:
    """Each worker serves some requests (the other one is paused meanwhile, so which worker accepts a connection
    is not left to the kernel), and whichever worker answers a scrape reports both. A worker killed outright is
    replaced and its live gauges leave the shared metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(url: str) -> dict[str, float]:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        values = {"predictions": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "classifier_http_requests_total" and sample.labels["route"] == "/predict":
                    values["predictions"] += sample.value
                elif sample.name == "classifier_model_info":
                    values["model_info"] = sample.value
        return values

    def worker_pids(log: Path) -> list[int]:
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [event["pid"] for event in events if event["message"].startswith("event=ready ")]

    def wait_for_workers(log: Path, count: int) -> list[int]:
        deadline = time.monotonic() + 60
        while len(pids := worker_pids(log)) < count:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        return pids

    metrics_dir = tmp_path / "metrics"
    log = tmp_path / "server.log"
    files = image_files(("a.jpg", encode(noisy_image(COLOURS["red"], (32, 32), seed=1), "JPEG")))
    environment = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with running_server_process(bundled_model, log, environment, workers="2") as (url, _):
        pids = wait_for_workers(log, 2)
        for _serving, paused in (pids, pids[::-1]):
            os.kill(paused, signal.SIGSTOP)  # only the other worker can accept connections now
            try:
                for _ in range(5):
                    response = httpx.post(f"{url}/predict", files=files, headers={"Connection": "close"}, timeout=30)
                    assert response.status_code == 200
            finally:
                os.kill(paused, signal.SIGCONT)
        # A worker counts (and logs) a request just after answering it, so it may have been paused in between:
        # wait until all ten are counted. Then whichever worker answers a scrape reports both workers' requests.
        deadline = time.monotonic() + 30
        while scrape(url)["predictions"] < 10:
            assert time.monotonic() < deadline, "not every request was counted"
            time.sleep(0.05)
        assert [scrape(url)["predictions"] for _ in range(6)] == [10.0] * 6
        os.kill(pids[0], signal.SIGKILL)  # as the OOM killer would
        replacement = wait_for_workers(log, 3)[2]
        assert scrape(url)["model_info"] == 1.0
        live_gauges = {path.name for path in metrics_dir.glob("gauge_live*.db")}
        assert not [name for name in live_gauges if name.endswith(f"_{pids[0]}.db")], live_gauges
        assert [name for name in live_gauges if name.endswith(f"_{replacement}.db")], live_gauges
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    served = Counter(event["pid"] for event in events if event.get("route") == "/predict")
    assert served == {pids[0]: 5, pids[1]: 5}
    assert not list(metrics_dir.glob("*.db")), "metric files were left behind"

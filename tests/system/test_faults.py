"""Faults: unusable model files, ONNX Runtime failing mid-batch, missing GPUs, and a flood of requests."""

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from PIL import Image

from service.app import create_app
from service.config import Settings
from service.inference import OnnxModel
from tests.conftest import REPO, encode, noisy_image, save_classifier
from tests.helpers import free_port, image_files, rss_mb, running_server, write_model


def start_and_wait(model: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"CLASSIFIER_MODEL_PATH": str(model), "CLASSIFIER_PORT": str(free_port())}
    env |= {f"CLASSIFIER_{name.upper()}": value for name, value in settings.items()}
    return subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def bad_models(directory: Path, bundled: Path) -> dict[str, tuple[Path, str]]:
    truncated = directory / "truncated.onnx"
    truncated.write_bytes(bundled.read_bytes()[:4000])
    not_onnx = directory / "photo.onnx"
    not_onnx.write_bytes(encode(noisy_image((1, 2, 3)), "PNG"))
    wrong_shape = write_model(directory / "nchw.onnx", TensorProto.UINT8, ["batch", 3, 32, 32], ["a", "b", "c"])
    return {
        "missing": (directory / "missing.onnx", "does not exist"),
        "truncated": (truncated, "could not be loaded"),
        "not-onnx": (not_onnx, "is not an ONNX model"),  # found before serving (tests/system/test_startup_mistakes.py)
        "wrong-input-shape": (wrong_shape, "must take uint8 images (N, height, width, 3)"),
    }


@pytest.mark.parametrize("fault", ["missing", "truncated", "not-onnx", "wrong-input-shape"])
def test_an_unusable_model_file_stops_startup_with_a_message(fault: str, tmp_path: Path, bundled_model: Path) -> None:
    path, problem = bad_models(tmp_path, bundled_model)[fault]
    result = start_and_wait(path)
    # exit 2: found before serving (service/preflight.py); exit 3: the file looked like ONNX but did not load
    assert result.returncode == (2 if fault in ("missing", "not-onnx") else 3)
    assert str(path) in result.stderr and problem in result.stderr
    assert "event=ready" not in result.stderr
    assert "Traceback" not in result.stderr  # the reason is logged once, as event=startup_failed


def test_with_several_workers_an_unusable_model_file_also_exits_non_zero(tmp_path: Path, bundled_model: Path) -> None:
    # A file that looks like ONNX gets past the checks made before serving: each worker fails to load it.
    path, problem = bad_models(tmp_path, bundled_model)["truncated"]
    result = start_and_wait(path, workers="2")
    assert result.returncode == 3
    assert problem in result.stderr and "event=ready" not in result.stderr
    assert "Traceback" not in result.stderr


def failing_model(path: Path) -> Path:
    """A real ONNX model that ONNX Runtime cannot run on some inputs: it gathers from a 10-element table at the
    index given by the first pixel's red value, so a red value of 10 or more makes Gather fail at run time."""
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        helper.make_node("Slice", ["image", "zeros", "ones", "axes"], ["corner"]),
        helper.make_node("Reshape", ["corner", "flat"], ["corner_flat"]),
        helper.make_node("Cast", ["corner_flat"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"]),
        helper.make_node("Unsqueeze", ["looked_up", "one_axis"], ["column"]),
        helper.make_node("Add", ["logits", "column"], ["shifted"]),
        helper.make_node("Softmax", ["shifted"], ["probabilities"]),
    ]
    constants = [
        helper.make_tensor("weights", TensorProto.FLOAT, [3, 3], np.eye(3).flatten().tolist()),
        helper.make_tensor("zeros", TensorProto.INT64, [3], [0, 0, 0]),
        helper.make_tensor("ones", TensorProto.INT64, [3], [1, 1, 1]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("table", TensorProto.FLOAT, [10], [0.0] * 10),
        helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
    ]
    return save_classifier(path, "fragile", nodes, constants)


def test_onnx_runtime_failing_mid_batch_fails_those_requests_only(tmp_path: Path) -> None:
    model = failing_model(tmp_path / "fragile.onnx")
    dark = encode(noisy_image((0, 0, 0), (8, 8)).point(lambda v: min(v, 5)), "PNG")
    bright = encode(noisy_image((250, 250, 250), (8, 8)), "PNG")

    with TestClient(create_app(Settings(model_path=model))) as client:
        assert client.post("/predict", files=image_files(("x.png", dark))).status_code == 200
        failed = client.post("/predict", files=image_files(("x.png", bright)))
        assert failed.status_code == 500
        assert failed.json()["error"] == "inference_failed"
        assert "Gather" in failed.json()["detail"] or "indices" in failed.json()["detail"]
        assert client.post("/predict", files=image_files(("x.png", dark))).status_code == 200
        metrics = client.get("/metrics").text
    assert "classifier_inference_failures_total 1.0" in metrics


def test_gpu_preferred_on_the_cpu_build_means_cpu_said_without_a_warning(
    bundled_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # This ONNX Runtime is the CPU package, installed on purpose: CUDA's absence is said (INFO), not warned of.
    # A GPU package whose CUDA fails to load is warned of (tests/service/test_inference.py).
    with caplog.at_level(logging.INFO, logger="service"):
        model = OnnxModel(bundled_model, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert model.info.providers == ("CPUExecutionProvider",)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert any("CUDAExecutionProvider" in record.getMessage() for record in caplog.records)


def test_gpu_required_but_absent_exits_with_a_message(bundled_model: Path) -> None:
    result = start_and_wait(bundled_model, require_gpu="true")
    assert result.returncode == 3
    assert "a GPU is required" in result.stderr and "Traceback" not in result.stderr


def server_pid(log: Path) -> int:
    """The serving process's pid, from its JSON log lines."""
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            return int(json.loads(line)["pid"])
    raise AssertionError("no JSON log line yet")


def test_a_flood_gets_every_request_answered_and_memory_returns(bundled_model: Path, tmp_path: Path) -> None:
    images = [encode(noisy_image((i % 256, 80, 160), (32, 32), seed=i), "JPEG") for i in range(50)]

    async def flood(url: str, count: int) -> list[int]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

            async def one(index: int) -> int:
                files = image_files((f"{index}.jpg", images[index % len(images)]))
                return (await client.post("/predict", files=files)).status_code

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 120)

    settings = {"max_concurrent_requests": "16", "queue_capacity": "32", "queue_timeout_ms": "2000"}
    log = tmp_path / "server.log"
    with running_server(bundled_model, log, **settings) as url:
        asyncio.run(flood(url, 300))  # warm-up: allocator pools, thread pools, connection buffers
        pid = server_pid(log)
        time.sleep(1)
        before = rss_mb(pid)
        started = time.monotonic()
        statuses = asyncio.run(flood(url, 400))
        elapsed = time.monotonic() - started
        time.sleep(1)
        after = rss_mb(pid)
        assert httpx.get(f"{url}/ready").status_code == 200
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    print(f"\nflood: 400 concurrent requests in {elapsed:.1f} s -> {counts}; RSS {before:.1f} -> {after:.1f} MB")
    assert set(counts) <= {200, 503, 504}, counts
    assert counts.get(200, 0) > 0 and counts.get(503, 0) > 0
    assert after <= before * 1.10, f"RSS grew from {before:.1f} to {after:.1f} MB"


# Runs the real server with one fault injected: a model call on an image whose top-left pixel is white raises an
# exception that is not an Exception (as an interpreter shutting down would), which ends the batcher's loop.
FATAL_SERVER = """
import numpy as np
from service import inference
from service.__main__ import main

class Fatal(BaseException):
    pass

real_predict = inference.OnnxModel.predict

def predict(self, images):
    if images[:, 0, 0, 0].max() == 255:
        raise Fatal("injected")
    return real_predict(self, images)

inference.OnnxModel.predict = predict
main()
"""


def test_if_inference_stops_for_good_the_server_answers_503_and_exits_1(bundled_model: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"CLASSIFIER_MODEL_PATH": str(bundled_model), "CLASSIFIER_PORT": str(port)}
    log = tmp_path / "server.log"
    poisoned = np.zeros((32, 32, 3), dtype=np.uint8)
    poisoned[0, 0] = 255
    with log.open("wb") as output:
        server = subprocess.Popen([sys.executable, "-c", FATAL_SERVER], cwd=REPO, env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        files = image_files(("poison.png", encode(Image.fromarray(poisoned), "PNG")))
        answer = httpx.post(f"{url}/predict", files=files, timeout=30)
        exit_code = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert answer.status_code == 503 and answer.json()["error"] == "unavailable"
    assert exit_code == 1
    text = log.read_text()
    assert "event=batcher_died" in text and "event=fatal" in text

"""End to end: a model trained and exported here is served by the real server (uvicorn, loopback) and classifies
uploaded PNG and JPEG files."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import COLOURS, REPO, encode, noisy_image

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(tiny_run: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = os.environ | {
        "CLASSIFIER_MODEL_PATH": str(tiny_run / "model.onnx"),
        "CLASSIFIER_HOST": "127.0.0.1",
        "CLASSIFIER_PORT": str(port),
    }
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the server did not become ready within 60 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_real_server_classifies_uploaded_png_and_jpeg(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health == {
        "status": "ok",
        "model": "tiny-colours",
        "version": "test-1",
        "provider": "CPUExecutionProvider",
    }

    uploads = [
        ("files", ("red.png", encode(noisy_image(COLOURS["red"], (64, 48), seed=501), "PNG"), "image/png")),
        (
            "files",
            ("blue.jpg", encode(noisy_image(COLOURS["blue"], (40, 40), seed=502), "JPEG"), "image/jpeg"),
        ),
        (
            "files",
            ("green.jpg", encode(noisy_image(COLOURS["green"], (32, 32), seed=503), "JPEG"), "image/jpeg"),
        ),
    ]
    response = httpx.post(f"{server}/predict", files=uploads, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "tiny-colours", "version": "test-1"}
    assert [p["filename"] for p in body["predictions"]] == ["red.png", "blue.jpg", "green.jpg"]
    assert [p["label"] for p in body["predictions"]] == ["red", "blue", "green"]
    for prediction in body["predictions"]:
        assert len(prediction["top_k"]) == 3
        assert abs(sum(entry["probability"] for entry in prediction["top_k"]) - 1) < 1e-4

    bad = httpx.post(f"{server}/predict", files=[("files", ("x.png", b"nope", "image/png"))])
    assert bad.status_code == 415
    assert httpx.get(f"{server}/ready").status_code == 200

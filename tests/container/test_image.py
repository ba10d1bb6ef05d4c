"""The CPU image as the Kubernetes manifests run it (uid 10001, read-only root filesystem, no capabilities, the
memory limit): ready quickly, no TensorFlow inside, the same answers as the in-process server, its own HEALTHCHECK
passing, and a clean exit on SIGTERM."""

import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import REPO
from tests.container.engine import Container, Engine
from tests.helpers import image_files, memory_limit_bytes

SAMPLES = sorted((REPO / "tests" / "data" / "cifar10-sample").glob("*/*.jpg"))[::10]
READY_WITHIN_S = 30.0
"""A bound for a broken start only: the time itself is a figure to read (about 1 s here), not a test's pass mark on a
machine shared with other work."""
GRACE_PERIOD_S = 30


def hardened(memory_bytes: int) -> list[str]:
    """`run` options of the manifests' securityContext and limits, published on a loopback port."""
    return [
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "10001:10001", "--memory", str(memory_bytes), "--memory-swap", str(memory_bytes),
        "--publish", "127.0.0.1::8000",
    ]  # fmt: skip


def labels(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [prediction["label"] for prediction in answer.json()["predictions"]]


def test_the_image_runs_hardened_and_answers_like_the_in_process_server(
    engine: Engine, cpu_image: str, start: Callable[..., Container], bundled_model: Path
) -> None:
    container = start(cpu_image, *hardened(memory_limit_bytes()))
    url = container.url()
    ready_s = container.wait_ready()
    print(f"\n/ready answered 200 {ready_s:.2f} s after `{engine.name} run` returned")
    assert ready_s < READY_WITHIN_S

    assert container.exec("id", "-u").stdout.strip() == "10001"
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert container.exec("touch", "/app/written").returncode != 0  # the root filesystem refuses writes
    no_tensorflow = container.exec("python", "-c", "import tensorflow")
    assert "No module named 'tensorflow'" in no_tensorflow.stderr
    assert container.exec("pip", "check").returncode == 0

    files = image_files(*((path.name, path.read_bytes()) for path in SAMPLES))
    served = labels(httpx.post(f"{url}/predict", files=files, timeout=30))
    with TestClient(create_app(Settings(model_path=bundled_model))) as client:
        in_process = labels(client.post("/predict", files=files))
    assert len(served) == len(SAMPLES) and served == in_process

    # The image's own HEALTHCHECK (docker runs it by itself; podman here has no systemd timer, so it is run once).
    assert container.inspect("{{json .Config.Healthcheck}}") != "null"
    if engine.name == "podman":
        assert engine.run("healthcheck", "run", container.name, check=False).returncode == 0
    else:
        deadline = time.monotonic() + 60
        while container.inspect("{{.State.Health.Status}}") != "healthy":
            assert time.monotonic() < deadline, container.logs()
            time.sleep(0.5)

    stopping = time.monotonic()
    engine.run("stop", "--time", str(GRACE_PERIOD_S), container.name, timeout=GRACE_PERIOD_S + 30)
    stopped_s = time.monotonic() - stopping
    print(f"stopped {stopped_s:.2f} s after SIGTERM, exit code {container.inspect('{{.State.ExitCode}}')}")
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
    assert stopped_s < GRACE_PERIOD_S  # drained and exited by itself, not killed at the end of the grace period
    assert "event=drain_finished" in container.logs()


def test_the_image_refuses_an_unusable_model_with_one_clear_line(
    cpu_image: str, start: Callable[..., Container]
) -> None:
    container = start(cpu_image, "--read-only", "--env", "CLASSIFIER_MODEL_PATH=/app/models/missing.onnx")
    container.engine.run("wait", container.name, timeout=60)
    assert container.inspect("{{.State.ExitCode}}") == "2"  # found before serving (service/preflight.py)
    (line,) = container.logs().strip().splitlines()
    assert "CLASSIFIER_MODEL_PATH=/app/models/missing.onnx does not exist" in line, line


def test_the_gpu_image_without_a_gpu_reports_the_cpu_or_refuses_as_told(
    engine: Engine, start: Callable[..., Container]
) -> None:
    """image-classifier:gpu (CUDA and cuDNN from NVIDIA's wheels) on a machine without a GPU: serves on the CPU and
    says so, or, with CLASSIFIER_REQUIRE_GPU=true, exits 3 with one line naming the reason."""
    if not engine.has_image("image-classifier:gpu"):
        pytest.skip("image-classifier:gpu is not built here (`make image TARGET=gpu`: 3 GB of CUDA wheels)")
    container = start("image-classifier:gpu", "--read-only", "--tmpfs", "/tmp", "--publish", "127.0.0.1::8000")
    url = container.url()
    container.wait_ready()
    assert httpx.get(f"{url}/ready", timeout=5).json()["provider"] == "CPUExecutionProvider"
    assert "event=provider_fallback" in container.logs()
    # CUDA's own libraries load (from the wheels); only the driver, which a GPU host provides, is missing.
    assert "libcuda.so.1" in container.logs() and "libcublasLt.so" not in container.logs()
    refusing = start("image-classifier:gpu", "--env", "CLASSIFIER_REQUIRE_GPU=true")
    engine.run("wait", refusing.name, timeout=120)
    assert refusing.inspect("{{.State.ExitCode}}") == "3"
    assert "a GPU is required (require_gpu) but ONNX Runtime is using ['CPUExecutionProvider']" in refusing.logs()

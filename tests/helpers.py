"""Helpers shared by the tests and the benchmarks: a real server on a free loopback port, its metrics, upload bodies,
crafted images and models, and a process's memory. Test modules import these (and conftest's), never each other."""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, encode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(model: Path, log: Path, **settings: str) -> Iterator[str]:
    """`python -m service` on a free loopback port, until the block ends; yields its base URL once ready."""
    with running_server_process(model, log, **settings) as (url, _):
        yield url


@contextmanager
def running_server_process(
    model: Path, log: Path, environment: dict[str, str] | None = None, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As `running_server`, yielding the server's process too; `environment` adds other variables."""
    port = free_port()
    env = (
        os.environ
        | (environment or {})
        | {
            "CLASSIFIER_MODEL_PATH": str(model),
            "CLASSIFIER_HOST": "127.0.0.1",
            "CLASSIFIER_PORT": str(port),
        }
    )
    env |= {f"CLASSIFIER_{name.upper()}": value for name, value in settings.items()}
    with server_process([sys.executable, "-m", "service"], env, port, log) as running:
        yield running


@contextmanager
def server_process(
    command: list[str], env: dict[str, str], port: int, log: Path, ready_within_s: float = 60
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`command` run from the repository, its output in `log`, until the block ends: yields its URL on `port` and
    the process once its /ready answers 200. Starts the servers of the tests and of the benchmarks alike."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within_s
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not become ready within {ready_within_s:g} s"
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's metrics (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition: object, what: str, seconds: float = 30) -> None:
    """Poll `condition` until it is true; the deadline only guards against a hang, it is not a timing margin."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


Files = list[tuple[str, tuple[str, bytes, str]]]
"""httpx's (and TestClient's) `files=` argument."""


def image_files(*images: tuple[str, bytes], content_type: str = "application/octet-stream") -> Files:
    """Each (filename, encoded image) as a `files` part, as /predict takes uploads."""
    return [("files", (filename, data, content_type)) for filename, data in images]


def multipart(files: Files, boundary: str | None = None) -> tuple[bytes, str]:
    """The multipart/form-data body httpx would send for `files`, and its Content-Type (with `boundary`, if
    given, instead of a random one)."""
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"} if boundary else None
    request = httpx.Request("POST", "http://x/predict", files=files, headers=headers)
    return request.read(), request.headers["content-type"]


def png_declaring(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims `width` x `height` (a decompression bomb's calling card)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def write_model(path: Path, input_type: int, shape: list, labels: list[str] | None, classes: int = 3) -> Path:
    """A minimal ONNX model: Cast -> mean over the middle axes -> MatMul to `classes` -> Softmax."""
    image = helper.make_tensor_value_info("image", input_type, shape)
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])
    channels = shape[-1]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [channels, classes], np.ones(channels * classes).tolist())
    nodes = [
        helper.make_node("Cast", ["image"], ["float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["float"], ["mean"], axes=list(range(1, len(shape) - 1)), keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [image], [output], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if labels is not None:
        helper.set_model_props(model, {"class_names": json.dumps(labels), "model_name": "tiny"})
    onnx.save(model, path)
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")

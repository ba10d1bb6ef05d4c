"""A request that ends early (its timeout, its client gone) takes its queued images out of the queue at once,
through the real server: they stop counting against the queue's capacity and in the queue-depth gauge, and the
model never runs them."""

import re
import socket
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.conftest import encode, noisy_image, save_classifier
from tests.helpers import metric, multipart, running_server, wait_for

IMAGES = 16
SETTINGS = {
    "max_batch_size": "1",
    "queue_capacity": str(IMAGES),
    "max_images_per_request": str(IMAGES),
    "queue_timeout_ms": "0",
    "max_delay_ms": "0",
}


def slow_model(path: Path, side: int = 1024, rounds: int = 32) -> Path:
    """A real ONNX model that takes about a third of a second per image here (32 chained 1024x1024 MatMuls that
    depend on the input, so nothing can be folded away); 8x8 RGB in, 3 classes out."""
    weights = (np.random.default_rng(0).standard_normal((1, side, side)) / np.sqrt(side)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["scale"]),
        helper.make_node("Mul", ["weights", "scale"], ["state0"]),
    ]
    for index in range(rounds):
        nodes.append(helper.make_node("MatMul", [f"state{index}", "weights"], [f"product{index}"]))
        nodes.append(helper.make_node("Tanh", [f"product{index}"], [f"state{index + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"state{rounds}"], ["rows"], axes=[2], keepdims=0),
        helper.make_node("Slice", ["rows", "starts", "ends", "axis"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    constants = [
        helper.make_tensor("weights", TensorProto.FLOAT, list(weights.shape), weights.flatten().tolist()),
        helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 1, 1]),
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [3]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
    ]
    return save_classifier(path, "slow", nodes, constants)


def pngs(count: int, seed: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        (
            "files",
            (f"{seed}-{i}.png", encode(noisy_image((i * 9 % 256, 90, 40), (8, 8), seed=seed + i), "PNG"), "image/png"),
        )
        for i in range(count)
    ]


def images_run(log: Path) -> int:
    stopped = re.search(r"event=batcher_stopped batches=\d+ images=(\d+)", log.read_text())
    assert stopped, log.read_text()
    return int(stopped[1])


# client_disconnect_behind_pipelined: two more requests sent while it runs, one a 150 KB upload. uvicorn stopped
# reading once a request was queued (and past 64 KiB of a body not yet taken), so the client's leaving was seen only
# after the request in progress had run to its end.
@pytest.mark.parametrize("ending", ["request_timeout", "client_disconnect", "client_disconnect_behind_pipelined"])
def test_a_request_that_ends_early_leaves_the_queue_at_once(ending: str, tmp_path: Path) -> None:
    model = slow_model(tmp_path / "slow.onnx")
    log = tmp_path / "server.log"
    settings = SETTINGS | {"request_timeout_s": "1" if ending == "request_timeout" else "120"}
    with running_server(model, log, **settings) as url:
        if ending == "request_timeout":
            # 16 images at about 0.3 s each cannot finish in 1 s: the request is cut off with most of them queued.
            cut = httpx.post(f"{url}/predict", files=pngs(IMAGES, seed=0), timeout=60)
            assert cut.status_code == 504 and cut.json()["error"] == "timeout"
        else:
            body, content_type = multipart(pngs(IMAGES, seed=0))
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as client:
                head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
                client.sendall(request)
                wait_for(lambda: metric(url, "classifier_queue_depth") > 0, "the request's images to be queued")
                if ending.endswith("pipelined"):
                    client.sendall(request + b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 150000\r\n\r\n")
                    client.sendall(bytes(150_000))
            wait_for(
                lambda: metric(url, "classifier_refusals_total", reason="client_disconnected") == 1,
                "the server to notice the client left",
            )
        # No other request ran meanwhile: whatever is still queued belongs to the request that ended.
        assert metric(url, "classifier_queue_depth") == 0
        # The queue holds 16 images: had the ended request's images stayed, these would be refused with 503. (With
        # the 1 s request timeout they cannot all run in time either: admitted is what counts, 200 or 504.)
        after = httpx.post(f"{url}/predict", files=pngs(IMAGES, seed=100), timeout=120)
        assert after.status_code == (504 if ending == "request_timeout" else 200), after.text
        assert metric(url, "classifier_refusals_total", reason="queue_full") == 0
    ran = images_run(log)
    print(f"\n{ending}: the model ran {ran} images for the two requests of {IMAGES} each")
    assert ran < 2 * IMAGES - 4, "the ended requests' queued images were run anyway"

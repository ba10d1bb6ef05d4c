"""Shared fixtures: image bytes made on the fly, the bundled model, and one tiny trained-and-exported model."""

import io
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.imaging import configure_pillow

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO / "models" / "default.onnx"
COLOURS = {"blue": (20, 40, 230), "green": (30, 200, 40), "red": (230, 30, 30)}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """`image` saved in `fmt` as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noisy_image(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32), seed: int = 0) -> Image.Image:
    """A `size` (width, height) RGB image of `colour` with mild noise, so no two seeds look alike."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-25, 26, size=(size[1], size[0], 3))
    pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def make_image_folder(root: Path, per_class: int = 12, size: tuple[int, int] = (32, 32)) -> Path:
    """ROOT/<colour>/*.png|jpg: a tiny three-class data set a small CNN learns in a few epochs."""
    for label, colour in COLOURS.items():
        folder = root / label
        folder.mkdir(parents=True)
        for index in range(per_class):
            image = noisy_image(colour, size, seed=index + 100 * len(label))
            suffix = "png" if index % 2 else "jpg"
            image.save(folder / f"{index:03d}.{suffix}")
    return root


def read_response(connection: socket.socket) -> tuple[int, dict]:
    """Read one HTTP/1.1 response (with Content-Length) from a raw socket: its status and JSON body."""
    connection.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, "the connection closed mid-response"
        body += chunk
    return int(head.split()[1]), json.loads(body)


def save_classifier(path: Path, name: str, nodes: list, constants: list) -> Path:
    """Save a hand-built ONNX graph as a model the service serves: uint8 `image` (batch, 8, 8, 3) in, float
    `probabilities` (batch, 3) out, labels a, b, c."""
    from onnx import TensorProto, helper, save

    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph(nodes, name, [image], [output], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"class_names": json.dumps(["a", "b", "c"]), "model_name": name})
    save(model, path)
    return path


@pytest.fixture(scope="session", autouse=True)
def pillow_configured() -> None:
    """Pillow's settings as the service and training apply them at start (the unit tests call the imaging
    functions directly)."""
    configure_pillow()


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The default model shipped in models/."""
    assert BUNDLED_MODEL.is_file(), f"{BUNDLED_MODEL} is missing"
    return BUNDLED_MODEL


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real training run (baseline, a few epochs on the three-colour folder), exported to ONNX."""
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import train

    root = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(root / "data")
    run_dir = train(
        TrainConfig(data=str(data), run_dir=str(root / "run"), epochs=6, batch_size=8, validation_fraction=0.25)
    )
    export_run(run_dir, run_dir / "model.onnx", name="tiny-colours", version="test-1")
    yield run_dir

"""The Open Inference Protocol (KServe v2) on the real server, started as the README says (`python -m service`),
driven by the official client (tritonclient) and by raw HTTP for malformed requests."""

import base64
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.conftest import REPO, encode
from tests.helpers import running_server

SAMPLE = sorted((REPO / "tests" / "data" / "cifar10-sample").rglob("*.jpg"))[:5]
MODEL = "cifar10-resnet9"
VERSION = json.loads((REPO / "models" / "default.card.json").read_text())["version"]  # the bundled model's


@pytest.fixture(scope="module")
def server(bundled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("v2") / "server.log"
    with running_server(bundled_model, log, max_images_per_request="12") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.removeprefix("http://"))


@pytest.fixture(scope="module")
def files() -> list[tuple[str, bytes]]:
    """The sample JPEGs, and each again as PNG: the same pixels, two formats."""
    jpegs = [(path.name, path.read_bytes()) for path in SAMPLE]
    pngs = [(name + ".png", encode(Image.open(io.BytesIO(data)), "PNG")) for name, data in jpegs]
    return jpegs + pngs


@pytest.fixture(scope="module")
def predicted(server: str, files: list[tuple[str, bytes]]) -> list[dict]:
    """What /predict says for each file (top 3)."""
    answer = httpx.post(f"{server}/predict?top_k=3", files=[("files", file) for file in files], timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def pixels(files: list[tuple[str, bytes]]) -> np.ndarray:
    """The files decoded to the model's UINT8 input (the samples are 32x32 RGB already)."""
    return np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data in files])


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, VERSION)
    assert not client.is_model_ready("another-model")
    server = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    model = client.get_model_metadata(MODEL)
    assert model["versions"] == [VERSION]
    assert model["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert "BYTES" in model["parameters"]["image_bytes"]
    assert client.get_model_metadata(MODEL, VERSION) == model


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_pixels_get_predict_s_labels(
    client: triton.InferenceServerClient, files: list[tuple[str, bytes]], predicted: list[dict], binary: bool
) -> None:
    images = pixels(files[: len(SAMPLE)])
    tensor = triton.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[output], request_id="request-7")
    probabilities = result.as_numpy("probabilities")
    assert result.get_response()["id"] == "request-7"
    assert probabilities.shape == (len(SAMPLE), 10)
    names = client.get_model_metadata(MODEL)["parameters"]["labels"].split(",")  # the labels, in the model's order
    assert [names[i] for i in probabilities.argmax(axis=1)] == [p["label"] for p in predicted[: len(SAMPLE)]]
    for row, prediction in zip(probabilities, predicted, strict=False):
        assert row.max() == pytest.approx(prediction["probability"], abs=1e-5)


def test_bytes_of_png_and_jpeg_files_are_decoded_as_predict_decodes_them(
    client: triton.InferenceServerClient, files: list[tuple[str, bytes]], predicted: list[dict]
) -> None:
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array([data for _, data in files], dtype=np.object_))
    probabilities = client.infer(MODEL, [tensor]).as_numpy("probabilities")  # no outputs named: all, binary
    for row, prediction in zip(probabilities, predicted, strict=True):
        assert row.max() == pytest.approx(prediction["probability"], abs=1e-5)
    names = client.get_model_metadata(MODEL)["parameters"]["labels"].split(",")
    assert [names[i] for i in probabilities.argmax(axis=1)] == [p["label"] for p in predicted]


def test_the_classification_parameter_gives_predict_s_top_k(
    client: triton.InferenceServerClient, files: list[tuple[str, bytes]], predicted: list[dict]
) -> None:
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array([data for _, data in files], dtype=np.object_))
    output = triton.InferRequestedOutput("probabilities", class_count=3)
    classes = client.infer(MODEL, [tensor], outputs=[output]).as_numpy("probabilities")
    assert classes.shape == (len(files), 3)
    for row, prediction in zip(classes, predicted, strict=True):
        parsed = [entry.decode().split(":") for entry in row]
        assert [label for _, _, label in parsed] == [k["label"] for k in prediction["top_k"]]
        assert [float(score) for score, _, _ in parsed] == pytest.approx(
            [k["probability"] for k in prediction["top_k"]], abs=1e-5
        )


def test_errors_reach_the_client_with_the_server_s_message(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("image", [1, 16, 16, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 16, 16, 3\], the model takes") as wrong_shape:
        client.infer(MODEL, [tensor])
    assert wrong_shape.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model 'another-model'") as unknown:
        client.infer("another-model", [tensor])
    assert unknown.value.status() == "404"
    not_an_image = triton.InferInput("image", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"plain text, not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"image\[0\].*not an image") as invalid:
        client.infer(MODEL, [not_an_image])
    assert invalid.value.status() == "415"


def _json(body: object) -> tuple[bytes, dict[str, str]]:
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def _binary(head: dict, data: bytes, declared: int | None = None) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(head).encode()
    length = len(encoded) if declared is None else declared
    return encoded + data, {"Inference-Header-Content-Length": str(length)}


def _uint8(shape: list[int], data: object, datatype: str = "UINT8", name: str = "image") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


ZEROS = [0] * (32 * 32 * 3)
UINT8_BINARY = {"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8", "parameters": {"binary_data_size": 3072}}
BYTES_BINARY = {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}
NOT_BASE64 = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}
ONE_FILE = {"name": "image", "shape": [2], "datatype": "BYTES", "data": [base64.b64encode(b"x").decode()]}

# name: ((body, headers), status, what the error names)
MALFORMED: dict[str, tuple[tuple[bytes, dict[str, str]], int, str]] = {
    "not JSON": ((b"{inputs: [", {}), 400, "not valid JSON"),
    "JSON but not an object": (_json([1, 2, 3]), 400, "JSON object"),
    "no inputs": (_json({"outputs": []}), 400, "`inputs` must be a list"),
    "unknown input name": (_json(_uint8([1, 32, 32, 3], ZEROS, name="pixels")), 400, "unknown input 'pixels'"),
    "two inputs": (_json({"inputs": _uint8([1, 32, 32, 3], ZEROS)["inputs"] * 2}), 400, "one input"),
    "wrong datatype": (_json(_uint8([1, 32, 32, 3], ZEROS, datatype="FP32")), 400, "datatype 'FP32'"),
    "wrong shape": (_json(_uint8([1, 3, 32, 32], ZEROS)), 400, "the model takes [N, 32, 32, 3]"),
    "shape and data disagree": (_json(_uint8([2, 32, 32, 3], ZEROS)), 400, "needs 6144 values, `data` holds 3072"),
    "negative dimension": (_json(_uint8([-1, 32, 32, 3], ZEROS)), 400, "non-negative integers"),
    "values over 255": (_json(_uint8([1, 32, 32, 3], [256] * 3072)), 400, "within 0-255"),
    "floats for UINT8": (_json(_uint8([1, 32, 32, 3], [0.5] * 3072)), 400, "must hold integers"),
    "too few values, nested": (_json(_uint8([1, 32, 32, 3], [[1, 2], [3]])), 400, "`data` holds 3"),
    "strings for UINT8 (numpy would make gigabytes of them)": (
        _json(_uint8([1, 32, 32, 3], [["a" * 4000]] + [[""]] * 5_000)),
        400,
        "got str 'aaaa",
    ),
    "a value past 64 bits": (_json(_uint8([1, 32, 32, 3], [2**70, *ZEROS[1:]])), 400, "integers 0-255, got float"),
    "a value of 64 bits": (_json(_uint8([1, 32, 32, 3], [2**64 - 1, *ZEROS[1:]])), 400, "within 0-255, got 1.84e+19"),
    "booleans for UINT8": (_json(_uint8([1, 32, 32, 3], [True, *ZEROS[1:]])), 400, "got bool True"),
    "more lists than values": (_json(_uint8([1, 32, 32, 3], [[[]]] * 7000)), 400, "nests more lists"),
    "output listed twice": (
        _json(_uint8([1, 32, 32, 3], ZEROS) | {"outputs": [{"name": "probabilities"}] * 2}),
        400,
        "lists 2 outputs",
    ),
    "header length of 5,000 digits": (
        (json.dumps(_uint8([1, 32, 32, 3], ZEROS)).encode(), {"Inference-Header-Content-Length": "0" * 5000}),
        400,
        "must be a number of bytes",
    ),
    "compressed body": (
        (json.dumps(_uint8([1, 32, 32, 3], ZEROS)).encode(), {"Content-Encoding": "gzip"}),
        415,
        "not supported",
    ),
    "JSON over its limit": (_json(_uint8([1, 32, 32, 3], [0] * 1_100_000)), 400, "send tensors as binary data"),
    "lists around every value": (_json(_uint8([1, 32, 32, 3], [[[0]]] * 10_000)), 400, "lists; at most 18448"),
    "a million empty BYTES elements": (
        _binary({"inputs": [BYTES_BINARY | {"parameters": {"binary_data_size": 4_000_000}}]}, bytes(4_000_000)),
        400,
        "the data holds more than 1",
    ),
    "no data": (_json({"inputs": [UINT8_BINARY | {"parameters": {}}]}), 400, "has no `data`"),
    "binary size beyond the body": (
        _binary({"inputs": [UINT8_BINARY]}, bytes(100)),
        400,
        "`binary_data_size` is 3072, but 100 bytes follow",
    ),
    "header length beyond the body": (_binary({"inputs": []}, b"", declared=10_000), 400, "the body has only"),
    "binary data nobody claims": (_binary(_uint8([1, 32, 32, 3], ZEROS), bytes(8)), 400, "no input has"),
    "BYTES element longer than the data": (
        _binary({"inputs": [BYTES_BINARY]}, struct.pack("<I", 1000) + b"abcd"),
        400,
        "says 1000 bytes, only 4 follow",
    ),
    "BYTES count disagrees with the shape": (_json({"inputs": [ONE_FILE]}), 400, "says 2 files, the data holds 1"),
    "BYTES in JSON not base64": (_json({"inputs": [NOT_BASE64]}), 400, "base64"),
    "BYTES in JSON not ASCII": (_json({"inputs": [NOT_BASE64 | {"data": ["\u00e9t\u00e9"]}]}), 400, "base64"),
    "an id too long to echo": (_json({"id": "i" * 257, "inputs": [NOT_BASE64]}), 400, "at most 256"),
    "too many images": (_json(_uint8([13, 32, 32, 3], ZEROS * 13)), 413, "the limit is 12"),
    "unknown output": (
        _json(_uint8([1, 32, 32, 3], ZEROS) | {"outputs": [{"name": "logits"}]}),
        400,
        "unknown output 'logits'",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_request_is_a_4xx_json_error(server: str, case: str) -> None:
    (body, headers), status, mention = MALFORMED[case]
    answer = httpx.post(f"{server}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert mention in answer.json()["error"], answer.json()
    # The server still serves.
    good = httpx.post(f"{server}/v2/models/{MODEL}/infer", content=_json(_uint8([1, 32, 32, 3], ZEROS))[0])
    assert good.status_code == 200, good.text
    assert good.json()["outputs"][0]["shape"] == [1, 10]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/another-model/infer", 404),
        (f"/v2/models/{MODEL}/versions/9.9.9/infer", 404),
        (f"/v2/models/{MODEL}/versions/9.9.9", 404),
        (f"/v2/models/{MODEL}/versions/9.9.9/ready", 404),
    ],
)
def test_unknown_models_and_versions_are_404(server: str, path: str, status: int) -> None:
    method = "POST" if path.endswith("/infer") else "GET"
    answer = httpx.request(method, f"{server}{path}", content=_json(_uint8([1, 32, 32, 3], ZEROS))[0])
    assert answer.status_code == status
    assert "error" in answer.json()

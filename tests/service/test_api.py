"""The HTTP API through TestClient, with the lifespan running over the bundled model."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import Settings
from service.inference import OnnxModel
from tests.conftest import encode, noisy_image
from tests.helpers import image_files, png_declaring

RED = (230, 30, 30)


@pytest.fixture(scope="module")
def client(bundled_model: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_path=bundled_model,
        max_images_per_request=4,
        max_image_bytes=200_000,
        max_image_pixels=4_000_000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def photo(seed: int, fmt: str = "PNG") -> bytes:
    return encode(noisy_image((seed * 37 % 256, seed * 91 % 256, seed * 53 % 256), (48, 40), seed=seed), fmt)


def test_predict_one_image(client: TestClient, bundled_model: Path) -> None:
    response = client.post("/predict", files=image_files(("cat.jpg", photo(1, "JPEG"))))
    assert response.status_code == 200, response.text
    body = response.json()
    info = OnnxModel(bundled_model).info
    assert body["model"] == {"name": info.name, "version": info.version, "digest": info.digest}
    assert response.headers["x-model"] == f"{info.name}/{info.version}/{info.digest}"
    (prediction,) = body["predictions"]
    assert prediction["filename"] == "cat.jpg"
    assert prediction["label"] in info.labels
    assert len(prediction["top_k"]) == 3
    assert prediction["top_k"][0] == {"label": prediction["label"], "probability": prediction["probability"]}
    probabilities = [entry["probability"] for entry in prediction["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_several_files_are_answered_in_order_and_match_single_answers(client: TestClient) -> None:
    images = [(f"img{i}.png", photo(i)) for i in range(4)]
    batch = client.post("/predict", files=image_files(*images), params={"top_k": 10}).json()["predictions"]
    assert [p["filename"] for p in batch] == [name for name, _ in images]
    for (name, data), batched in zip(images, batch, strict=True):
        single = client.post("/predict", files=image_files((name, data)), params={"top_k": 10}).json()["predictions"][0]
        assert single["label"] == batched["label"]
        assert np.allclose(
            [e["probability"] for e in single["top_k"]],
            [e["probability"] for e in batched["top_k"]],
            atol=1e-6,
        )


def test_top_k_parameter_is_capped_at_the_number_of_labels(client: TestClient) -> None:
    response = client.post("/predict", files=image_files(("a.png", photo(3))), params={"top_k": 1000})
    top = response.json()["predictions"][0]["top_k"]
    assert len(top) == len(client.get("/model").json()["labels"])
    assert abs(sum(entry["probability"] for entry in top) - 1) < 1e-4


def test_health_ready_and_model_metadata(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["provider"] == "CPUExecutionProvider"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    metadata = client.get("/model").json()
    assert metadata["input"] == {
        "name": "image",
        "shape": [None, 32, 32, 3],
        "dtype": "uint8",
        "layout": "NHWC",
    }
    assert metadata["output"]["shape"] == [None, len(metadata["labels"])]
    assert metadata["providers"] == ["CPUExecutionProvider"]
    assert metadata["resize_filter"] == "bicubic"
    assert health.json()["model"] == ready.json()["model"] == metadata["name"]


def test_readiness_is_503_before_the_model_is_loaded(bundled_model: Path) -> None:
    app = create_app(Settings(model_path=bundled_model))
    not_started = TestClient(app)  # no `with`: the lifespan has not run, so no model is loaded
    ready = not_started.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert not_started.get("/health").status_code == 200
    refused = not_started.post("/predict", files=image_files(("a.png", photo(1))))
    assert refused.status_code == 503
    assert refused.json()["error"] == "not_ready"


def test_openapi_docs_have_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/ready", "/model"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["PredictResponse"]["examples"]
    assert "413" in schema["paths"]["/predict"]["post"]["responses"]


BAD_REQUESTS = [
    # (id, request kwargs, status, error code, text the detail must contain)
    ("no-file", {}, 422, "invalid_request", "files"),
    ("json-body", {"json": {"files": []}}, 422, "invalid_request", "files"),
    ("field-not-a-file", {"data": {"files": "hello"}}, 422, "invalid_request", "files"),
    ("empty-file", {"files": image_files(("empty.png", b""))}, 422, "empty_file", "empty.png"),
    ("text-file", {"files": image_files(("notes.png", b"just text"))}, 415, "invalid_image", "notes.png"),
    (
        "truncated-jpeg",
        {"files": image_files(("cut.jpg", encode(noisy_image(RED, (200, 200)), "JPEG")[:500]))},
        415, "invalid_image", "cut.jpg",
    ),
    (
        "too-many-files",
        {"files": image_files(*[(f"{i}.png", encode(Image.new("RGB", (8, 8)), "PNG")) for i in range(5)])},
        413, "too_many_images", "limit is 4",
    ),
    (
        "file-over-byte-limit",
        {"files": image_files(("big.bmp", encode(noisy_image(RED, (300, 300)), "BMP")))},
        413, "file_too_large", "big.bmp",
    ),
    (
        "pixel-bomb",
        {"files": image_files(("bomb.png", png_declaring(30000, 30000)))},
        413, "image_too_large", "bomb.png",
    ),
    (
        "one-bad-among-good",
        {"files": image_files(("good.png", encode(Image.new("RGB", (8, 8)), "PNG")), ("bad.png", b"\x89PNG nope"))},
        415, "invalid_image", "bad.png",
    ),
    ("top-k-zero", {"files": image_files(("a.png", encode(Image.new("RGB", (8, 8)), "PNG"))), "params": {"top_k": 0}},
     422, "invalid_request", "top_k"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_kwargs", "status", "error", "mention"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_client_error_and_the_server_keeps_serving(
    client: TestClient, request_kwargs: dict, status: int, error: str, mention: str
) -> None:
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert mention in body["detail"]
    follow_up = client.post("/predict", files=image_files(("good.png", photo(7))))
    assert follow_up.status_code == 200


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert client.get("/nope").json()["error"] == "not_found"
    response = client.get("/predict")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_a_request_that_cannot_fit_the_queue_is_refused_with_retry_after(bundled_model: Path) -> None:
    settings = Settings(model_path=bundled_model, queue_capacity=2)
    with TestClient(create_app(settings)) as small_queue:
        refused = small_queue.post("/predict", files=image_files(*[(f"{i}.png", photo(i)) for i in range(3)]))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "overloaded"
        two = image_files(("a.png", photo(1)), ("b.png", photo(2)))
        assert small_queue.post("/predict", files=two).status_code == 200


def test_batching_off_and_large_requests_split_across_batches(bundled_model: Path) -> None:
    images = [(f"img{i}.png", photo(i)) for i in range(7)]
    answers = []
    for batching, max_batch_size in ((True, 32), (False, 3)):
        settings = Settings(model_path=bundled_model, batching=batching, max_batch_size=max_batch_size)
        with TestClient(create_app(settings)) as variant:
            answers.append(variant.post("/predict", files=image_files(*images), params={"top_k": 10}).json())
    assert [p["filename"] for p in answers[1]["predictions"]] == [name for name, _ in images]
    for merged, split in zip(answers[0]["predictions"], answers[1]["predictions"], strict=True):
        assert merged["label"] == split["label"]
        assert abs(merged["probability"] - split["probability"]) < 1e-5


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_server_itself(client: TestClient, page: str) -> None:
    import re

    html = client.get(page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(asset.startswith("/") for asset in assets), assets  # nothing from a CDN
    assert any(asset.endswith(".js") for asset in assets)
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


@pytest.mark.parametrize("path", ["/", "/web/index.html", "/web/app.js", "/web/style.css"])
def test_the_page_and_its_files_carry_its_security_headers(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/web/app.js"])
@pytest.mark.parametrize("byte_range", ["bytes=0-9", "bytes=999999-", "bytes=abc"])
def test_the_page_and_its_files_come_whole_whatever_the_range(client: TestClient, path: str, byte_range: str) -> None:
    # Ranges are ignored (RFC 9110 allows it): a bad one had got Starlette's plain-text 400 or 416.
    whole = client.get(path)
    answer = client.get(path, headers={"Range": byte_range})
    assert (answer.status_code, answer.content) == (200, whole.content)
    assert "content-range" not in answer.headers

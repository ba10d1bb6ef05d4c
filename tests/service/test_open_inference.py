"""The Open Inference Protocol routes through TestClient: the gateway's limits apply to them as to /predict, and
answer in the protocol's error form."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.lifecycle import DrainState

INFER = "/v2/models/cifar10-resnet9/infer"


def request(count: int = 1) -> tuple[bytes, int]:
    """A binary-data infer request for `count` grey images, and the length of its JSON."""
    pixels = np.full((count, 32, 32, 3), 128, dtype=np.uint8).tobytes()
    head = {"inputs": [{"name": "image", "shape": [count, 32, 32, 3], "datatype": "UINT8",
                        "parameters": {"binary_data_size": len(pixels)}}]}  # fmt: skip
    return json.dumps(head).encode() + pixels, len(json.dumps(head).encode())


def post(client: TestClient, count: int = 1, **headers: str) -> httpx.Response:
    body, length = request(count)
    return client.post(INFER, content=body, headers={"Inference-Header-Content-Length": str(length), **headers})


@pytest.fixture(scope="module")
def keyed(bundled_model: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=bundled_model, api_keys=("k",), max_body_bytes=20_000)
    with TestClient(create_app(settings, drain=DrainState())) as client:
        yield client


def test_infer_needs_the_api_key_and_the_health_probes_do_not(keyed: TestClient) -> None:
    refused = post(keyed)
    assert refused.status_code == 401
    assert "X-API-Key" in refused.json()["error"]
    assert refused.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
    assert post(keyed, **{"X-API-Key": "k"}).status_code == 200
    assert keyed.get("/v2/models/cifar10-resnet9").status_code == 401
    for probe in ("/v2/health/live", "/v2/health/ready"):
        assert keyed.get(probe).status_code == 200, probe


def test_the_body_limit_answers_in_the_protocol_s_form(keyed: TestClient) -> None:
    too_large = post(keyed, count=7, **{"X-API-Key": "k"})  # 3 KB of pixels each: over 20,000 bytes
    assert too_large.status_code == 413
    assert too_large.json() == {"error": "the request body is over the limit of 20000 bytes", "code": "body_too_large"}


def test_draining_refuses_infer_with_retry_after_and_readiness_turns_503(bundled_model: Path) -> None:
    drain = DrainState()
    with TestClient(create_app(Settings(model_path=bundled_model), drain=drain)) as client:
        assert post(client).status_code == 200
        drain.start()
        refused = post(client)
        assert refused.status_code == 503
        assert refused.json()["code"] == "shutting_down"
        assert refused.headers["Retry-After"] == "1"
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/models/cifar10-resnet9/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200


def test_metrics_label_infer_by_its_route_template(bundled_model: Path) -> None:
    with TestClient(create_app(Settings(model_path=bundled_model), drain=DrainState())) as client:
        assert post(client, count=2).status_code == 200
        assert client.post("/v2/models/another/infer", content=b"{}").status_code == 404
        metrics = client.get("/metrics").text
    route = 'route="/v2/models/{model_name}/infer"'
    lines = [
        line for line in metrics.splitlines() if line.startswith("classifier_http_requests_total{") and route in line
    ]
    assert any('status="200"' in line and line.endswith(" 1.0") for line in lines), lines
    assert any('status="404"' in line and line.endswith(" 1.0") for line in lines), lines


def test_the_served_name_can_be_set(bundled_model: Path) -> None:
    """As KServe's runtime does, to the InferenceService's name."""
    settings = Settings(model_path=bundled_model, model_name="my-classifier")
    with TestClient(create_app(settings, drain=DrainState())) as client:
        assert client.get("/v2/models/my-classifier/ready").status_code == 200
        assert client.get("/v2/models/cifar10-resnet9/ready").status_code == 404
        body, length = request()
        answer = client.post(
            "/v2/models/my-classifier/infer", content=body, headers={"Inference-Header-Content-Length": str(length)}
        )
        assert answer.status_code == 200
        assert answer.json()["model_name"] == "my-classifier"
        assert client.get("/model").json()["name"] == "my-classifier"


def test_refusals_before_routing_are_labelled_by_the_infer_route(keyed: TestClient) -> None:
    assert post(keyed).status_code == 401  # refused by the gateway, before FastAPI routes it
    metrics = keyed.get("/metrics").text
    route = 'route="/v2/models/{model_name}/infer"'
    assert any(route in line and 'status="401"' in line for line in metrics.splitlines()), metrics


def test_binary_data_output_is_the_default_an_output_may_override(bundled_model: Path) -> None:
    pixels = np.full((1, 32, 32, 3), 7, dtype=np.uint8).flatten().tolist()
    tensor = {"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": pixels}

    def infer(client: TestClient, **request: object) -> str:
        answer = client.post(INFER, content=json.dumps({"inputs": [tensor], **request}))
        assert answer.status_code == 200, answer.text
        return "binary" if "Inference-Header-Content-Length" in answer.headers else "json"

    with TestClient(create_app(Settings(model_path=bundled_model), drain=DrainState())) as client:
        binary = {"binary_data_output": True}
        assert infer(client) == "json"
        assert infer(client, parameters=binary) == "binary"
        assert infer(client, parameters=binary, outputs=[{"name": "probabilities"}]) == "binary"
        assert (
            infer(client, parameters=binary, outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}])
            == "json"
        )
        assert infer(client, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}]) == "binary"

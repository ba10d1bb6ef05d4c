"""Every error is answered from its one row in service.error_responses: it has a status, it is in the OpenAPI
responses of each route that can give it (in that route's API's status), and it is in the docs' table."""

import inspect
import re
from pathlib import Path

import orjson
import pytest

from service import errors
from service.app import create_app
from service.config import Settings
from service.error_responses import ROWS, Api, Where, raw_answer, render

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ServiceError) and cls is not errors.RetryLater  # a base only, never raised itself
]


def where(path: str) -> Where:
    """Which routes a path is, as the rows name them."""
    if path == "/predict":
        return Where.PREDICT
    if path.endswith("/infer"):
        return Where.INFER
    if path == "/model":
        return Where.MODEL
    if path.startswith("/v2/models/"):
        return Where.V2_MODEL
    return Where.OTHER


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_has_its_own_row(cls: type[errors.ServiceError]) -> None:
    assert cls in ROWS, f"{cls.__name__}: add its row to service.error_responses.ROWS"


def test_every_error_is_in_the_openapi_responses_of_the_routes_that_can_give_it(bundled_model: Path) -> None:
    schema = create_app(Settings(model_path=bundled_model)).openapi()
    checked = 0
    for path, operations in schema["paths"].items():
        api = Api.OPEN_INFERENCE if path.startswith("/v2") else Api.PREDICT
        for operation in operations.values():
            for cls, row in ROWS.items():
                if not row.where & where(path):
                    continue
                status = row.open_inference_status if api is Api.OPEN_INFERENCE else None
                response = operation["responses"].get(str(status or row.status))
                assert response is not None, f"{path}: {cls.__name__} ({status or row.status}) is not in its responses"
                assert row.when in response["description"], (path, cls)
                checked += 1
    assert checked > 100


def test_each_api_gets_its_own_body_shape_and_status() -> None:
    invalid = errors.InvalidRequest("`inputs` must be a list")
    predict, v2 = render(invalid, "/predict"), render(invalid, "/v2/models/m/infer")
    assert (predict.status_code, orjson.loads(predict.body)) == (
        422,
        {"error": "invalid_request", "detail": "`inputs` must be a list"},
    )
    assert (v2.status_code, orjson.loads(v2.body)) == (
        400,
        {"error": "`inputs` must be a list", "code": "invalid_request"},
    )
    assert render(errors.QueueFull("full", retry_after_s=2), "/predict").headers["retry-after"] == "2"


def test_the_http_servers_own_refusals_are_whole_answers() -> None:
    answer = raw_answer(errors.TooManyConnections("the server has 10 connections open"))
    head, body = answer.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"retry-after: 1" in head and b"connection: close" in head
    assert int(re.search(rb"content-length: (\d+)", head)[1]) == len(body)  # type: ignore[index]
    assert orjson.loads(body) == {"error": "too_many_connections", "detail": "the server has 10 connections open"}

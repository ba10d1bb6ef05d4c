"""Request ids, the per-request log line, JSON logs and the Prometheus metrics."""

import io
import json
import logging
import logging.config
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.config import Settings
from service.logs import chosen_format, logging_config
from tests.conftest import encode, noisy_image
from tests.helpers import Files, image_files


def upload(count: int) -> Files:
    return image_files(
        *((f"{i}.png", encode(noisy_image((i * 40 % 256, 90, 200), (32, 32), seed=i), "PNG")) for i in range(count))
    )


@pytest.fixture
def client(bundled_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=bundled_model, api_keys=("secret-key",)))) as test_client:
        yield test_client


KEY = {"X-API-Key": "secret-key"}


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("abc-123_x.y:z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
    ],
)
def test_request_id_is_echoed_when_well_formed_else_generated(client: TestClient, sent: str, echoed: bool) -> None:
    returned = client.get("/health", headers={"X-Request-ID": sent}).headers["X-Request-ID"]
    if echoed:
        assert returned == sent
    else:
        assert returned != sent and len(returned) == 32 and int(returned, 16) >= 0


def test_one_log_line_per_request_with_its_figures(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        response = client.post("/predict", files=upload(3), headers=KEY | {"X-Request-ID": "req-42"})
        client.post("/predict", files=upload(1), headers={"X-API-Key": "wrong"})
    assert response.status_code == 200
    first, second = (record for record in caplog.records if record.name == "service.access")
    assert (first.request_id, first.method, first.route, first.status, first.images) == (
        "req-42", "POST", "/predict", 200, 3,
    )  # fmt: skip
    assert first.inference_ms > 0 and first.total_ms >= first.inference_ms and first.queue_wait_ms >= 0
    assert second.status == 403 and second.images == 0
    text = " ".join(record.getMessage() for record in caplog.records)
    assert "secret-key" not in text and "wrong" not in text and "PNG" not in text


def test_json_log_format_writes_one_object_per_line() -> None:
    stream = io.StringIO()
    config = logging_config("info", "json")
    config["handlers"]["service"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        fields = {"request_id": "r1", "route": "/predict", "status": 200, "total_ms": 1.5}
        logging.getLogger("service.access").info("request_id=r1 route=/predict status=200", extra=fields)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    line = json.loads(stream.getvalue().strip())
    assert line["level"] == "INFO" and line["logger"] == "service.access"
    assert (line["request_id"], line["route"], line["status"], line["total_ms"]) == ("r1", "/predict", 200, 1.5)


def written(log_format: str, *records: tuple[str, str, dict[str, object]]) -> list[str]:
    """The lines that (logger, message, extra) records come out as, with the service's logging in `log_format`."""
    stream = io.StringIO()
    config = logging_config("info", log_format)  # type: ignore[arg-type]
    config["handlers"]["service"]["stream"] = config["handlers"]["default"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        for logger, message, extra in records:
            logging.getLogger(logger).info(message, extra=extra)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    return stream.getvalue().splitlines()


# What uvicorn logs as its server starts: a second copy of the message with terminal colour codes, for its own
# coloured formatter.
UVICORN_START = (
    "uvicorn.error",
    "Started server process [7]",
    {"color_message": "Started server process [\x1b[36m7\x1b[0m]"},
)


def test_json_lines_carry_no_colour_codes() -> None:
    (line,) = written("json", UVICORN_START)
    assert "\x1b" not in line and "\\u001b" not in line and "color_message" not in line
    assert json.loads(line)["message"] == "Started server process [7]"


def test_text_lines_are_key_value_for_a_person_to_read() -> None:
    uvicorn_line, service_line = written("text", UVICORN_START, ("service.app", "event=ready model=tiny", {}))
    assert re.fullmatch(r"\S+ \S+ level=INFO pid=\d+ logger=uvicorn.error Started server process \[7\]", uvicorn_line)
    assert re.fullmatch(r"\S+ \S+ level=INFO pid=\d+ logger=service.app event=ready model=tiny", service_line)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("setting", "stream", "chosen"),
    [("auto", Terminal(), "text"), ("auto", io.StringIO(), "json"), ("json", Terminal(), "json"),
     ("text", io.StringIO(), "text")],
)  # fmt: skip
def test_auto_log_format_is_text_on_a_terminal_and_json_elsewhere(
    setting: str, stream: io.StringIO, chosen: str
) -> None:
    assert chosen_format(setting, stream) == chosen  # type: ignore[arg-type]


def test_building_an_app_leaves_logging_as_it_was(bundled_model: Path) -> None:
    switches = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)  # type: ignore[attr-defined]
    handlers = {name: list(logging.getLogger(name).handlers) for name in ("", "service", "uvicorn", "uvicorn.error")}
    create_app(Settings(model_path=bundled_model))
    assert (logging._srcfile, logging.logThreads, logging.logMultiprocessing) == switches  # type: ignore[attr-defined]
    assert {name: list(logging.getLogger(name).handlers) for name in handlers} == handlers


def scrape(client: TestClient) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_after_some_traffic(client: TestClient) -> None:
    for count in (1, 2, 5):
        assert client.post("/predict", files=upload(count), headers=KEY).status_code == 200
    assert client.post("/predict", files=upload(1)).status_code == 401
    client.get("/nowhere", headers=KEY)
    families = scrape(client)

    requests = families["classifier_http_requests"]
    assert value(requests, "classifier_http_requests_total", route="/predict", status="200", method="POST") == 3
    assert value(requests, "classifier_http_requests_total", route="/predict", status="401") == 1
    assert value(requests, "classifier_http_requests_total", route="<unmatched>", status="404") == 1
    durations = families["classifier_http_request_duration_seconds"]
    assert value(durations, "classifier_http_request_duration_seconds_count", route="/predict") == 4
    images = families["classifier_images_per_request"]
    assert value(images, "classifier_images_per_request_sum") == 8
    assert value(images, "classifier_images_per_request_count") == 3
    batches = families["classifier_batch_size"]
    assert value(batches, "classifier_batch_size_sum") == 8
    assert value(families["classifier_queue_wait_seconds"], "classifier_queue_wait_seconds_count") == 8
    assert value(families["classifier_inference_duration_seconds"], "classifier_inference_duration_seconds_count") >= 3
    assert value(families["classifier_queue_depth"], "classifier_queue_depth") == 0
    (info,) = families["classifier_model_info"]
    assert info.value == 1 and info.labels["provider"] == "CPUExecutionProvider" and info.labels["name"]
    assert "classifier_refusals" in families and "classifier_inference_failures" in families


def test_refusals_are_counted_by_reason(bundled_model: Path) -> None:
    with TestClient(create_app(Settings(model_path=bundled_model, queue_capacity=2))) as small:
        assert small.post("/predict", files=upload(3)).status_code == 503
        families = scrape(small)
    assert value(families["classifier_refusals"], "classifier_refusals_total", reason="queue_full") == 1

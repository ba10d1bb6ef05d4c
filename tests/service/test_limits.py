"""Admission control, draining refusal, the request timeout, the body limit and the API key."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette

from service.app import create_app
from service.config import Settings
from service.errors import Overloaded, StartupFailed
from service.gateway import Gateway
from service.lifecycle import DrainState
from service.limits import Admission, BodyBudget
from tests.conftest import encode, noisy_image
from tests.helpers import image_files

RED = (230, 30, 30)


GOOD = image_files(("good.png", encode(noisy_image(RED, (32, 32)), "PNG")))


class Recorder:
    """Collects the ASGI messages a middleware sends."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return next(m["headers"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


async def never_read() -> dict:
    raise AssertionError("the body was read")


def http_scope(path: str = "/predict") -> dict:
    return {"type": "http", "path": path, "method": "POST", "headers": []}


def test_requests_are_refused_before_their_body_is_read_while_every_slot_is_taken() -> None:
    reasons: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> tuple[Recorder, Recorder, Recorder]:
        admission = Admission(limit=2, drain=DrainState())
        control = Gateway(app, admission=admission, admits="/predict".__eq__, on_refused=reasons.append)  # type: ignore[arg-type]
        with admission.slot(), admission.slot():
            assert admission.in_flight == 2
            refused, other_path = Recorder(), Recorder()
            await control(http_scope(), never_read, refused)
            await control(http_scope("/health"), never_read, other_path)  # other paths are never limited
            with pytest.raises(Overloaded):
                admission.slot().__enter__()
        assert admission.in_flight == 0
        admitted = Recorder()
        await control(http_scope(), never_read, admitted)
        return refused, other_path, admitted

    refused, other_path, admitted = asyncio.run(scenario())
    assert refused.status == 503
    assert (b"retry-after", b"1") in refused.headers
    assert b'"error":"overloaded"' in refused.body
    assert other_path.status == 200 and admitted.status == 200
    assert reasons == ["overloaded"]


def test_while_draining_new_requests_are_refused_with_503() -> None:
    drain = DrainState()
    drain.start()
    reasons: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        raise AssertionError("a request reached the app while draining")

    admission = Admission(limit=10, drain=drain)
    control = Gateway(app, admission=admission, admits="/predict".__eq__, on_refused=reasons.append)
    refused = Recorder()
    asyncio.run(control(http_scope(), never_read, refused))  # type: ignore[arg-type]
    assert refused.status == 503
    assert b'"error":"shutting_down"' in refused.body
    assert (b"retry-after", b"1") in refused.headers
    assert reasons == ["shutting_down"]


def test_bodies_of_all_requests_in_progress_share_one_budget() -> None:
    """Counted as received: a held body keeps its bytes until its request ends; another that would go over gets
    503 (at once when its Content-Length says so), and the room comes back when the first one ends."""
    reasons: list[str] = []
    release = asyncio.Event()

    async def app(scope: dict, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/hold":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def body(size: int, chunk: int = 100) -> object:
        parts = [b"x" * chunk] * (size // chunk)

        async def receive() -> dict:
            return {"type": "http.request", "body": parts.pop(), "more_body": bool(parts)}

        return receive

    def scope(path: str, length: int | None = None) -> dict:
        headers = [] if length is None else [(b"content-length", str(length).encode())]
        return {"type": "http", "path": path, "method": "POST", "headers": headers}

    async def scenario() -> list[int]:
        budget = BodyBudget(max_bytes=1000, budget_bytes=1500)
        limit = Gateway(app, bodies=budget, on_refused=reasons.append)
        held = Recorder()
        holding = asyncio.create_task(limit(scope("/hold", 1000), body(1000), held))
        await asyncio.sleep(0.01)
        assert budget.held == 1000
        declared, streamed, fits = Recorder(), Recorder(), Recorder()
        await limit(scope("/x", 600), never_read, declared)  # refused from its Content-Length, unread
        await limit(scope("/x"), body(600), streamed)  # no Content-Length: refused when it goes over
        await limit(scope("/x", 400), body(400), fits)
        release.set()
        await holding
        assert budget.held == 0
        after = Recorder()
        await limit(scope("/x", 1000), body(1000), after)
        return [held.status, declared.status, streamed.status, fits.status, after.status]

    assert asyncio.run(scenario()) == [200, 503, 503, 200, 200]
    assert reasons == ["overloaded", "overloaded"]


def test_a_trickled_upload_is_cut_off_by_the_request_timeout() -> None:
    reasons: list[str] = []

    async def reading_app(scope: dict, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass

    async def trickle() -> dict:
        await asyncio.sleep(0.05)  # one byte every 50 ms, forever
        return {"type": "http.request", "body": b"x", "more_body": True}

    timeout = Gateway(reading_app, timeout_s=0.3, on_refused=reasons.append)
    answered = Recorder()
    asyncio.run(asyncio.wait_for(timeout(http_scope(), trickle, answered), 10))  # type: ignore[arg-type]
    assert answered.status == 504
    assert b'"error":"timeout"' in answered.body
    assert reasons == ["timeout"]


@pytest.fixture(scope="module")
def keyed(bundled_model: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=bundled_model, api_keys=("first-key", "second-key"), max_body_bytes=20_000)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "unauthorized"),
        ({"X-API-Key": "wrong"}, 403, "forbidden"),
        ({"X-API-Key": ""}, 403, "forbidden"),
        ({"X-API-Key": "first-key"}, 200, None),
        ({"X-API-Key": "second-key"}, 200, None),
        ({"x-api-key": "second-key"}, 200, None),
    ],
)
def test_api_key_guards_predict(keyed: TestClient, headers: dict[str, str], status: int, error: str | None) -> None:
    response = keyed.post("/predict", files=GOOD, headers=headers)
    assert response.status_code == status, response.text
    if error:
        assert response.json()["error"] == error
        assert "X-API-Key" in response.json()["detail"]


def test_api_key_guards_model_metadata_but_not_probes_or_metrics(keyed: TestClient) -> None:
    assert keyed.get("/model").status_code == 401
    assert keyed.get("/model", headers={"X-API-Key": "first-key"}).status_code == 200
    for open_path in ("/health", "/ready", "/metrics"):
        assert keyed.get(open_path).status_code == 200, open_path


def test_api_key_open_paths_are_configurable(bundled_model: Path) -> None:
    settings = Settings(model_path=bundled_model, api_keys=("k",), api_key_open_paths=("/health",))
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/health").status_code == 200


def test_body_over_the_total_limit_is_refused_with_413(keyed: TestClient) -> None:
    big = image_files(*[(f"{i}.bmp", encode(noisy_image(RED, (64, 64), seed=i), "BMP")) for i in range(3)])  # ~37 KB
    response = keyed.post("/predict", files=big, headers={"X-API-Key": "first-key"})
    assert response.status_code == 413
    assert response.json() == {
        "error": "body_too_large",
        "detail": "the request body is over the limit of 20000 bytes",
    }
    assert keyed.post("/predict", files=GOOD, headers={"X-API-Key": "first-key"}).status_code == 200


def test_body_limit_holds_without_content_length_while_streaming(keyed: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        # A valid multipart start, then 100 KB of one file's data, streamed (chunked: no Content-Length).
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.bmp"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 1000
        yield b"\r\n--b--\r\n"

    response = keyed.post(
        "/predict",
        content=chunks(),
        headers={"X-API-Key": "first-key", "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413


def test_a_fault_of_ours_is_a_json_500_with_the_request_id() -> None:
    async def broken(scope: dict, receive: object, send: object) -> None:
        raise RuntimeError("a bug")

    answered = Recorder()
    scope = http_scope() | {"headers": [(b"x-request-id", b"request-42")]}
    asyncio.run(Gateway(broken)(scope, None, answered))  # type: ignore[arg-type]
    assert answered.status == 500
    assert (b"x-request-id", b"request-42") in answered.headers
    assert b'"error":"internal_error"' in answered.body and b"request-42" in answered.body


def test_a_content_length_of_thousands_of_digits_is_too_large_not_a_fault() -> None:
    budget = BodyBudget(max_bytes=1000)
    scope = http_scope() | {"headers": [(b"content-length", b"0" * 5000 + b"1")]}
    refusal = budget.refusal(scope)
    assert refusal is not None and refusal.error == "body_too_large"


def test_with_api_keys_the_docs_stay_open_and_offer_the_key(keyed: TestClient) -> None:
    for path in ("/", "/web/app.js", "/docs", "/redoc", "/openapi.json", "/static-offline-docs/swagger-ui.css"):
        assert keyed.get(path).status_code == 200, path
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schema["security"] == [{"ApiKey": []}]
    assert keyed.get("/web/../predict").status_code in (401, 404)


def startup_failed_message(error: Exception) -> str:
    """What the Gateway passes the server (uvicorn logs it) when the app's lifespan raises `error` at startup."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise error
        yield

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "lifespan.startup"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def start() -> None:
        await Gateway(Starlette(lifespan=lifespan))({"type": "lifespan", "state": {}}, receive, send)

    with pytest.raises(type(error)):
        asyncio.run(start())
    (failed,) = sent
    assert failed["type"] == "lifespan.startup.failed"
    return str(failed["message"])


def test_a_startup_failure_already_logged_gets_no_traceback_and_any_other_keeps_it() -> None:
    assert startup_failed_message(StartupFailed("the model file could not be loaded")) == ""
    unexpected = startup_failed_message(RuntimeError("a bug"))
    assert "Traceback" in unexpected and "RuntimeError: a bug" in unexpected

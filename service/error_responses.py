"""How each of the service's errors is answered over HTTP, from one table (ROWS): its status, its headers, its body
in the shape of the API it answers (`/predict`'s or the Open Inference Protocol's), the OpenAPI `responses` of
every route, and the docs' table of errors. Adding an error is its class in `service.errors` and its row here."""

import enum
import http
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson
from pydantic import BaseModel

from service.asgi import JsonResponse
from service.errors import (
    BatcherStopped,
    BodyOverBudget,
    BodyStalled,
    BodyTooLarge,
    ClientDisconnected,
    EmptyFile,
    FileTooLarge,
    Forbidden,
    ImageTooLarge,
    InferenceFailed,
    InvalidImage,
    InvalidRequest,
    LoadInProgress,
    MalformedBody,
    MalformedHttp,
    MethodNotAllowed,
    ModelControlOff,
    ModelRefused,
    NotReady,
    OtherHttpError,
    Overloaded,
    QueueFull,
    QueueTimeout,
    RequestHeadTimeout,
    RequestHeadTooLarge,
    RequestTimedOut,
    RetryLater,
    RouteNotFound,
    ServiceError,
    ShuttingDown,
    TooManyConnections,
    TooManyHeaders,
    TooManyImages,
    TooManyPipelined,
    TrailersTooLarge,
    Unauthorized,
    UnknownModel,
    UnsupportedEncoding,
)
from service.schemas import ErrorResponse, ProtocolErrorResponse

OPEN_INFERENCE_PREFIX = "/v2"
"""The Open Inference Protocol's paths: errors under it are answered in that protocol's shape."""


class Api(enum.Enum):
    """The shape of an error's body: `/predict`'s (and every route outside /v2) or the Open Inference Protocol's."""

    PREDICT = "predict"  # {"error": code, "detail": text}
    OPEN_INFERENCE = "open_inference"  # {"error": text, "code": code}: its clients show `error`


class Where(enum.Flag):
    """The routes an error can come from."""

    NOWHERE = 0  # no route's answer: the HTTP server's own refusals, and what is only logged
    PREDICT = enum.auto()  # POST /predict
    INFER = enum.auto()  # POST /v2/models/{name}/infer
    MODEL = enum.auto()  # GET /model
    V2_MODEL = enum.auto()  # the v2 model routes: GET /v2/models/{name}[/versions/{version}][/ready]
    REPOSITORY = enum.auto()  # the v2 model repository: POST /v2/repository/index, .../models/{name}/load, /unload
    OTHER = enum.auto()  # every other route
    CLASSIFY = PREDICT | INFER
    ANY = PREDICT | INFER | MODEL | V2_MODEL | REPOSITORY | OTHER


@dataclass(frozen=True)
class Row:
    status: int
    when: str
    """What the client did (or what happened), for the OpenAPI description and the docs."""
    where: Where
    open_inference_status: int | None = None
    """The protocol answers every malformed request with 400, where `/predict` tells a body it cannot parse (400)
    from one it does not take (422)."""


ROWS: Mapping[type[ServiceError], Row] = MappingProxyType(
    {
        MalformedBody: Row(400, "A body that cannot be parsed (multipart, JSON)", Where.CLASSIFY),
        MalformedHttp: Row(
            400, "Bytes that are not an HTTP/1.1 request (a bad request line, a NUL in a header)", Where.NOWHERE
        ),
        InvalidRequest: Row(
            422,
            "Not what the route takes: no file, a form field instead of a file, an invalid parameter, a wrong input, "
            "datatype or shape",
            Where.CLASSIFY,
            open_inference_status=400,
        ),
        EmptyFile: Row(422, "A zero-byte file", Where.CLASSIFY, open_inference_status=400),
        Unauthorized: Row(401, "No API key where keys are set", Where.ANY),
        Forbidden: Row(403, "An API key that is not one of the keys", Where.ANY),
        TooManyPipelined: Row(
            400, "More than max_pipelined_requests requests sent ahead of their answers", Where.NOWHERE
        ),
        UnknownModel: Row(
            404,
            "Not the model (or version) this server serves or its repository holds",
            Where.INFER | Where.V2_MODEL | Where.REPOSITORY,
        ),
        RouteNotFound: Row(404, "No such route", Where.NOWHERE),
        ModelControlOff: Row(403, "The model repository API is off (model_control is not explicit)", Where.REPOSITORY),
        ModelRefused: Row(
            422,
            "The new model failed a check; the served model keeps serving",
            Where.REPOSITORY,
            open_inference_status=400,
        ),
        LoadInProgress: Row(409, "Another model load is in progress", Where.REPOSITORY),
        MethodNotAllowed: Row(405, "A method the route does not take", Where.NOWHERE),
        OtherHttpError: Row(400, "Another HTTP error of the web framework's, with its own status", Where.NOWHERE),
        BodyStalled: Row(408, "The upload made no progress for body_idle_timeout_s", Where.CLASSIFY),
        RequestHeadTimeout: Row(408, "The request line and headers took longer than head_timeout_s", Where.NOWHERE),
        TooManyImages: Row(413, "More files than max_images_per_request", Where.CLASSIFY),
        FileTooLarge: Row(413, "A file over max_image_bytes", Where.CLASSIFY),
        ImageTooLarge: Row(
            413,
            "An image over the pixel or decode-memory limit, or over the CPU time a request may use to decode",
            Where.CLASSIFY,
        ),
        BodyTooLarge: Row(413, "A body over max_body_bytes", Where.ANY),
        InvalidImage: Row(415, "A file that is not a decodable image", Where.CLASSIFY),
        UnsupportedEncoding: Row(415, "A compressed request body (Content-Encoding)", Where.INFER),
        RequestHeadTooLarge: Row(431, "A request line and headers over max_head_bytes", Where.NOWHERE),
        TrailersTooLarge: Row(431, "Trailers (or chunk headers) over max_head_bytes", Where.NOWHERE),
        TooManyHeaders: Row(431, "More than max_headers headers", Where.NOWHERE),
        ClientDisconnected: Row(499, "The client left before its answer (only logged: nobody reads it)", Where.NOWHERE),
        ServiceError: Row(500, "A fault of the server's, logged under the request id", Where.ANY),
        InferenceFailed: Row(500, "The model failed on the batch holding this request's images", Where.CLASSIFY),
        NotReady: Row(503, "The model is not loaded or warmed up yet", Where.CLASSIFY | Where.MODEL | Where.V2_MODEL),
        Overloaded: Row(503, "Already max_concurrent_requests requests in progress (Retry-After)", Where.CLASSIFY),
        QueueFull: Row(503, "No room in the batch queue for this request's images (Retry-After)", Where.CLASSIFY),
        BodyOverBudget: Row(503, "The bodies in progress would go over body_memory_bytes (Retry-After)", Where.ANY),
        ShuttingDown: Row(503, "The server is draining: retry on another replica (Retry-After)", Where.ANY),
        BatcherStopped: Row(503, "Inference stopped; the process exits to be restarted (Retry-After)", Where.CLASSIFY),
        TooManyConnections: Row(503, "The process has max_connections connections open (Retry-After)", Where.NOWHERE),
        QueueTimeout: Row(504, "The request's images waited in the queue past queue_timeout_ms", Where.CLASSIFY),
        RequestTimedOut: Row(504, "The request took longer than request_timeout_s, its upload included", Where.ANY),
    }
)
"""Every error's row; `tests/service/test_error_responses.py` checks that no error class is missing."""

_STARLETTE: Mapping[int, type[ServiceError]] = MappingProxyType(
    {400: MalformedBody, 404: RouteNotFound, 405: MethodNotAllowed, 413: BodyTooLarge}
)


def _row(error: ServiceError) -> Row:
    for cls in type(error).__mro__:
        if cls in ROWS:
            return ROWS[cls]
    raise AssertionError("ServiceError has a row")  # pragma: no cover: every class derives from it


def http_status(error: ServiceError, api: Api = Api.PREDICT) -> int:
    """`error`'s HTTP status in `api`."""
    row = _row(error)
    if api is Api.OPEN_INFERENCE and row.open_inference_status is not None:
        return row.open_inference_status
    return row.status


def http_headers(error: ServiceError) -> dict[str, str]:
    """The headers an error's answer carries: Retry-After for a refusal to retry, the API key's challenge."""
    if isinstance(error, RetryLater):
        return {"Retry-After": str(error.retry_after_s)}
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": f'ApiKey header="{error.header}"'}
    return {}


def api_at(path: str) -> Api:
    """Which API a request path belongs to."""
    return Api.OPEN_INFERENCE if path.startswith(OPEN_INFERENCE_PREFIX) else Api.PREDICT


def body(error: ServiceError, api: Api) -> dict[str, str]:
    """The error's JSON body in `api`'s shape."""
    if api is Api.OPEN_INFERENCE:
        return {"error": error.detail, "code": error.error}
    return {"error": error.error, "detail": error.detail}


def render(error: ServiceError, path: str, headers: Mapping[str, str] | None = None) -> JsonResponse:
    """The answer to a request for `path` that ended in `error`."""
    api = api_at(path)
    return JsonResponse(body(error, api), http_status(error, api), {**http_headers(error), **(headers or {})})


def from_starlette(status: int, detail: str) -> ServiceError:
    """Starlette's HTTPException (no route, a method not allowed, ...) as one of ours; a status it has no class for
    keeps its number through `render`'s caller."""
    return _STARLETTE.get(status, OtherHttpError)(detail)


def raw_answer(error: ServiceError) -> bytes:
    """A whole HTTP/1.1 answer for the HTTP server's own refusals (no route, no app: `/predict`'s shape), closing
    the connection."""
    status = http_status(error)
    content = orjson.dumps(body(error, Api.PREDICT))
    headers = {"content-type": "application/json", "content-length": str(len(content)), "connection": "close"}
    headers |= {name.lower(): value for name, value in http_headers(error).items()}
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content


def openapi_responses(where: Where, api: Api = Api.PREDICT) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that answers `api` and is one of `where`: every error it can give,
    grouped by status."""
    statuses: dict[int, list[str]] = {}
    for row in ROWS.values():
        if row.where & where:
            v2_status = row.open_inference_status if api is Api.OPEN_INFERENCE else None
            statuses.setdefault(v2_status or row.status, []).append(row.when)
    model = ProtocolErrorResponse if api is Api.OPEN_INFERENCE else ErrorResponse
    return {status: {"model": model, "description": "; ".join(whens)} for status, whens in sorted(statuses.items())}


def readiness_responses(
    responses: dict[int | str, dict[str, Any]], model: type[BaseModel]
) -> dict[int | str, dict[str, Any]]:
    """A readiness route's `responses`: its 503 is its own answer (`model`), before the errors it shares."""
    shared = responses.get(503, {}).get("description")
    description = "Not loaded or warmed up yet, or draining" + (f"; {shared}" if shared else "")
    return responses | {503: {"model": model, "description": description}}


def markdown_table() -> str:
    """The docs' table of errors (docs/api.md), a line per error."""
    lines = ["| Status | `error` (`code` in v2) | When |", "|---|---|---|"]
    for cls, row in sorted(ROWS.items(), key=lambda item: (item[1].status, item[0].error)):
        status = f"{row.status} (v2: {row.open_inference_status})" if row.open_inference_status else str(row.status)
        lines.append(f"| {status} | `{cls.error}` | {row.when} |")
    return "\n".join(lines) + "\n"

"""The Open Inference Protocol (KServe v2 REST, as Triton and MLServer speak it) beside `/predict`: health,
metadata and `infer`, with Triton's binary tensor data and classification extensions. It calls the same
classification pipeline as `/predict` (`service.pipeline`); here is only the protocol: reading a request into
images, and writing probabilities back as tensors.

Inputs: the model's own tensor, `UINT8` `[N, height, width, 3]` (JSON data, flat or nested, or binary); or, as
this service's extension, a `BYTES` tensor `[N]` of encoded image files (binary: each a 4-byte little-endian
length and its bytes; JSON: base64 strings), decoded exactly as `/predict` decodes uploads. Output: `FP32`
probabilities `[N, classes]`, or with the `classification` parameter the top k as `BYTES` strings
`score:index:label`. Errors are `{"error": message, "code": code}`, the message being what the protocol's clients
show."""

import asyncio
import base64
import binascii
import contextlib
import math
import re
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.asgi import JsonResponse, header
from service.error_responses import OPEN_INFERENCE_PREFIX, Api, Where, openapi_responses, readiness_responses
from service.errors import (
    FileTooLarge,
    InvalidRequest,
    MalformedBody,
    ModelControlOff,
    NotReady,
    TooManyImages,
    UnknownModel,
    UnsupportedEncoding,
)
from service.frontend import MODEL_HEADER, PlainRoute, classify, model_header, upload
from service.inference import ModelInfo, ranked
from service.limits import MAX_BYTE_COUNT_DIGITS, CountedBody
from service.schemas import ModelReadyResponse, ServerLiveResponse, ServerReadyResponse
from service.serving import Serving
from service.uploads import INLINE_BODY_BYTES

PREFIX = OPEN_INFERENCE_PREFIX
EXTENSIONS = ("binary_tensor_data", "classification", "image_bytes")
"""Listed in the server metadata: Triton's binary data and classification extensions, and our BYTES input of
encoded image files."""

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_JSON_BYTES = 2 * 1024 * 1024
"""Most bytes of JSON in one infer request. JSON costs far more to hold and read than to send (an object per
list, an entry per number); the largest UINT8 request, 64 images of 32x32x3 nested as the shape is, is about
1.2 MB. Send larger inputs as binary data, as the official clients do by default."""


def json_parser() -> ThreadPoolExecutor:
    """The thread large requests are read on (the app opens it in its lifespan as `app.state.json_parser`, and
    shuts it down after): one at a time, so that their parsing memory does not add up."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="v2-parse")


_LENGTH = struct.Struct("<I")
_END = object()


# ---- reading an infer request ----


MAX_ID_CHARS = 256
"""Longest request `id` accepted: it is echoed in the answer, so a long one is held again for every slow reader."""


@dataclass
class InferRequest:
    """An infer request, read and checked: its images (pixels, or encoded files) and what the answer holds."""

    id: str | None
    pixels: np.ndarray | None = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    binary_output: bool = False
    classification: int = 0


def read_request(body: bytes | bytearray, header_length: int | None, info: ModelInfo, max_images: int,
                 max_file_bytes: int) -> InferRequest:  # fmt: skip
    """Parse `body` (JSON, then binary tensor data when `header_length` says where the JSON ends) into images for
    `info`'s model; InvalidRequest or MalformedBody naming what is wrong."""
    if header_length is None:
        header_length = len(body)
    if header_length > len(body):
        raise MalformedBody(f"{HEADER_LENGTH} is {header_length}, but the body has only {len(body)} bytes")
    if header_length > MAX_JSON_BYTES:
        raise InvalidRequest(
            f"the request's JSON is {header_length} bytes; at most {MAX_JSON_BYTES} are accepted: send tensors as "
            "binary data (the binary tensor data extension)"
        )
    # Lists are what JSON costs most to read (3.5 MB of values each wrapped in two lists: 1.7 s, the event loop's
    # lock held throughout): no more than half as many as the largest request has values (the shape's own
    # nesting needs a third), counted before parsing.
    most_lists = max_images * info.height * info.width * 3 // 2 + 16
    if (lists := body.count(b"[", 0, header_length)) > most_lists:
        raise InvalidRequest(f"the request's JSON opens {lists} lists; at most {most_lists} are accepted")
    try:
        request = orjson.loads(memoryview(body)[:header_length])
    except orjson.JSONDecodeError as error:
        raise MalformedBody(f"the request is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise InvalidRequest("the request must be a JSON object with `inputs`")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("`id` must be a string")
    if request_id is not None and len(request_id) > MAX_ID_CHARS:
        raise InvalidRequest(f"`id` is {len(request_id)} characters; at most {MAX_ID_CHARS} are accepted")
    parameters = _object(request.get("parameters"), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest(f"`inputs` must be a list holding the input {info.input_name!r}")
    if len(inputs) != 1:
        raise InvalidRequest(f"the model has one input, {info.input_name!r}; the request has {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidRequest("each input must be a JSON object")
    if tensor.get("name") != info.input_name:
        raise InvalidRequest(f"unknown input {tensor.get('name')!r}; the model's input is {info.input_name!r}")
    binary = memoryview(body)[header_length:]  # not a copy: each file is copied out of it once
    result = InferRequest(id=request_id)
    _read_input(tensor, binary, info, max_images, max_file_bytes, result)
    result.binary_output = parameters.get("binary_data_output") is True
    _read_outputs(request.get("outputs"), info, result)
    return result


def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (not a boolean, which Python counts as an int)."""
    return type(value) is int and value >= 0


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"`{what}` must be a JSON object")
    return value


def _read_input(tensor: dict[str, Any], binary: memoryview, info: ModelInfo, max_images: int, max_file_bytes: int,
                result: InferRequest) -> None:  # fmt: skip
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise InvalidRequest(f"input {name!r}: `shape` must be a list of non-negative integers, got {shape!r}")
    parameters = _object(tensor.get("parameters"), f"inputs[{name}].parameters")
    if "shared_memory_region" in parameters:
        raise InvalidRequest(f"input {name!r}: shared memory is not supported; send the data in the request")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not _is_count(size):
            raise InvalidRequest(f"input {name!r}: `binary_data_size` must be a non-negative integer")
        if size != len(binary):
            raise InvalidRequest(
                f"input {name!r}: `binary_data_size` is {size}, but {len(binary)} bytes follow the JSON"
            )
        if "data" in tensor:
            raise InvalidRequest(f"input {name!r}: both `data` and `binary_data_size`")
    elif binary:
        raise InvalidRequest(f"{len(binary)} bytes follow the JSON, but no input has `binary_data_size`")
    elif "data" not in tensor:
        raise InvalidRequest(f"input {name!r} has no `data` (nor `binary_data_size`)")
    if not shape or shape[0] < 1:
        raise InvalidRequest(f"input {name!r}: `shape` must start with the number of images (at least 1)")
    if shape[0] > max_images:
        raise TooManyImages(f"input {name!r}: {shape[0]} images in one request; the limit is {max_images}")
    if datatype == "UINT8":
        result.pixels = _pixels(tensor, binary if size is not None else None, shape, info)
    elif datatype == "BYTES":
        if len(shape) != 1:
            raise InvalidRequest(f"input {name!r}: a BYTES input has shape [N] (one file per image), got {shape}")
        files = (
            _split_bytes(binary, name, shape[0])
            if size is not None
            else _base64_elements(tensor["data"], name, shape[0])
        )
        if len(files) != shape[0]:
            held = f"more than {shape[0]}" if len(files) > shape[0] else str(len(files))
            raise InvalidRequest(f"input {name!r}: shape {shape} says {shape[0]} files, the data holds {held}")
        for index, data in enumerate(files):
            if len(data) > max_file_bytes:
                raise FileTooLarge(
                    f"{name}[{index}] is {len(data)} bytes; the limit is {max_file_bytes} bytes per file"
                )
        result.files = [(f"{name}[{index}]", data) for index, data in enumerate(files)]
    else:
        raise InvalidRequest(
            f"input {name!r}: datatype {datatype!r} is not accepted; send UINT8 pixels [N, {info.height}, "
            f"{info.width}, 3] or BYTES image files [N]"
        )


def _pixels(tensor: dict[str, Any], binary: memoryview | None, shape: list[int], info: ModelInfo) -> np.ndarray:
    name = tensor["name"]
    expected = [shape[0], info.height, info.width, 3]
    if shape != expected:
        raise InvalidRequest(f"input {name!r}: shape {shape}, the model takes [N, {info.height}, {info.width}, 3]")
    count = math.prod(shape)
    if binary is not None:
        if len(binary) != count:
            raise InvalidRequest(f"input {name!r}: shape {shape} needs {count} bytes of UINT8, got {len(binary)}")
        return np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    return np.array(_uint8_values(tensor["data"], count, name), dtype=np.uint8).reshape(shape)


def _uint8_values(data: Any, count: int, name: str) -> list[int]:
    """The integers of `data` (a list, flat or nested in any way), in order, checked as they are read: each an int
    within 0-255, `count` of them, and at most twice as many nested lists besides. Reading stops at the first thing
    wrong, so a hostile list costs no more than a valid one (numpy would first build whatever array it
    describes: a list of long strings becomes gigabytes)."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input {name!r}: UINT8 `data` must be a list of integers (flat or nested)")
    values: list[int] = []
    lists = 0
    pending = [iter(data)]
    while pending and len(values) <= count:
        item = next(pending[-1], _END)
        if item is _END:
            pending.pop()
        elif type(item) is int:
            if not 0 <= item <= 255:
                raise InvalidRequest(f"input {name!r}: UINT8 values must be within 0-255, got {item:.3g}")
            values.append(item)
        elif type(item) is list:
            lists += 1
            if lists > 2 * count:
                raise InvalidRequest(f"input {name!r}: `data` nests more lists than it has values")
            pending.append(iter(item))
        else:
            raise InvalidRequest(
                f"input {name!r}: UINT8 `data` must hold integers 0-255, got {type(item).__name__} {item!r:.40}"
            )
    if len(values) != count:
        held = f"more than {count}" if len(values) > count else str(len(values))
        raise InvalidRequest(f"input {name!r}: the shape needs {count} values, `data` holds {held}")
    return values


def _split_bytes(binary: memoryview, name: str, expected: int) -> list[bytes]:
    """A BYTES tensor's binary data: each element a 4-byte little-endian length, then that many bytes. Stops past
    `expected` elements (the caller then reports the count), so zero-length elements cost no more than real ones."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(binary) and len(elements) <= expected:
        if offset + _LENGTH.size > len(binary):
            raise InvalidRequest(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(binary, offset)
        offset += _LENGTH.size
        if offset + length > len(binary):
            raise InvalidRequest(
                f"input {name!r}: BYTES element {len(elements)} says {length} bytes, only {len(binary) - offset} follow"
            )
        elements.append(bytes(binary[offset : offset + length]))
        offset += length
    return elements


def _base64_elements(data: Any, name: str, expected: int) -> list[bytes]:
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise InvalidRequest(f"input {name!r}: BYTES `data` in JSON must be a list of base64 strings (one per file)")
    if len(data) != expected:
        return [b""] * min(len(data), expected + 1)  # the caller reports the count; nothing decoded
    try:
        return [base64.b64decode(item, validate=True) for item in data]
    except (binascii.Error, ValueError):  # ValueError: a character outside ASCII
        raise InvalidRequest(f"input {name!r}: BYTES `data` in JSON must be base64 strings") from None


def _read_outputs(outputs: Any, info: ModelInfo, result: InferRequest) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(isinstance(output, dict) for output in outputs):
        raise InvalidRequest("`outputs` must be a list of JSON objects")
    if len(outputs) > 1:
        raise InvalidRequest(f"`outputs` lists {len(outputs)} outputs; the model has one, {info.output_name!r}")
    for output in outputs:
        if output.get("name") != info.output_name:
            raise InvalidRequest(f"unknown output {output.get('name')!r}; the model's output is {info.output_name!r}")
        parameters = _object(output.get("parameters"), f"outputs[{info.output_name}].parameters")
        if "shared_memory_region" in parameters:
            raise InvalidRequest("shared memory is not supported; the output comes back in the response")
        if "binary_data" in parameters:  # else the request's binary_data_output holds
            result.binary_output = parameters["binary_data"] is True
        classes = parameters.get("classification", 0)
        if not _is_count(classes):
            raise InvalidRequest("`classification` must be a non-negative integer")
        result.classification = min(classes, len(info.labels))


# ---- writing the answer ----


def response(request: InferRequest, probabilities: np.ndarray, info: ModelInfo) -> Response:
    """The infer response: the probabilities (or their top k as strings), in JSON or as binary tensor data."""
    if request.classification:
        rows = ranked(probabilities, request.classification)
        strings = [
            f"{probabilities[row, index]:.6f}:{index}:{info.labels[index]}".encode()
            for row, indices in enumerate(rows)
            for index in indices
        ]
        datatype, shape = "BYTES", [len(probabilities), request.classification]
        raw = b"".join(_LENGTH.pack(len(s)) + s for s in strings) if request.binary_output else None
        data: list[Any] = [s.decode() for s in strings]
    else:
        datatype, shape = "FP32", list(probabilities.shape)
        raw = probabilities.astype("<f4").tobytes() if request.binary_output else None
        data = probabilities.ravel().tolist()
    output: dict[str, Any] = {"name": info.output_name, "datatype": datatype, "shape": shape}
    answer: dict[str, Any] = {
        "model_name": info.name,
        "model_version": info.version,
        "parameters": {"model_digest": info.digest},
        "outputs": [output],
    }
    if request.id is not None:
        answer["id"] = request.id
    headers = {MODEL_HEADER: model_header(info)}
    if raw is None:
        output["data"] = data
        return JsonResponse(answer, headers=headers)
    output["parameters"] = {"binary_data_size": len(raw)}
    head = orjson.dumps(answer)
    headers[HEADER_LENGTH] = str(len(head))
    return Response(head + raw, media_type="application/octet-stream", headers=headers)


# ---- routes ----

router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol (v2)"])


def _model(request: Request, name: str, version: str | None) -> ModelInfo:
    """The served model if `name` (and `version`, if given) are its own, else UnknownModel (404); NotReady (503)
    before it is loaded."""
    serving: Serving = request.app.state.serving
    model = serving.model
    if model is None:
        raise NotReady("the model is not loaded yet")
    info: ModelInfo = model.info
    if not serving.answers_to(name):
        raise UnknownModel(f"unknown model {name!r}; this server serves {info.name!r}")
    if version is not None and version != info.version:
        raise UnknownModel(f"model {name!r} has no version {version!r}; it has {info.version!r}")
    return info


_MODEL_ERRORS = openapi_responses(Where.V2_MODEL, Api.OPEN_INFERENCE)
_INFER_ERRORS = openapi_responses(Where.INFER, Api.OPEN_INFERENCE)
_OTHER_ERRORS = openapi_responses(Where.OTHER, Api.OPEN_INFERENCE)
_SERVER_METADATA: dict[int | str, dict[str, Any]] = {200: {"description": "name, version and extensions"}}
_NOT_READY = readiness_responses(_OTHER_ERRORS, ServerReadyResponse)


@router.get("", summary="Server metadata", responses=_SERVER_METADATA | _OTHER_ERRORS)
async def server_metadata(request: Request) -> JsonResponse:
    """The server's name, version and protocol extensions."""
    return JsonResponse({"name": "image-classifier", "version": request.app.version, "extensions": list(EXTENSIONS)})


@router.get("/health/live", summary="Server liveness", response_model=ServerLiveResponse, responses=_OTHER_ERRORS)
async def server_live() -> JsonResponse:
    """200 while the process runs."""
    return JsonResponse({"live": True})


@router.get(
    "/health/ready",
    summary="Server readiness",
    response_model=ServerReadyResponse,
    responses=_NOT_READY,
)
async def server_ready(request: Request) -> JsonResponse:
    """200 once the model is loaded and warmed up; 503 before, and while draining."""
    serving = request.app.state.serving.serving
    return JsonResponse({"ready": serving}, 200 if serving else 503)


@router.get(
    "/models/{model_name}/ready",
    summary="Model readiness",
    response_model=ModelReadyResponse,
    responses=_MODEL_ERRORS,
)
@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    summary="Model version readiness",
    response_model=ModelReadyResponse,
    responses=_MODEL_ERRORS,
)
async def model_ready(request: Request, model_name: str, model_version: str | None = None) -> JsonResponse:
    """200 if this is the served model and it is ready; 404 for another model, 503 while not ready."""
    info = _model(request, model_name, model_version)
    if not request.app.state.serving.serving:
        raise NotReady(f"the model {info.name!r} is not ready (loading, or the server is draining)")
    return JsonResponse({"name": info.name, "ready": True})


_METADATA: dict[int | str, dict[str, Any]] = {
    200: {"description": "name, versions, platform, inputs and outputs, and parameters"}
}


@router.get("/models/{model_name}", summary="Model metadata", responses=_METADATA | _MODEL_ERRORS)
@router.get(
    "/models/{model_name}/versions/{model_version}",
    summary="Model version metadata",
    responses=_METADATA | _MODEL_ERRORS,
)
async def model_metadata(request: Request, model_name: str, model_version: str | None = None) -> JsonResponse:
    """The model's inputs and outputs. Besides its UINT8 pixels, the input takes BYTES image files [N] (this
    service's extension, named in `parameters`)."""
    info = _model(request, model_name, model_version)
    return JsonResponse(
        {
            "name": info.name,
            "versions": [info.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": info.input_name, "datatype": "UINT8", "shape": [-1, info.height, info.width, 3]}],
            "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, len(info.labels)]}],
            "parameters": {
                "labels": ",".join(info.labels),
                "image_bytes": f"the input {info.input_name!r} also takes datatype BYTES, shape [N]: encoded image "
                "files (JPEG, PNG, WebP, GIF, BMP, TIFF), decoded and resized as POST /predict does (an extension "
                "of this service)",
            },
        }
    )


async def infer(request: Request) -> Response:
    """Classify a tensor of images: UINT8 pixels or BYTES image files, in JSON or binary tensor data."""
    params = request.path_params
    info = _model(request, params["model_name"], params.get("model_version"))
    if header(request.scope, b"content-encoding") not in (None, b"identity"):
        raise UnsupportedEncoding("compressed request bodies are not supported; send the request uncompressed")
    declared = header(request.scope, HEADER_LENGTH.lower().encode())
    header_length = None
    if declared is not None:
        if not declared.isdigit() or len(declared) > MAX_BYTE_COUNT_DIGITS:
            raise InvalidRequest(f"{HEADER_LENGTH} must be a number of bytes")
        header_length = int(declared)
    body = bytearray()  # grown in place: one copy of the body, as the body budget counts it
    async for chunk in upload(request):
        body += chunk
    settings = request.app.state.settings
    limits = (info, settings.max_images_per_request, settings.max_image_bytes)
    # The files are copied out of the body (then the body is dropped): both are held meanwhile, and both count.
    copies = request.receive.copy_held if isinstance(request.receive, CountedBody) else _nothing_more
    with copies(len(body) - min(header_length or len(body), len(body))):
        # JSON costs far more to read than to send (an 8 MiB list of numbers: 0.35 s): past a small body, on a thread.
        parsed = (
            read_request(body, header_length, *limits)
            if len(body) <= INLINE_BODY_BYTES
            else await asyncio.get_running_loop().run_in_executor(
                request.app.state.json_parser, read_request, body, header_length, *limits
            )
        )
        if parsed.pixels is None:
            del body  # the files are copies; binary pixels are a view of the body, which then stays (counted once)
    images = parsed.pixels if parsed.pixels is not None else parsed.files
    # Asked again, with nothing awaited before classify() takes the model: another may have been swapped in during
    # the upload, and a request names the model that must answer it (404 otherwise).
    _model(request, params["model_name"], params.get("model_version"))
    classified = await classify(request, images)
    return response(parsed, classified.probabilities, classified.model)


@contextlib.contextmanager
def _nothing_more(size: int) -> Iterator[None]:
    """No body budget (an app built without one): nothing to count."""
    yield


INFER_BODY = {
    "responses": {
        "200": {
            "description": "The outputs: JSON, or JSON followed by binary tensor data",
            "content": {"application/json": {"schema": {"type": "object"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    "requestBody": {
        "required": True,
        "description": "An inference request: JSON, or JSON followed by binary tensor data (its length in the "
        f"{HEADER_LENGTH} header).",
        "content": {"application/json": {"schema": {"type": "object", "required": ["inputs"]}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}  # fmt: skip

for path in ("/models/{model_name}/infer", "/models/{model_name}/versions/{model_version}/infer"):
    router.add_api_route(
        path,
        infer,
        methods=["POST"],
        summary="Inference" if "versions" not in path else "Inference on a model version",
        openapi_extra=INFER_BODY,
        responses=_INFER_ERRORS,
        route_class_override=PlainRoute,
    )


# ---- the model repository extension (Triton's; tritonclient's get_model_repository_index, load_model, unload_model)

_REPOSITORY_ERRORS = openapi_responses(Where.REPOSITORY, Api.OPEN_INFERENCE)
_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _repository(request: Request) -> Path:
    """The model repository's folder, or ModelControlOff (403) unless the operator turned model control on."""
    settings = request.app.state.settings
    if settings.model_control != "explicit":
        raise ModelControlOff(
            "the model repository API is off: start the service with CLASSIFIER_MODEL_CONTROL=explicit (or send "
            "SIGHUP to reload the configured model)"
        )
    folder: Path = settings.model_repository or settings.model_path.parent
    return folder


def _entry(request: Request, name: str) -> Path:
    """The repository's file for `name`, or UnknownModel (404)."""
    folder = _repository(request)
    path = folder / f"{name}.onnx"
    if not _ENTRY_NAME.fullmatch(name) or not path.is_file():
        raise UnknownModel(f"the model repository has no model {name!r} (a file {name}.onnx)")
    return path


@router.post("/repository/index", summary="Model repository index", responses=_REPOSITORY_ERRORS)
async def repository_index(request: Request) -> JsonResponse:
    """The repository's models (its .onnx files, by name): READY for the one served, UNAVAILABLE for the others."""
    folder = _repository(request)
    serving: Serving = request.app.state.serving
    served = serving.source.resolve() if serving.source is not None and serving.ready else None
    entries = []
    for path in sorted(folder.glob("*.onnx")):
        if not _ENTRY_NAME.fullmatch(path.stem):
            continue
        if served is not None and path.resolve() == served and serving.model is not None:
            entries.append({"name": path.stem, "version": serving.model.info.version, "state": "READY"})
        else:
            entries.append({"name": path.stem, "state": "UNAVAILABLE", "reason": "not loaded"})
    return JsonResponse(entries)


@router.post("/repository/models/{model_name}/load", summary="Load a model", responses=_REPOSITORY_ERRORS)
async def repository_load(request: Request, model_name: str) -> JsonResponse:
    """Load the repository's model `model_name` in place of the served one, which keeps serving until the new one
    has passed its checks, and finishes what it has. 400 with the reason if the new model is refused."""
    path = _entry(request, model_name)
    serving: Serving = request.app.state.serving
    await serving.swap(path, loaded_as=model_name)
    return JsonResponse({})


@router.post("/repository/models/{model_name}/unload", summary="Unload a model", responses=_REPOSITORY_ERRORS)
async def repository_unload(request: Request, model_name: str) -> JsonResponse:
    """Stop serving `model_name` if it is the served model (readiness says 503 until a model is loaded); nothing
    to do for another."""
    _repository(request)
    serving: Serving = request.app.state.serving
    source = serving.source
    if serving.answers_to(model_name) or (source is not None and source.stem == model_name):
        serving.unload()
    return JsonResponse({})


def is_infer_path(path: str) -> bool:
    """Whether `path` is an infer request (admission control applies to it, as to /predict)."""
    return path.startswith(PREFIX + "/models/") and path.endswith("/infer")

"""HTTP routes: read the request, call the core (imaging, inference), return a schema."""

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from service.asgi import JsonResponse, header
from service.config import Settings
from service.error_responses import Where, openapi_responses, readiness_responses
from service.errors import InvalidRequest, NotReady
from service.frontend import MODEL_HEADER, PlainRoute, classify, model_header, upload
from service.imaging import RESAMPLING_FILTER
from service.inference import OnnxModel, top_k
from service.schemas import (
    HealthResponse,
    ModelMetadataResponse,
    PredictResponse,
    ReadinessResponse,
    TensorSpec,
)
from service.serving import Serving
from service.uploads import FIELD, read_uploads


# Dependencies are `async def` so FastAPI calls them inline: a plain `def` costs a thread-pool hop per request.
async def get_state(request: Request) -> Serving:
    """The app's serving state."""
    state: Serving = request.app.state.serving
    return state


async def get_model(state: Annotated[Serving, Depends(get_state)]) -> OnnxModel:
    """The loaded model, or 503 while there is none."""
    if not state.ready or state.model is None:
        raise NotReady("the model is not loaded yet")
    return state.model


StateDep = Annotated[Serving, Depends(get_state)]
ModelDep = Annotated[OnnxModel, Depends(get_model)]


router = APIRouter()
_OTHER_ERRORS = openapi_responses(Where.OTHER)

_FILES_DESCRIPTION = "One or more image files (JPEG, PNG, WebP, GIF, BMP or TIFF); answered in upload order."
# The query and body are read by `predict` and `service.uploads`, not by FastAPI's machinery: described here.
PREDICT_BODY = {
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
            "description": "Labels per image; default from settings.",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "title": "PredictUpload",
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "array",
                            "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                            "minItems": 1,
                            "description": _FILES_DESCRIPTION,
                        }
                    },
                }
            }
        },
    },
}


async def predict(request: Request) -> Response:
    """Classify one or more uploaded images, answered in the order they were uploaded."""
    state: Serving = request.app.state.serving
    settings: Settings = request.app.state.settings
    k = _top_k(request) or settings.top_k
    state.serving_pipeline()  # 503 before reading the body when no model is served
    content_type = header(request.scope, b"content-type")
    uploads = await read_uploads(
        content_type.decode("latin-1") if content_type is not None else None,
        upload(request),
        max_files=settings.max_images_per_request,
        max_file_bytes=settings.max_image_bytes,
    )
    names = [part.filename for part in uploads]
    files = [(part.filename, part.data) for part in uploads]
    del uploads
    classified = await classify(request, files)
    info = classified.model
    ranked = top_k(classified.probabilities, info.labels, k)
    return JsonResponse(
        {
            "model": {"name": info.name, "version": info.version, "digest": info.digest},
            "predictions": [
                {
                    "filename": name,
                    "label": labels[0][0],
                    "probability": labels[0][1],
                    "top_k": [{"label": label, "probability": p} for label, p in labels],
                }
                for name, labels in zip(names, ranked, strict=True)
            ],
        },
        headers={MODEL_HEADER: model_header(info)},
    )


def _top_k(request: Request) -> int | None:
    """The `top_k` query parameter, if given (read here rather than by FastAPI's parameter machinery, which costs
    more than the rest of the request's parsing)."""
    if not request.scope["query_string"]:
        return None
    raw = request.query_params.get("top_k")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
        raise InvalidRequest(f"top_k: must be an integer of at least 1, got {raw[:20]!r}")
    return int(raw)


router.add_api_route(
    "/predict",
    predict,
    methods=["POST"],
    response_model=PredictResponse,
    responses=openapi_responses(Where.PREDICT),
    openapi_extra=PREDICT_BODY,
    route_class_override=PlainRoute,
)


WEB = Path(__file__).parent / "web"
"""The web page's files: index.html at `/`, its script and style under `/web/`."""


PAGE_HEADERS = {
    # Its own script and style only, images from the files the user picked (blob:), no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def without_range(scope: Scope) -> Scope:
    """`scope` without a Range header: the page's files are small and come whole (RFC 9110 lets a server ignore
    Range), so a bad range cannot get Starlette's plain-text 400 or 416."""
    return {**scope, "headers": [(name, value) for name, value in scope["headers"] if name != b"range"]}


class WholeFileResponse(FileResponse):
    """A file, always whole (see `without_range`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(without_range(scope), receive, send)


class PageFiles(StaticFiles):
    """The web page's script and style under `/web/`, with the page's headers (index.html there too), whole."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(without_range(scope), receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file, or Starlette's answer for it, with PAGE_HEADERS."""
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def page() -> FileResponse:
    """The web page to try the model: pick or drop images, see what the model says."""
    return WholeFileResponse(WEB / "index.html", headers=PAGE_HEADERS)


@router.get("/health", response_model=HealthResponse, responses=_OTHER_ERRORS)
async def health(state: StateDep) -> HealthResponse:
    """Liveness: answers 200 while the process runs, naming the model once it is loaded."""
    info = state.model.info if state.model else None
    return HealthResponse(
        model=info.name if info else None,
        version=info.version if info else None,
        digest=info.digest if info else None,
        provider=info.provider if info else None,
    )


@router.get(
    "/ready",
    response_model=ReadinessResponse,
    responses=readiness_responses(_OTHER_ERRORS, ReadinessResponse),
)
async def ready(state: StateDep) -> JSONResponse:
    """Readiness: 200 once the model is loaded and a warm-up inference passed; 503 before, and while draining."""
    info = state.model.info if state.model else None
    status: Literal["ready", "not_ready", "draining"] = (
        "draining" if state.drain.draining else "ready" if state.ready else "not_ready"
    )
    body = ReadinessResponse(
        status=status,
        model=info.name if info else None,
        version=info.version if info else None,
        digest=info.digest if info else None,
        provider=info.provider if info else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if state.serving else 503)


@router.get("/model", response_model=ModelMetadataResponse, responses=openapi_responses(Where.MODEL))
async def model_metadata(model: ModelDep) -> ModelMetadataResponse:
    """The served model: name, version, input and output tensors, labels and execution provider."""
    info = model.info
    return ModelMetadataResponse(
        name=info.name,
        version=info.version,
        digest=info.digest,
        input=TensorSpec(name=info.input_name, shape=[None, info.height, info.width, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name=info.output_name, shape=[None, len(info.labels)], dtype="float32"),
        labels=list(info.labels),
        provider=info.provider,
        providers=list(info.providers),
        eval_accuracy=info.eval_accuracy,
        resize_filter=RESAMPLING_FILTER.name.lower(),
        metadata=info.metadata,
    )


_EXPOSITION: dict[int | str, dict[str, Any]] = {200: {"content": {"text/plain": {}}}}


@router.get("/metrics", response_class=Response, responses=_EXPOSITION | _OTHER_ERRORS)
async def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format (all workers' when several run)."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)

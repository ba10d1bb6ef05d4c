"""HTTP routes: read the request, call the core (imaging, inference), return a schema."""

import asyncio
import re
import unicodedata
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from service.batching import Batcher, RequestTiming
from service.config import Settings
from service.errors import ClientDisconnected, FileTooLarge, NotReady, TooManyImages
from service.imaging import RESAMPLING_FILTER, Decoder
from service.inference import OnnxModel, top_k
from service.lifecycle import DrainState
from service.limits import Admission
from service.schemas import (
    ErrorResponse,
    HealthResponse,
    LabelProbability,
    ModelMetadataResponse,
    ModelRef,
    Prediction,
    PredictResponse,
    ReadinessResponse,
    TensorSpec,
)


@dataclass
class ServingState:
    """What the lifespan sets up: the model, its batcher, and whether warm-up passed."""

    drain: DrainState
    admission: Admission
    model: OnnxModel | None = None
    batcher: Batcher | None = None
    decoder: Decoder | None = None
    ready: bool = False

    @property
    def serving(self) -> bool:
        """Loaded, warmed up, inference running and not draining: what readiness reports."""
        running = self.batcher is not None and self.batcher.running
        return self.ready and running and not self.drain.draining


# Dependencies are `async def` so FastAPI calls them inline: a plain `def` costs a thread-pool hop per request.
async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


async def get_state(request: Request) -> ServingState:
    """The app's serving state."""
    state: ServingState = request.app.state.serving
    return state


async def get_model(state: Annotated[ServingState, Depends(get_state)]) -> OnnxModel:
    """The loaded model, or 503 while there is none."""
    if not state.ready or state.model is None:
        raise NotReady("the model is not loaded yet")
    return state.model


async def get_batcher(state: Annotated[ServingState, Depends(get_state)]) -> Batcher:
    """The running batcher, or 503 while there is none."""
    if not state.ready or state.batcher is None:
        raise NotReady("the model is not loaded yet")
    return state.batcher


async def get_decoder(state: Annotated[ServingState, Depends(get_state)]) -> Decoder:
    """The image decoder, or 503 while there is none."""
    if not state.ready or state.decoder is None:
        raise NotReady("the model is not loaded yet")
    return state.decoder


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ServingState, Depends(get_state)]
ModelDep = Annotated[OnnxModel, Depends(get_model)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
DecoderDep = Annotated[Decoder, Depends(get_decoder)]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        408: "The upload made no progress for body_idle_timeout_s",
        413: "Too many files, a file over the byte limit, or an image over the pixel or decode-memory limit",
        415: "A file that is not a decodable image",
        422: "No file, an empty file, or an invalid parameter",
        500: "The model failed on the batch holding this request's images",
        503: "Not loaded yet, overloaded (with Retry-After), or shutting down",
        504: "The request's images waited in the queue past queue_timeout_ms",
    }
    return {status: {"model": ErrorResponse, "description": descriptions[status]} for status in statuses}


router = APIRouter()


@router.post("/predict", response_model=PredictResponse, responses=_errors(408, 413, 415, 422, 500, 503, 504))
async def predict(
    request: Request,
    files: Annotated[
        list[UploadFile],
        File(
            description="One or more image files (JPEG, PNG, WebP, GIF, BMP or TIFF); answered in upload order.",
            min_length=1,
        ),
    ],
    model: ModelDep,
    batcher: BatcherDep,
    decoder: DecoderDep,
    state: StateDep,
    settings: SettingsDep,
    k: Annotated[int | None, Query(alias="top_k", ge=1, description="Labels per image; default from settings.")] = None,
) -> PredictResponse:
    """Classify one or more uploaded images, answered in the order they were uploaded."""
    if len(files) > settings.max_images_per_request:
        raise TooManyImages(f"{len(files)} files in one request; the limit is {settings.max_images_per_request}")
    names = [client_filename(upload.filename, index) for index, upload in enumerate(files)]
    for name, upload in zip(names, files, strict=True):
        if upload.size is not None and upload.size > settings.max_image_bytes:
            raise FileTooLarge(f"{name!r} is {upload.size} bytes; the limit is {settings.max_image_bytes}")
    # The body has been read: only now does the request take an admission slot, so slow uploads hold none.
    with state.admission.slot():
        batcher.check_capacity(len(files))  # refuse an overload before spending time on decoding
        info = model.info
        size = (info.height, info.width)
        request.state.telemetry["images"] = len(files)
        with batcher.expecting():
            # The files stay where the form parser put them (memory, or /tmp past 1 MB); the decoding threads read
            # their headers, then, once the memory their decoding needs is reserved, decode them.
            uploads = [(name, upload.file) for name, upload in zip(names, files, strict=True)]
            checked = await decoder.check_all(
                uploads, size=size, max_pixels=settings.max_image_pixels, max_decode_bytes=settings.max_decode_bytes
            )
            batch = await decoder.decode_all(checked, size)
        timing = RequestTiming()
        probabilities = await _unless_disconnected(request, batcher.submit(batch, timing))
    request.state.telemetry.update(queue_wait_s=timing.queue_wait_s, inference_s=timing.inference_s)
    request.app.state.metrics.images_per_request.observe(len(files))
    ranked = top_k(probabilities, info.labels, k or settings.top_k)
    return PredictResponse(
        model=ModelRef(name=info.name, version=info.version),
        predictions=[
            Prediction(
                filename=name,
                label=labels[0][0],
                probability=labels[0][1],
                top_k=[LabelProbability(label=label, probability=p) for label, p in labels],
            )
            for name, labels in zip(names, ranked, strict=True)
        ],
    )


MAX_FILENAME_CHARS = 255


def client_filename(raw: str | None, index: int) -> str:
    """The upload's file name, safe to echo and log: its last path component, without control or unassigned
    characters, at most 255 characters; `file<index>` when nothing is left."""
    name = re.split(r"[/\\]", raw or "")[-1]
    name = "".join(char for char in name if not unicodedata.category(char).startswith("C"))
    return name.strip()[:MAX_FILENAME_CHARS] or f"file{index}"


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, np.ndarray]) -> np.ndarray:
    """Await `work`, but cancel it (dropping its queued images) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Whatever ended the wait (the answer, a disconnect, or this request being cancelled by its timeout),
        # nothing of it may keep running: cancelling `task` takes the request's images out of the queue.
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])  # its images have left the queue before this request is answered
    if task.cancelled():
        raise ClientDisconnected("the client disconnected before its answer was ready")
    return task.result()


async def _disconnect(request: Request) -> None:
    """Return once the client has gone (the body is already read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/health", response_model=HealthResponse)
async def health(state: StateDep) -> HealthResponse:
    """Liveness: answers 200 while the process runs, naming the model once it is loaded."""
    info = state.model.info if state.model else None
    return HealthResponse(
        model=info.name if info else None,
        version=info.version if info else None,
        provider=info.provider if info else None,
    )


@router.get(
    "/ready",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "The model is not loaded or warmed up yet"}},
)
async def ready(state: StateDep) -> JSONResponse:
    """Readiness: 200 once the model is loaded and a warm-up inference passed; 503 before, and while draining."""
    info = state.model.info if state.model else None
    status = "draining" if state.drain.draining else "ready" if state.ready else "not_ready"
    body = ReadinessResponse(
        status=status,
        model=info.name if info else None,
        version=info.version if info else None,
        provider=info.provider if info else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if state.serving else 503)


@router.get("/model", response_model=ModelMetadataResponse, responses=_errors(503))
async def model_metadata(model: ModelDep) -> ModelMetadataResponse:
    """The served model: name, version, input and output tensors, labels and execution provider."""
    info = model.info
    return ModelMetadataResponse(
        name=info.name,
        version=info.version,
        input=TensorSpec(name=info.input_name, shape=[None, info.height, info.width, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name=info.output_name, shape=[None, len(info.labels)], dtype="float32"),
        labels=list(info.labels),
        provider=info.provider,
        providers=list(info.providers),
        eval_accuracy=info.eval_accuracy,
        resize_filter=RESAMPLING_FILTER.name.lower(),
        metadata=info.metadata,
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics in the text exposition format (all workers' when several run)."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)

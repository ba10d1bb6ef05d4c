"""The app factory: builds the FastAPI app, opens the model in the lifespan, renders every error as JSON."""

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from prometheus_client import multiprocess
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import open_inference
from service.api import WEB, PageFiles, router
from service.asgi import JsonResponse
from service.batching import Batcher
from service.config import Settings, load_settings
from service.connections import ON_REFUSAL
from service.error_responses import from_starlette, http_status, render
from service.errors import (
    InvalidRequest,
    LoadInProgress,
    ModelLoadError,
    ModelRefused,
    ProviderUnavailable,
    ServiceError,
    StartupFailed,
)
from service.gateway import Gateway
from service.imaging import Decoder, configure_pillow
from service.inference import ModelInfo, OnnxModel
from service.lifecycle import DrainState
from service.limits import Admission, ApiKeys, BodyBudget
from service.logs import configure_logging
from service.metrics import MULTIPROCESS_ENV, Metrics, ModelLabels
from service.pipeline import ImageLimits, Pipeline
from service.serving import Serving, load_checked
from service.telemetry import Telemetry

log = logging.getLogger(__name__)

# Decoder processes per server process: enough to keep the cores busy; the memory budget, not this, bounds memory.
DECODE_PROCESSES = min(4, os.cpu_count() or 1)


def constant_answer(classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """Benchmark only: a model stand-in that answers uniform probabilities at once (the HTTP ceiling)."""
    return lambda images: np.full((len(images), classes), 1 / classes, dtype=np.float32)


DESCRIPTION = """
Image classification over HTTP. Upload images to `POST /predict` as multipart/form-data (field `files`,
repeat it for several images); each is decoded, converted to RGB, resized to the model's input and
classified by an ONNX model through ONNX Runtime.

Errors are JSON: `{"error": "<code>", "detail": "<what was wrong>"}`.
"""


def create_app(settings: Settings | None = None, drain: DrainState | None = None) -> FastAPI:
    """Build the app; the model is loaded and warmed up when the lifespan starts, not here."""
    settings = settings or load_settings()
    drain = drain if drain is not None else DrainState()  # the server's, which shares it; a test's own otherwise
    drain.delay_s = settings.shutdown_delay_s
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        state: Serving = app.state.serving
        configure_pillow()  # for the images small enough to decode here; decoder processes do it themselves
        # The decoder processes start (a forkserver importing Pillow: about 0.3 s of CPU) while the model loads.
        decoder_started = asyncio.ensure_future(
            asyncio.to_thread(
                Decoder,
                memory_bytes=settings.decode_memory_bytes,
                processes=DECODE_PROCESSES,
                cpu_seconds=settings.decode_cpu_limit_s,
            )
        )
        try:
            model = await asyncio.to_thread(load_checked, settings.model_path, settings, None)
        except (ModelLoadError, ProviderUnavailable, ServiceError) as error:
            log.error("event=startup_failed model_path=%s reason=%s", settings.model_path, error)
            with contextlib.suppress(Exception):
                (await decoder_started).close()
            raise StartupFailed(str(error)) from error
        try:
            decoder = await decoder_started
        except OSError as error:  # e.g. no writable temporary folder for the forkserver's socket
            log.error("event=startup_failed reason=%s", f"the decoder processes could not start: {error!r}")
            raise StartupFailed(str(error)) from error
        limits = ImageLimits(
            max_images=settings.max_images_per_request,
            max_pixels=settings.max_image_pixels,
            max_decode_bytes=settings.max_decode_bytes,
        )

        def make_pipeline(model: OnnxModel) -> Pipeline:
            """A model's own pipeline: its batcher, started, and the shared decoder and limits."""
            batcher = Batcher(
                constant_answer(len(model.info.labels)) if settings.benchmark_constant_answer else model.predict,
                max_batch_size=settings.max_batch_size,
                max_delay_ms=settings.max_delay_ms,
                queue_capacity=settings.queue_capacity,
                queue_timeout_ms=settings.queue_timeout_ms or None,
                merge_requests=settings.batching,
                observer=metrics,
                on_failure=lambda error: drain.fail(f"the batcher's loop stopped: {error!r}"),
            )
            batcher.start()
            return Pipeline(model=model, batcher=batcher, decoder=decoder, admission=state.admission, limits=limits)

        state.settings, state.make_pipeline = settings, make_pipeline
        state.pipeline, state.source = make_pipeline(model), settings.model_path
        state.size = model.info.height, model.info.width
        state.loaded_as = settings.model_path.stem  # its name in a repository of its folder
        metrics.served(model_labels(model.info), None)
        app.state.json_parser = open_inference.json_parser()
        state.ready = True
        reloads = _Reloads(state, settings.model_path)
        log.info(
            "event=ready model=%s version=%s digest=%s provider=%s batching=%s max_batch_size=%d",
            model.info.name, model.info.version, model.info.digest, model.info.provider, settings.batching,
            settings.max_batch_size,
        )  # fmt: skip
        # the lifespan's state reaches uvicorn's protocol too: the connection counts its refusals here
        yield {ON_REFUSAL: lambda error: metrics.connection_refusals.labels(error).inc()}
        reloads.close()
        # What is left of the drain: preStop + drain + this stay inside the orchestrator's grace period.
        await state.close(drain.remaining(settings.drain_timeout_s))
        decoder.close()
        app.state.json_parser.shutdown(wait=False, cancel_futures=True)
        if os.environ.get(MULTIPROCESS_ENV):
            multiprocess.mark_process_dead(os.getpid())

    # FastAPIOffline: FastAPI with /docs (Swagger UI) and /redoc served from the package's own copies of their
    # scripts and styles (under /static-offline-docs), not a CDN, so they work on an air-gapped cluster.
    app = FastAPIOffline(
        title="Image classifier",
        summary="CIFAR-10-style image classification with ONNX Runtime",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        # The API's routes as the app's own: `include_router` would wrap them in a lazily resolved router that
        # every request walks through (about 5% of a request's time).
        routes=[*router.routes, *open_inference.router.routes],
    )
    app.mount("/web", PageFiles(directory=WEB), name="web")
    if settings.api_keys:
        _declare_api_key(app, settings.api_key_header)
    app.state.settings = settings
    admission = Admission(limit=settings.max_concurrent_requests, drain=drain)

    def swapped(new: ModelInfo, old: ModelInfo | None) -> None:
        metrics.served(model_labels(new), model_labels(old) if old else None)
        metrics.model_loads.labels("swapped").inc()

    app.state.serving = Serving(
        drain=drain,
        admission=admission,
        on_swap=lambda new, old: swapped(new, old),
        on_refused=lambda: metrics.model_loads.labels("refused").inc(),
        on_unload=lambda old: metrics.model_info.labels(*model_labels(old)).set(0),
        retire_timeout_s=settings.request_timeout_s or 30.0,
    )
    app.state.metrics = metrics

    def refused(reason: str) -> None:
        metrics.refusals.labels(reason).inc()

    app.add_middleware(
        Gateway,
        telemetry=Telemetry(metrics, routes=app.routes),
        timeout_s=settings.request_timeout_s,
        api_keys=ApiKeys(
            settings.api_keys, header=settings.api_key_header, open_paths=frozenset(settings.api_key_open_paths)
        ),
        admission=admission,
        admits=lambda path: path == "/predict" or open_inference.is_infer_path(path),
        bodies=BodyBudget(
            max_bytes=settings.max_body_bytes,
            budget_bytes=settings.body_memory_bytes,
            idle_timeout_s=settings.body_idle_timeout_s,
        ),
        on_refused=refused,
    )
    _install_error_handlers(app, refused)
    return app


def model_labels(info: ModelInfo) -> ModelLabels:
    return info.name, info.version, info.digest, info.provider


class _Reloads:
    """SIGHUP's handler while the app runs: each signal loads the model at the configured path again (a swap;
    with several workers the supervisor passes the signal to each). A signal that comes while a load runs is kept:
    one more reload follows that load, so the file's latest state is what ends up served. Before the app runs and
    after, SIGHUP is ignored (`python -m service` and the supervisor set that), never the default that ends the
    process."""

    def __init__(self, state: Serving, path: Path) -> None:
        self.state, self.path = state, path
        self.task: asyncio.Task[None] | None = None
        self.pending = False
        self.loop = asyncio.get_running_loop()
        try:
            self.loop.add_signal_handler(signal.SIGHUP, self._signalled)
            self.installed = True
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread (a test's app), or no signals
            self.installed = False

    def _signalled(self) -> None:
        self.pending = True
        if self.task is not None and not self.task.done():
            log.info("event=reload_requested signal=SIGHUP path=%s queued=after_the_load_in_progress", self.path)
            return
        log.info("event=reload_requested signal=SIGHUP path=%s", self.path)
        self.task = self.loop.create_task(self._reload())

    async def _reload(self) -> None:
        while self.pending:
            self.pending = False
            try:
                await self.state.swap(self.path)
            except LoadInProgress:  # a load through the API: this reload follows it
                self.pending = True
                await asyncio.sleep(0.1)
            except ModelRefused:  # logged by the swap
                pass
            except ServiceError as error:  # shutting down
                log.warning("event=reload_not_done reason=%s", error.detail)

    def close(self) -> None:
        if self.installed:
            self.loop.remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)


def worker_app(drain: DrainState) -> FastAPI:
    """uvicorn's app factory in each worker process (CLASSIFIER_WORKERS above 1): the process's logging, as
    `python -m service` sets its own, then the app, both from the settings."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, drain)


def _declare_api_key(app: FastAPI, header: str) -> None:
    """Describe the API key in the OpenAPI schema, so that /docs offers "Authorize" and sends it."""
    plain = app.openapi

    def with_key() -> dict[str, Any]:
        schema = plain()  # FastAPI's, cached: adding the scheme again is harmless
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": header}
        schema["security"] = [{"ApiKey": []}]
        return schema

    app.openapi = with_key  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI, refused: Callable[[str], None]) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JsonResponse:
        if error.refusal:
            refused(error.refusal)
        elif http_status(error) >= 500:
            log.error("event=server_error path=%s error=%s detail=%s", request.url.path, error.error, error.detail)
        return render(error, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JsonResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())
        return render(InvalidRequest(problems), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JsonResponse:
        answer = render(from_starlette(error.status_code, str(error.detail)), request.url.path, error.headers)
        answer.status_code = error.status_code  # Starlette's status stands, with our body
        return answer

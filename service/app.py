"""The app factory: builds the FastAPI app, opens the model in the lifespan, renders every error as JSON."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import ServingState, router
from service.config import Settings, load_settings
from service.errors import ModelLoadError, ProviderUnavailable, ServiceError
from service.inference import OnnxModel

log = logging.getLogger(__name__)

DESCRIPTION = """
Image classification over HTTP. Upload images to `POST /predict` as multipart/form-data (field `files`,
repeat it for several images); each is decoded, converted to RGB, resized to the model's input and
classified by an ONNX model through ONNX Runtime.

Errors are JSON: `{"error": "<code>", "detail": "<what was wrong>"}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model is loaded and warmed up when the lifespan starts, not here."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServingState = app.state.serving
        try:
            model = await asyncio.to_thread(
                OnnxModel,
                settings.model_path,
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
                require_gpu=settings.require_gpu,
            )
            await asyncio.to_thread(model.warm_up)
        except (ModelLoadError, ProviderUnavailable, ServiceError) as error:
            log.error("event=startup_failed model_path=%s reason=%s", settings.model_path, error)
            raise
        state.model = model
        state.ready = True
        log.info(
            "event=ready model=%s version=%s provider=%s",
            model.info.name,
            model.info.version,
            model.info.provider,
        )
        yield
        state.ready = False

    app = FastAPI(
        title="Image classifier",
        summary="CIFAR-10-style image classification with ONNX Runtime",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.serving = ServingState()
    app.include_router(router)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        if error.status_code >= 500:
            log.error("event=server_error path=%s error=%s detail=%s", request.url.path, error.error, error.detail)
        return JSONResponse({"error": error.error, "detail": error.detail}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())
        return JSONResponse({"error": "invalid_request", "detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": code, "detail": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

"""What the front ends (`service.api`'s `/predict` and `service.open_inference`'s v2 infer) share: a route called
without FastAPI's per-request machinery, the body as it arrives, and classifying through the pipeline while
watching for the client to leave."""

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from service.errors import ClientDisconnected
from service.inference import ModelInfo
from service.pipeline import Classified, ClientGone, Pipeline
from service.telemetry import connection_refusal, figures


class PlainRoute(APIRoute):
    """A route FastAPI documents from its declaration like any other, but calls as plain Starlette would:
    `endpoint(request)` returns a Response, with no parameter parsing, dependencies, validation or response model
    on the way (the endpoint reads what it needs itself). For the hot path, where that per-request machinery cost
    more than the rest of the request together. `get_route_handler` is FastAPI's hook for custom routes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


async def upload(request: Request) -> AsyncIterator[bytes]:
    """The request's body as it arrives; ClientDisconnected (499) if the client goes during its upload, or the error
    the connection refused the body with (already answered on the wire: raised so that it is what is recorded)."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        gone = ClientDisconnected("the client disconnected during its upload")
        raise connection_refusal(request.scope) or gone from None


MODEL_HEADER = "X-Model"
"""The response header naming the model that answered: `name/version/digest`."""


def model_header(info: ModelInfo) -> str:
    return f"{info.name}/{info.version}/{info.digest}"


async def classify(request: Request, images: list[tuple[str, bytes]] | np.ndarray) -> Classified:
    """A request's images through the served model's pipeline (encoded files decoded, pixels as they are),
    cancelled if the client goes, and counted in its access-log line and the metrics. Every front end's requests
    go through here. The pipeline is the one served now, taken here and held to the end (nothing awaited between
    taking it and counting the request as its user): a model swapped in meanwhile answers the next request."""
    recorded = figures(request.scope)
    count = recorded.images = len(images)
    gone = client_gone(request.receive)
    pipeline: Pipeline = request.app.state.serving.serving_pipeline()
    if isinstance(images, np.ndarray):
        classified = await pipeline.classify_pixels(images, gone)
    else:
        classified = await pipeline.classify_files(images, gone)
    recorded.queue_wait_s, recorded.inference_s = classified.timing.queue_wait_s, classified.timing.inference_s
    request.app.state.metrics.images_per_request.observe(count)
    return classified


def client_gone(receive: Receive) -> ClientGone:
    """For the pipeline: returns once the client has gone (the body is already read, so only a disconnect can
    arrive)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone

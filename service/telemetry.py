"""Per-request telemetry: a request id, one structured log line, and the HTTP metrics."""

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.limits import header
from service.metrics import Metrics

access_log = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
_WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-ID when well-formed (1-128 of A-Z a-z 0-9 . _ : -), else a new random one."""
    supplied = header(scope, b"x-request-id")
    if supplied is not None and _WELL_FORMED_ID.fullmatch(candidate := supplied.decode("latin-1")):
        return candidate
    return uuid.uuid4().hex


class RequestTelemetry:
    """Pure ASGI middleware, outermost: sets the request id (echoed in the response), then logs and counts."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, known_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        # Requests refused before routing (API key, admission) are still labelled by their route when the path
        # is one; any other path is one label, so scanners cannot blow up the metrics' cardinality.
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        # Handlers add their own figures (images, queue wait, inference time) here, via request.state.
        details: dict[str, Any] = {}
        scope.setdefault("state", {}).update(request_id=request_id, telemetry=details)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.requests_in_flight.dec()
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.known_paths else UNMATCHED_ROUTE
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(elapsed)
            fields = {
                "request_id": request_id, "method": method, "route": route, "status": status,
                "images": details.get("images", 0),
                "queue_wait_ms": round(details.get("queue_wait_s", 0.0) * 1000, 3),
                "inference_ms": round(details.get("inference_s", 0.0) * 1000, 3),
                "total_ms": round(elapsed * 1000, 3),
            }  # fmt: skip
            access_log.info(" ".join(f"{key}={value}" for key, value in fields.items()), extra=fields)

"""Per-request telemetry: a request id, one structured log line, and the HTTP metrics (`service.gateway` calls
these for every request)."""

import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from service.asgi import header
from service.errors import ServiceError
from service.metrics import Metrics

access_log = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
_WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"


FIGURES_KEY = "figures"
"""Where a request's RequestFigures are kept in its ASGI scope's `state`."""


REFUSAL_KEY = "connection_refusal"
"""Where, in a request's ASGI scope's `state`, the connection (service.connections) puts the error it answered the
request with when it refused it in its own body (a bad chunk, trailers over the limit) before the app answered:
the app then sees the client gone, and the access log and metrics record what went on the wire."""


def connection_refusal(scope: Scope) -> ServiceError | None:
    """The error the connection answered this request with, if it refused it in its body."""
    return cast(ServiceError | None, scope.get("state", {}).get(REFUSAL_KEY))


@dataclass(slots=True)
class RequestFigures:
    """What a request's handler adds to its access-log line."""

    images: int = 0
    queue_wait_s: float = 0.0
    inference_s: float = 0.0


def figures(scope: Scope) -> RequestFigures:
    """The request's figures, as the gateway set them up (new ones where no gateway runs, as in some tests)."""
    return cast(RequestFigures, scope.setdefault("state", {}).setdefault(FIGURES_KEY, RequestFigures()))


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-ID when well-formed (1-128 of A-Z a-z 0-9 . _ : -), else a new random one."""
    supplied = header(scope, b"x-request-id")
    if supplied is not None and _WELL_FORMED_ID.fullmatch(candidate := supplied.decode("latin-1")):
        return candidate
    return secrets.token_hex(16)


class Telemetry:
    """What is recorded of each request once it ends: the HTTP metrics and one access log line."""

    def __init__(self, metrics: Metrics, *, routes: Sequence[BaseRoute]) -> None:
        self.metrics = metrics
        # Requests refused before routing (API key, admission, body limits) are still labelled by the route their
        # path matches (its template, as a routed request is); any other path is one label, so scanners cannot
        # blow up the metrics' cardinality.
        self.routes = [route for route in routes if isinstance(route, Route | Mount)]

    def record(self, scope: Scope, request_id: str, status: int, elapsed_s: float, added: RequestFigures) -> None:
        """Count and log a request that has ended, with what its handler `added` (images, timings)."""
        route = getattr(scope.get("route"), "path", None)
        if route is None:
            route = self._template(scope)
        method = scope["method"]
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.request_duration.labels(route).observe(elapsed_s)
        fields = {
            "request_id": request_id, "method": method, "route": route, "status": status,
            "images": added.images,
            "queue_wait_ms": round(added.queue_wait_s * 1000, 3),
            "inference_ms": round(added.inference_s * 1000, 3),
            "total_ms": round(elapsed_s * 1000, 3),
        }  # fmt: skip
        access_log.info(" ".join(f"{key}={value}" for key, value in fields.items()), extra=fields)

    def _template(self, scope: Scope) -> str:
        """The path template of the route `scope`'s path matches, else UNMATCHED_ROUTE."""
        # The path as the client sent it: a Mount the request went through has changed the scope's root_path.
        request = {"type": "http", "path": scope["path"], "root_path": "", "method": scope["method"]}
        for route in self.routes:
            match, _ = route.matches(request)
            if match is not Match.NONE:
                return route.path
        return UNMATCHED_ROUTE

"""Admission control: a cap on /predict requests in flight, enforced before the body is read.

Under overload the HTTP layer, not the model, is often the bottleneck: without a cap, requests pile up in the
event loop and every one of them gets slow. With it, the excess is refused at once with 503 and Retry-After, and
the accepted requests keep the latency of a fully loaded, not an overloaded, server.
"""

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class AdmissionControl:
    """Pure ASGI middleware: at most `limit` requests to `paths` at once; the rest get 503 without being read."""

    def __init__(self, app: ASGIApp, *, limit: int, paths: frozenset[str], retry_after_s: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.paths = paths
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.refused += 1
            response = JSONResponse(
                {
                    "error": "overloaded",
                    "detail": f"{self.in_flight} requests are in progress, the limit is {self.limit}; retry later",
                },
                status_code=503,
                headers={"Retry-After": str(self.retry_after_s)},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

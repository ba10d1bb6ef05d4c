"""The one ASGI middleware in front of the app. Every HTTP request passes here once, and here it gets its request
id, its limits (overall timeout, API key, admission control, body size and budget) and its telemetry (metrics
and the access log line). One layer rather than one per concern: each layer of an ASGI stack costs every request
a call, a closure and a wrapped `send`, and on the hot path that added up to more than the work itself.

Refusals are answered here, in JSON, before FastAPI reads a byte of the body."""

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.error_responses import http_status, render
from service.errors import RequestTimedOut, ServiceError, ShuttingDown, StartupFailed
from service.limits import Admission, ApiKeys, BodyBudget
from service.telemetry import (
    FIGURES_KEY,
    REQUEST_ID_HEADER,
    RequestFigures,
    Telemetry,
    connection_refusal,
    request_id_from,
)

log = logging.getLogger(__name__)

Refused = Callable[[str], None]
"""Told the reason of each refusal (for metrics)."""

_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")


def quiet_startup_failure(send: Send) -> Send:
    """`send` for the lifespan, without the traceback of a StartupFailed: Starlette sends its text with
    `lifespan.startup.failed` (while handling the exception) and uvicorn logs it; the reason is logged already."""

    async def send_without_traceback(message: Message) -> None:
        if message["type"] == "lifespan.startup.failed" and isinstance(sys.exc_info()[1], StartupFailed):
            message = {"type": message["type"], "message": ""}
        await send(message)

    return send_without_traceback


class Gateway:
    """Pure ASGI middleware. Each concern is optional (off by default), so tests can wrap a bare app in one:
    `telemetry` records each request; `timeout_s` bounds a request from its first byte to its answer (504);
    `api_keys` guards paths (401, 403); `admission` refuses requests to paths it `admits` while every slot is
    taken or the server drains (503); `bodies` bounds each body and all bodies in progress together (413, 503,
    408)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        telemetry: Telemetry | None = None,
        timeout_s: float = 0,
        api_keys: ApiKeys | None = None,
        admission: Admission | None = None,
        admits: Callable[[str], bool] = lambda path: False,
        bodies: BodyBudget | None = None,
        on_refused: Refused = lambda reason: None,
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self.timeout_s = timeout_s
        self.api_keys = api_keys
        self.admission = admission
        self.admits = admits
        self.bodies = bodies
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, quiet_startup_failure(send) if scope["type"] == "lifespan" else send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        added = RequestFigures()  # the handler adds its figures (images, queue wait, inference time) here
        scope.setdefault("state", {}).update({"request_id": request_id, FIGURES_KEY: added})
        status = 0
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_KEY, raw_id)]
            await send(message)

        telemetry = self.telemetry
        if telemetry:
            telemetry.metrics.requests_in_flight.inc()
        try:
            if self.timeout_s:
                await self._within_timeout(scope, receive, send_with_id, lambda: status != 0)
            else:
                await self._handle(scope, receive, send_with_id, lambda: status != 0)
        except Exception as error:  # a fault of ours: logged with the request id, answered in JSON like any error
            log.error("event=server_error request_id=%s path=%s error=%r", request_id, scope["path"], error)
            if status != 0:
                raise
            fault = ServiceError(f"the server failed on this request; it is logged under request id {request_id}")
            await render(fault, scope["path"])(scope, receive, send_with_id)
        finally:
            if telemetry:
                telemetry.metrics.requests_in_flight.dec()
                if (refused := connection_refusal(scope)) is not None:
                    status = http_status(refused)  # the connection's answer: the app's (if any) went nowhere
                telemetry.record(scope, request_id, status or 500, time.perf_counter() - started, added)

    async def _within_timeout(self, scope: Scope, receive: Receive, send: Send, answered: Callable[[], bool]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._handle(scope, receive, send, answered)
        except asyncio.CancelledError:
            # Not our timeout: the server is stopping for good (a second Ctrl-C, or the drain ran out). Say so in
            # JSON rather than leave uvicorn to answer a plain-text 500.
            if not answered():
                stopped = ShuttingDown("the server stopped before this request was answered; retry")
                with contextlib.suppress(Exception):
                    await render(stopped, scope["path"])(scope, receive, send)
            raise
        except TimeoutError:
            if answered():
                raise
            detail = f"the request took longer than {self.timeout_s:g} s (upload and processing together)"
            await self._refuse(RequestTimedOut(detail), scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, answered: Callable[[], bool]) -> None:
        refusal = self._refusal(scope)
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send)
            return
        if self.bodies is None:
            await self.app(scope, receive, send)
            return
        body = self.bodies.counted(receive)
        try:
            await self.app(scope, body, send)
        except ServiceError as limit:  # a body limit, raised from `receive` where no route's handler caught it
            if answered():
                raise
            await self._refuse(limit, scope, receive, send)
        finally:
            body.release()

    async def _refuse(self, refusal: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a refusal, counting it by reason if it is one (not 401, 403 or 413)."""
        if refusal.refusal:
            self.on_refused(refusal.refusal)
        await render(refusal, scope["path"])(scope, receive, send)

    def _refusal(self, scope: Scope) -> ServiceError | None:
        """Why a request is refused before its body is read, if it is: API key, admission, then body limits."""
        if self.api_keys is not None and (refusal := self.api_keys.refusal(scope)) is not None:
            return refusal
        if self.admission is not None and self.admits(scope["path"]):
            try:
                self.admission.check()
            except ServiceError as refused:
                return refused
        if self.bodies is not None:
            return self.bodies.refusal(scope)
        return None

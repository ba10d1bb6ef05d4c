"""Request limits, mostly enforced as pure ASGI middleware before FastAPI reads a body: admission control (a cap
on /predict requests being processed, and refusal while draining), the body limit, an overall request timeout,
and the optional API key.

Under overload the HTTP layer, not the model, is often the bottleneck: without a cap, requests pile up in the
event loop and every one of them gets slow. With it, the excess is refused at once with 503 and Retry-After, and
the accepted requests keep the latency of a fully loaded, not an overloaded, server.
"""

import asyncio
import contextlib
import hmac
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Overloaded, ServiceError, ShuttingDown
from service.lifecycle import DrainState

Refused = Callable[[str], None]
"""Told the reason of each refusal (for metrics)."""


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header `name` (lower-case bytes), if present."""
    return next((value for key, value in scope["headers"] if key == name), None)


class _TrackedSend:
    """Wraps `send` and remembers whether the response has started: after that, no error response can be sent."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


class Admission:
    """Admission control: at most `limit` requests past their upload at once, and none while draining.

    A slot is taken only once the request's body has been read (`slot`), so clients that trickle their uploads
    hold no slot and cannot lock others out; `check` refuses at once, before the body is read, while every slot
    is taken, so an overload costs no upload bandwidth."""

    def __init__(self, *, limit: int, drain: DrainState, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.drain = drain
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def check(self) -> None:
        """Raise ShuttingDown (draining) or Overloaded (every slot taken) for a request arriving now."""
        if self.drain.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica", self.retry_after_s)
        self._check_free()

    def _check_free(self) -> None:
        if self.in_flight >= self.limit:
            raise Overloaded(
                f"{self.in_flight} requests are in progress, the limit is {self.limit}; retry later", self.retry_after_s
            )

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block, or raise Overloaded. A request that arrived before a drain began is served
        even if its upload finishes during it: the drain is there for requests already accepted."""
        self._check_free()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


class AdmissionControl:
    """Refuses requests to `paths` with 503, before their body is read, while `admission` has no free slot."""

    def __init__(
        self, app: ASGIApp, *, admission: Admission, paths: frozenset[str], on_refused: Refused = lambda reason: None
    ) -> None:
        self.app = app
        self.admission = admission
        self.paths = paths
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            try:
                self.admission.check()
            except ServiceError as refusal:
                self.on_refused(refusal.error)
                await _error(refusal.status_code, refusal.error, refusal.detail, refusal.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyRefused(HTTPException):
    """A body limit, raised from `receive` (or built up front). An HTTPException, so that FastAPI passes it
    through its body parsing (which turns other errors into 400) to the app's JSON error handler. `error` is its
    code; `reason`, if any, the refusal it counts as in the metrics."""

    error = "body_refused"
    reason: str | None = None


class BodyTooLarge(BodyRefused):
    """The body is over `max_body_bytes`."""

    error = "body_too_large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over the limit of {max_bytes} bytes")


class BodyOverBudget(BodyRefused):
    """The bodies of all requests in progress would go over their budget."""

    error = reason = "overloaded"

    def __init__(self, held: int, budget_bytes: int, retry_after_s: int = 1) -> None:
        detail = f"the server holds {held} bytes of uploads in progress, its limit is {budget_bytes}; retry later"
        super().__init__(503, detail, headers={"Retry-After": str(retry_after_s)})


class BodyStalled(BodyRefused):
    """The upload made no progress for the idle timeout."""

    error = reason = "upload_stalled"

    def __init__(self, idle_s: float) -> None:
        super().__init__(408, f"the upload made no progress for {idle_s:g} s")


class BodyLimit:
    """413 once a request body exceeds `max_bytes`: at once from Content-Length, else while it streams in. And a
    budget for all requests in progress together: at most `budget_bytes` of body received and not yet released
    (bodies are held, in memory or spooled to /tmp, until their request ends); a request whose body would go over
    it gets 503 with Retry-After, at once when its Content-Length cannot fit now. Only bytes actually received
    count, so a client that declares a large body and trickles it holds only what it sent, and an upload that
    makes no progress for `idle_timeout_s` is cut off with 408, giving its bytes back.

    Starlette's RequestBodyLimitMiddleware does the counting too, but answers in plain text; every error of this
    service is JSON.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        budget_bytes: int | None = None,
        idle_timeout_s: float = 0,
        on_refused: Refused = lambda reason: None,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.budget_bytes = budget_bytes if budget_bytes is not None else max_bytes
        self.on_refused = on_refused
        self.retry_after_s = retry_after_s
        self.held = 0
        """Body bytes received by the requests in progress."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if length is not None and length > self.max_bytes:
            await self._refuse(BodyTooLarge(self.max_bytes), scope, receive, send)
            return
        if length is not None and self.held + length > self.budget_bytes:
            await self._refuse(self._over_budget(), scope, receive, send)
            return
        received = 0
        body_done = False
        tracked = _TrackedSend(send)

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done or not self.idle_timeout_s:
                message = await receive()  # after the body, only a disconnect can come: no idle limit
            else:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        message = await receive()
                except TimeoutError:
                    raise BodyStalled(self.idle_timeout_s) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                size = len(message.get("body", b""))
                if received + size > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                if self.held + size > self.budget_bytes:
                    raise self._over_budget()
                received += size
                self.held += size
            return message

        try:
            await self.app(scope, counting_receive, tracked)
        except BodyRefused as refusal:  # raised outside FastAPI's body parsing, which renders it itself
            if tracked.started:
                raise
            await self._refuse(refusal, scope, receive, send)
        finally:
            self.held -= received

    def _over_budget(self) -> BodyOverBudget:
        return BodyOverBudget(self.held, self.budget_bytes, self.retry_after_s)

    async def _refuse(self, refusal: BodyRefused, scope: Scope, receive: Receive, send: Send) -> None:
        if refusal.reason:
            self.on_refused(refusal.reason)
        await _error(refusal.status_code, refusal.error, refusal.detail, refusal.headers)(scope, receive, send)


class RequestTimeout:
    """Answer 504 when a request (reading its body included, so a trickled upload too) takes over `seconds`."""

    def __init__(self, app: ASGIApp, *, seconds: float, on_refused: Refused = lambda reason: None) -> None:
        self.app = app
        self.seconds = seconds
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.seconds:
            await self.app(scope, receive, send)
            return
        tracked = _TrackedSend(send)
        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # Not our timeout: the server is stopping for good (a second Ctrl-C, or the drain ran out). Say so in
            # JSON rather than leave uvicorn to answer a plain-text 500.
            if not tracked.started:
                detail = "the server stopped before this request was answered; retry"
                with contextlib.suppress(Exception):
                    await _error(503, "shutting_down", detail, {"Retry-After": "1"})(scope, receive, send)
            raise
        except TimeoutError:
            if tracked.started:
                raise
            self.on_refused("timeout")
            detail = f"the request took longer than {self.seconds:g} s (upload and processing together)"
            await _error(504, "timeout", detail)(scope, receive, send)


class ApiKeyAuth:
    """With `keys` set, every path but `open_paths` needs one of them in `header`; compared in constant time."""

    def __init__(self, app: ASGIApp, *, keys: tuple[str, ...], header: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.header = header
        self.header_key = header.lower().encode("latin-1")
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        supplied = header(scope, self.header_key)
        if supplied is None:
            headers = {"WWW-Authenticate": f'ApiKey header="{self.header}"'}
            await _error(401, "unauthorized", f"this endpoint needs an API key in the {self.header} header", headers)(
                scope, receive, send
            )
            return
        matched = False
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            matched |= hmac.compare_digest(supplied, key)
        if not matched:
            await _error(403, "forbidden", f"the API key in {self.header} is not valid")(scope, receive, send)
            return
        await self.app(scope, receive, send)

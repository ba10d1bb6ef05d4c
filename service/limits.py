"""Request limits, checked by `service.gateway` before FastAPI reads a body: admission control (a cap on /predict
requests being processed, and refusal while draining), the body limits, and the optional API key.

Under overload the HTTP layer, not the model, is often the bottleneck: without a cap, requests pile up in the
event loop and every one of them gets slow. With it, the excess is refused at once with 503 and Retry-After, and
the accepted requests keep the latency of a fully loaded, not an overloaded, server.
"""

import asyncio
import hmac
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import Message, Receive, Scope

from service.asgi import header
from service.errors import (
    BodyOverBudget,
    BodyStalled,
    BodyTooLarge,
    Forbidden,
    Overloaded,
    ServiceError,
    ShuttingDown,
    Unauthorized,
)
from service.lifecycle import DrainState

MAX_BYTE_COUNT_DIGITS = 18
"""A byte count in a header longer than this is more than any limit (and int() refuses thousands of digits)."""


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
        """Raise ShuttingDown (draining, past the shutdown delay) or Overloaded (every slot taken) for a request
        arriving now."""
        if self.drain.refusing:
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


class BodyBudget:
    """413 once a request body exceeds `max_bytes`: at once from Content-Length, else while it streams in. And a
    budget for all requests in progress together: at most `budget_bytes` of body received and not yet released
    (bodies are held in memory until their request ends); a request whose body would go over it gets 503 with
    Retry-After, at once when its Content-Length cannot fit now. Only bytes actually received count, so a client
    that declares a large body and trickles it holds only what it sent, and an upload that makes no progress for
    `idle_timeout_s` is cut off with 408, giving its bytes back."""

    def __init__(
        self, *, max_bytes: int, budget_bytes: int | None = None, idle_timeout_s: float = 0, retry_after_s: int = 1
    ) -> None:
        self.max_bytes = max_bytes
        self.budget_bytes = budget_bytes if budget_bytes is not None else max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.retry_after_s = retry_after_s
        self.held = 0
        """Body bytes received by the requests in progress."""

    def refusal(self, scope: Scope) -> ServiceError | None:
        """The refusal a request gets before its body is read, from its Content-Length, if any."""
        declared = header(scope, b"content-length")
        if declared is None or not declared.isdigit():
            return None
        if len(declared) > MAX_BYTE_COUNT_DIGITS:
            return self.too_large()
        length = int(declared)
        if length > self.max_bytes:
            return self.too_large()
        if self.held + length > self.budget_bytes:
            return self.over_budget()
        return None

    def too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"the request body is over the limit of {self.max_bytes} bytes")

    def over_budget(self) -> BodyOverBudget:
        detail = f"the server holds {self.held} bytes of uploads in progress, its limit is {self.budget_bytes}"
        return BodyOverBudget(f"{detail}; retry later", self.retry_after_s)

    def counted(self, receive: Receive) -> "CountedBody":
        """`receive`, counting the body against the limits; call `release` on the result when the request ends."""
        return CountedBody(self, receive)


class CountedBody:
    """One request's `receive`, counting its body's bytes against its BodyBudget as they arrive."""

    __slots__ = ("budget", "done", "receive", "received")

    def __init__(self, budget: BodyBudget, receive: Receive) -> None:
        self.budget = budget
        self.receive = receive
        self.received = 0
        self.done = False

    async def __call__(self) -> Message:
        budget = self.budget
        if self.done or not budget.idle_timeout_s:
            message = await self.receive()  # after the body, only a disconnect can come: no idle limit
        else:
            try:
                async with asyncio.timeout(budget.idle_timeout_s):
                    message = await self.receive()
            except TimeoutError:
                raise BodyStalled(f"the upload made no progress for {budget.idle_timeout_s:g} s") from None
        if message["type"] == "http.request":
            self.done = not message.get("more_body", False)
            size = len(message.get("body", b""))
            if self.received + size > budget.max_bytes:
                raise budget.too_large()
            if budget.held + size > budget.budget_bytes:
                raise budget.over_budget()
            self.received += size
            budget.held += size
        return message

    @contextmanager
    def copy_held(self, size: int) -> Iterator[None]:
        """Count `size` more bytes for the block: a copy of (part of) the body held beside it; 503 with Retry-After
        if the budget has no room for it."""
        budget = self.budget
        if budget.held + size > budget.budget_bytes:
            raise budget.over_budget()
        budget.held += size
        try:
            yield
        finally:
            budget.held -= size

    def release(self) -> None:
        """The request has ended: its body's bytes no longer count."""
        self.budget.held -= self.received
        self.received = 0


class ApiKeys:
    """With `keys` set, every path but `open_paths` needs one of them in `header`; compared in constant time. An open
    path that ends in "/" (other than "/" itself) opens every path under it."""

    def __init__(self, keys: tuple[str, ...], *, header: str, open_paths: frozenset[str]) -> None:
        self.keys = [key.encode() for key in keys]
        self.header = header
        self.header_key = header.lower().encode("latin-1")
        self.open_paths = open_paths
        self.open_prefixes = tuple(path for path in open_paths if len(path) > 1 and path.endswith("/"))

    def refusal(self, scope: Scope) -> ServiceError | None:
        """Unauthorized (401) or Forbidden (403) for a request to a guarded path, else None."""
        path = scope["path"]
        if not self.keys or path in self.open_paths or path.startswith(self.open_prefixes):
            return None
        supplied = header(scope, self.header_key)
        if supplied is None:
            return Unauthorized(f"this endpoint needs an API key in the {self.header} header", self.header)
        matched = False
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            matched |= hmac.compare_digest(supplied, key)
        return None if matched else Forbidden(f"the API key in {self.header} is not valid")

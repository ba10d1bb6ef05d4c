"""Graceful shutdown: on SIGTERM, readiness turns 503 and new /predict requests are refused at once, requests
already accepted finish, then the server stops and exits 0, within the drain timeout."""

import logging
import signal
import time
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class DrainState:
    """Whether this process is draining. One per process: signals are per process."""

    def __init__(self) -> None:
        self.started_at: float | None = None

    @property
    def draining(self) -> bool:
        """True from the first SIGTERM or SIGINT on."""
        return self.started_at is not None

    def start(self) -> None:
        """Begin draining (idempotent)."""
        if self.started_at is None:
            self.started_at = time.monotonic()


DRAIN = DrainState()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first SIGTERM/SIGINT drains instead of stopping: the listener stays open (new
    requests get a quick 503, probes see not-ready) until no request is in flight or `drain_timeout_s` passed.
    A second signal stops at once, as plain uvicorn does."""

    def __init__(self, config: uvicorn.Config, *, drain_timeout_s: float, drain: DrainState = DRAIN) -> None:
        super().__init__(config)
        self.drain_timeout_s = drain_timeout_s
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: start draining; a second one: uvicorn's own immediate stop."""
        if self.drain.draining or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self.drain.start()
        log.info("event=drain_started signal=%s in_flight=%d", signal.Signals(sig).name, len(self.server_state.tasks))

    async def on_tick(self, counter: int) -> bool:
        """Stop once draining and idle, or when the drain timeout runs out."""
        if await super().on_tick(counter):
            return True
        if self.drain.started_at is None:
            return False
        waited = time.monotonic() - self.drain.started_at
        in_flight = len(self.server_state.tasks)
        if in_flight and waited < self.drain_timeout_s:
            return False
        log.info("event=drain_finished waited_s=%.2f still_in_flight=%d", waited, in_flight)
        return True

"""Graceful shutdown: on SIGTERM, readiness turns 503 and, after the shutdown delay (0 by default), new /predict
requests are refused; requests already accepted finish, then the server stops and exits 0, within the drain
timeout. With several workers, each
drains the same way under a supervisor. A fatal fault (the batcher's loop gone) exits 1 instead."""

import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import ServerState
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger(__name__)


class DrainState:
    """Whether this process is draining. One per server process, made where the server is (`python -m service`,
    or each worker) and shared by the server, its connections and the app: signals are per process."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.failure: str | None = None
        self.delay_s = 0.0
        """How long after the signal new requests are still accepted (the shutdown delay): meanwhile only readiness
        says 503, so that a load balancer polling it stops sending requests here before they would be refused."""

    @property
    def draining(self) -> bool:
        """True from the first SIGTERM or SIGINT on."""
        return self.started_at is not None

    @property
    def refusing(self) -> bool:
        """True once draining and the shutdown delay has passed: new requests are refused from then on."""
        return self.started_at is not None and self.elapsed() >= self.delay_s

    def elapsed(self) -> float:
        """Seconds since draining began (0 when not draining)."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def start(self) -> None:
        """Begin draining (idempotent)."""
        if self.started_at is None:
            self.started_at = time.monotonic()

    def remaining(self, timeout_s: float) -> float:
        """What is left of a drain of `timeout_s` seconds, which begins once the shutdown delay is over (all of it
        when not draining)."""
        return max(0.0, timeout_s - max(0.0, self.elapsed() - self.delay_s))

    def fail(self, reason: str) -> None:
        """A fault this process cannot serve through: stop taking work and exit non-zero, to be restarted."""
        if self.failure is None:
            self.failure = reason
            log.critical("event=fatal reason=%s", reason)
        self.start()


class DrainingServerState(ServerState):
    """uvicorn's state of a server shared with every connection, with the server's drain state: while it refuses
    new requests, each answer closes its connection (service.connections)."""

    def __init__(self, drain: DrainState) -> None:
        super().__init__()
        self.drain = drain


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but the first SIGTERM/SIGINT drains instead of stopping: the listener stays open (new
    requests get a quick 503, probes see not-ready) until no request is in flight or `drain_timeout_s` passed.
    A second signal stops at once, as plain uvicorn does."""

    def __init__(self, config: uvicorn.Config, *, drain_timeout_s: float, drain: DrainState) -> None:
        super().__init__(config)
        self.server_state = DrainingServerState(drain)
        self.drain_timeout_s = drain_timeout_s
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First SIGTERM or SIGINT: start draining. While draining, another SIGTERM is ignored (a supervisor or
        systemd may send it to every process of the group, besides the one the worker got); a second SIGINT
        (Ctrl-C twice) is uvicorn's own immediate stop."""
        if sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        if self.drain.draining:
            if sig == signal.SIGINT:
                super().handle_exit(sig, frame)
            else:
                log.info("event=signal_ignored signal=SIGTERM reason=already_draining")
            return
        self.drain.start()
        log.info("event=drain_started signal=%s in_flight=%d", signal.Signals(sig).name, len(self.server_state.tasks))

    async def on_tick(self, counter: int) -> bool:
        """Stop once draining, past the shutdown delay and idle, when the drain timeout runs out, or at once after a
        fatal fault."""
        if await super().on_tick(counter):
            return True
        if self.drain.failure is not None:
            return True
        if not self.drain.refusing:
            return False
        waited = self.drain.elapsed()
        in_flight = len(self.server_state.tasks)
        if in_flight and self.drain.remaining(self.drain_timeout_s) > 0:
            return False
        log.info("event=drain_finished waited_s=%.2f still_in_flight=%d", waited, in_flight)
        return True


@dataclass(frozen=True)
class WorkerApp:
    """What each worker process serves: the app `factory` makes with the worker's drain state, drained within
    `drain_timeout_s`."""

    factory: Callable[[DrainState], ASGIApp]
    drain_timeout_s: float


class DrainingWorker(Process):
    """One uvicorn worker process that drains on SIGTERM like a single server, and exits 1 after a fatal fault."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], app: WorkerApp) -> None:
        self.app = app
        super().__init__(config, sockets)

    @property
    def server(self) -> "DrainingServer":  # in the worker process
        """The worker's server: a DrainingServer (uvicorn's own would cut requests off after its grace time), with
        its drain state, which the app gets too (from `app_factory`)."""
        if self._server is None:
            drain = DrainState()
            self.config.app = functools.partial(self.app.factory, drain)
            self.config.factory = True
            self._server = DrainingServer(self.config, drain_timeout_s=self.app.drain_timeout_s, drain=drain)
        assert isinstance(self._server, DrainingServer)
        return self._server

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # runs in the worker process
        """Serve until stopped; a fatal fault exits with status 1, so the supervisor starts a new worker."""
        super().target(sockets)
        if self.server.drain.failure is not None:
            raise SystemExit(1)


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor of several workers, with draining workers. A worker that died is replaced and, with
    shared metrics, its live gauges are removed. SIGTERM/SIGINT drain every worker (the supervisor waits for
    them); SIGHUP is passed to every worker, which reloads the configured model; SIGTTIN/SIGTTOU (uvicorn's
    resizing) are not offered."""

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        app: WorkerApp,
        *,
        on_worker_died: Callable[[int], None] = lambda pid: None,
    ) -> None:
        super().__init__(config, sockets)
        self.app = app
        self.on_worker_died = on_worker_died
        self.startup_failed = False

    def _new_worker(self) -> DrainingWorker:
        worker = DrainingWorker(self.config, self.sockets, self.app)
        # Started with SIGHUP ignored (kept across the worker's exec, unlike a handler), until its app handles it
        handler = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            worker.start()
        finally:
            signal.signal(signal.SIGHUP, handler)
        return worker

    def init_processes(self) -> None:
        """Start the workers."""
        self.processes = [self._new_worker() for _ in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
        """Replace workers that died or stopped answering (as uvicorn does), and forget their metrics."""
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.pid is not None:
                self.on_worker_died(process.pid)
            if self.should_exit.is_set():
                return
            if process.exitcode == STARTUP_FAILURE:  # the model or the socket is unusable: so is every retry
                log.error("event=worker_failed_to_start pid=%s", process.pid)
                self.startup_failed = True
                self.should_exit.set()
                return
            log.warning("event=worker_died pid=%s exitcode=%s", process.pid, process.exitcode)
            self.processes[index] = self._new_worker()

    def terminate_all(self) -> None:
        """Drain every worker (SIGTERM), and close this process's copy of the listening socket: once the workers
        have closed theirs, a new connection is refused at once rather than left in the backlog to be reset."""
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def handle_hup(self) -> None:
        """Each worker reloads the configured model (a swap: service.serving), not uvicorn's restart of them."""
        log.info("event=reload_requested signal=SIGHUP workers=%d", len(self.processes))
        for process in self.processes:
            if process.pid is not None and process.process.is_alive():
                os.kill(process.pid, signal.SIGHUP)

    def handle_ttin(self) -> None:
        """Not offered: set CLASSIFIER_WORKERS instead."""
        log.warning("event=signal_ignored signal=SIGTTIN")

    def handle_ttou(self) -> None:
        """Not offered: set CLASSIFIER_WORKERS instead."""
        log.warning("event=signal_ignored signal=SIGTTOU")

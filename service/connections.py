"""Per-connection limits of the HTTP server, below the app: uvicorn's httptools protocol with budgets for what one
connection can make the server hold before a request reaches the app (uvicorn has none of these of its own).

- the request head (request line and headers): at most `max_head_bytes` bytes on the wire, and at most
  `max_headers` headers; beyond either, 431 and the connection is closed, having buffered at most the limit and one
  read. Exact for a head that begins a read (as a request's head does unless pipelined behind another request); of
  one that begins in the middle of a read, what the parser keeps (the request target, header names and values) is
  held to the limit, and its bytes on the wire from the next read on;
- trailers (of a chunked body): budgets of their own, as large: `max_headers` trailers, `max_head_bytes` of their
  names and values, and as many bytes of chunk headers or trailers received without progress;
- time: a request head must arrive whole within `head_timeout_s` of the connection opening or of the previous
  answer (a byte now and then does not extend it); an idle keep-alive connection is closed after uvicorn's
  keep-alive timeout;
- pipelining: at most `max_pipelined` requests parsed and waiting behind the one in progress, and a client that sends
  more in one go gets those answers, a 400 and the close; what it sends while they wait is held unparsed, at most
  `max_head_bytes` and one read, then reading stops until they have run;
- a client that leaves: seen also while reading is stopped (pipelined requests waiting, an upload the app has not
  taken yet), by an epoll set that watches those sockets for its hang-up (Linux), and the request in progress is
  told;
- slow readers: an answer the client does not read for `write_timeout_s` closes the connection;
- connections: at most `max_connections` open at once per process; one more is answered 503 and closed before
  anything of it is read.

Malformed requests (a bad request line, a NUL in a header, a URL over the head limit) get a JSON 400 like every
other error of the service, after the answers of the requests pipelined before them.

And no connection is closed under a client that may be sending on it: while the server drains, every answer says
`Connection: close`, and at the end of the drain an idle connection is closed only once it has been idle for
IDLE_CLOSE_S (uvicorn closes it at once: a request the client sent meanwhile was lost to a reset)."""

import asyncio
import contextlib
import logging
import select
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.error_responses import http_status, raw_answer
from service.errors import (
    MalformedHttp,
    RequestHeadTimeout,
    RequestHeadTooLarge,
    ServiceError,
    TooManyConnections,
    TooManyHeaders,
    TooManyPipelined,
    TrailersTooLarge,
)
from service.lifecycle import DrainingServerState
from service.telemetry import REFUSAL_KEY

log = logging.getLogger(__name__)

ON_REFUSAL = "on_connection_refusal"
"""The key, in the app's lifespan state, of a function told the error code of each refusal (for metrics)."""

IDLE_CLOSE_S = 1.0
"""At the end of a drain, how long a connection must have been idle before it is closed: a client that was about
to send on it has sent by then, and is answered (with `Connection: close`) instead of reset."""


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """The per-connection budgets; see the module's docstring."""

    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    max_pipelined: int = 8
    write_timeout_s: float = 30.0
    max_connections: int = 4096

    def apply(self, config: Config) -> Config:
        """Make uvicorn's `config` serve with BoundedHttpToolsProtocol and these limits (kept on the config, which
        travels to worker processes)."""
        config.http = BoundedHttpToolsProtocol
        config.ws = "none"  # no WebSocket endpoint: an offer to upgrade is declined, its request served as HTTP/1.1
        config.connection_limits = self  # type: ignore[attr-defined]  # uvicorn's Config has no slot for them
        return config


class _HangupWatcher:
    """The sockets of one server (and so of one event loop) whose reading is paused, in one epoll set that wakes the
    loop when a client hangs up (EPOLLRDHUP: its end of sending, or a reset, even with bytes of it still unread). No
    timers, and no work while nobody hangs up. Linux only: elsewhere nothing is watched."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._watched: dict[int, BoundedHttpToolsProtocol] = {}
        loop.add_reader(self._epoll.fileno(), self._woken)

    def watch(self, fd: int, protocol: "BoundedHttpToolsProtocol") -> None:
        self._epoll.register(fd, select.EPOLLRDHUP)
        self._watched[fd] = protocol

    def forget(self, fd: int, protocol: "BoundedHttpToolsProtocol") -> None:
        if self._watched.get(fd) is protocol:
            del self._watched[fd]
            with contextlib.suppress(OSError):  # closed already: the kernel took it out of the set
                self._epoll.unregister(fd)

    def _woken(self) -> None:
        for fd, _ in self._epoll.poll(0):
            if (protocol := self._watched.get(fd)) is not None:
                protocol.client_hung_up()  # which forgets it


class _FlowControl(FlowControl):
    """uvicorn's flow control, which also keeps reading paused while the connection holds more unparsed bytes than its
    limit, whoever asks to resume (uvicorn resumes on every `receive()` of the app), and has the socket watched for
    the client's hang-up while reading is paused: a paused transport does not read a FIN, so a client that left
    behind pipelined requests or an upload not yet taken was not seen, and its request ran on for nobody."""

    def __init__(self, transport: asyncio.Transport, protocol: "BoundedHttpToolsProtocol") -> None:
        super().__init__(transport)
        self._protocol = protocol
        self._watched: tuple[_HangupWatcher, int] | None = None

    def pause_reading(self) -> None:
        super().pause_reading()
        if self._watched is not None or self._transport.is_closing():
            return
        socket = self._transport.get_extra_info("socket")
        watcher = self._protocol.hangup_watcher()
        if socket is not None and watcher is not None:
            watcher.watch(socket.fileno(), self._protocol)
            self._watched = (watcher, socket.fileno())

    def resume_reading(self) -> None:
        if self._protocol.holds_too_much():
            return
        super().resume_reading()
        self.stop_watching()

    def stop_watching(self) -> None:
        if self._watched is not None:
            watcher, fd = self._watched
            self._watched = None
            watcher.forget(fd, self._protocol)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the ConnectionLimits its config carries (the defaults if none)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "connection_limits", None) or _DEFAULT_LIMITS
        self._drain = server_state.drain if isinstance(server_state, DrainingServerState) else None
        self._in_head = True  # between the end of one request's head (or the connection's start) and the next's
        self._head_bytes = 0
        self._header_count = 0  # the request's headers, then its trailers
        self._trailer_bytes = 0  # the request's trailers' names and values
        self._heads_complete = 0  # request heads parsed on this connection
        self._head_begun = False  # from a request's first byte to the end of its head
        self._head_retained = 0  # bytes of the head the parser handed over: at most its bytes on the wire
        self._refusal: ServiceError | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._idle_since = time.monotonic()
        self._since_progress = 0  # bytes fed since the parser last reported progress (a head, body bytes, an end)
        self._replay: bytes | None = None  # a head to parse again, without its offer to upgrade
        self._in_body_of: RequestResponseCycle | None = None  # the request whose body is being read
        self._raw_headers: list[tuple[bytes, bytes]] = []  # the request's, as received (uvicorn lower-cases them)
        self._running: RequestResponseCycle | None = None  # the request whose app runs (the rest are queued)
        self._last_answer: bytes | None = None  # a refusal's, held until the answers before it are sent
        self._answers_owed = 0  # answers to send before it
        self._held = bytearray()  # read while requests are queued, parsed once they have all started
        self._release_pending = False  # the held bytes are to be parsed (scheduled)

    # -- the connection ---------------------------------------------------------------------------------------------

    # uvicorn annotates it for a Transport, asyncio for a BaseTransport: the override matches uvicorn's
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection; over the cap, answer 503 and close at once."""
        super().connection_made(transport)
        self.flow = _FlowControl(transport, self)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                TooManyConnections(
                    f"the server has {self.limits.max_connections} connections open, its limit; retry later"
                )
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the timers and whatever was queued, and tell the request in progress that its client is gone
        (uvicorn tells only the newest request, which is a queued one when requests were pipelined: the one in
        progress then wrote to the closed connection, a server error)."""
        self._cancel(self._head_timer)
        self._cancel(self._write_timer)
        if isinstance(self.flow, _FlowControl):
            self.flow.stop_watching()
        self.pipeline.clear()
        self._held.clear()
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    # -- the request head --------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed the parser, and stop at the first budget passed: the head's size or header count, the queue of
        pipelined requests."""
        if self.transport.is_closing() or self._last_answer is not None:
            return  # closed, or closing once the answers owed are sent: the rest is not read
        if self.pipeline or self._release_pending:
            self._hold(data)
            return
        self._since_progress += len(data)
        self._unset_keepalive_if_required()
        try:
            self._feed_within_head_limit(data)
        except _Refused:
            pass
        except Exception as error:  # httptools' errors: a malformed request
            if self._refusal is None and not self.transport.is_closing():
                self._refusal = MalformedHttp(f"the request could not be parsed as HTTP/1.1: {error}")
        if self._refusal is None and self._since_progress > self.limits.max_head_bytes:
            # bytes the parser holds without a word to us: a head, a chunked body's trailers, or chunk extensions
            self._refusal = (
                self._head_too_large()
                if self._in_body_of is None  # a head, or blank lines before one
                else TrailersTooLarge(f"over {self.limits.max_head_bytes} bytes of chunk headers or trailers")
            )
        if self._refusal is not None:
            self._refuse(self._refusal)

    def _feed_within_head_limit(self, data: bytes) -> None:
        """Feed the parser, no more than the head's limit of bytes while a head is incomplete: a head that arrives
        in one read with the request's end (so it is complete before its size could be checked) is held to the
        limit too. Exact for a head that begins a read (the usual case); one pipelined behind a body in the same
        read is counted from the next read on."""
        while True:
            if not self._in_head or self._head_bytes + len(data) <= self.limits.max_head_bytes:
                if self._in_head:
                    self._head_bytes += len(data)
                self._feed(data)
                return
            room = self.limits.max_head_bytes - self._head_bytes
            heads = self._heads_complete
            self._head_bytes += room
            self._feed(data[:room])
            if self._heads_complete == heads:  # still the same head, and more of it than the limit
                self._refusal = self._head_too_large()
                raise _Refused
            data = data[room:]

    def _hold(self, data: bytes) -> None:
        """Keep what comes while requests are queued, unparsed, up to the head's limit; past it, stop reading. (uvicorn
        stops reading as soon as one is queued: then a client that left was not noticed, and the request in progress
        ran to its end for nobody.)"""
        self._held += data
        if self.holds_too_much():
            self.flow.pause_reading()

    def _release_held(self) -> None:
        """Parse what was held while requests were queued: the last of them has started."""
        self._release_pending = False
        data = bytes(self._held)
        self._held.clear()
        self.flow.resume_reading()  # if the held bytes had stopped it
        if data:
            self.data_received(data)

    def hangup_watcher(self) -> _HangupWatcher | None:
        """The server's hang-up watcher (one per server, so per event loop), made on first use; None where epoll
        cannot watch for hang-ups."""
        if not hasattr(select, "EPOLLRDHUP"):
            return None
        watcher: _HangupWatcher | None = getattr(self.server_state, "hangup_watcher", None)
        if watcher is None:
            watcher = _HangupWatcher(self.loop)
            self.server_state.hangup_watcher = watcher  # type: ignore[attr-defined]  # uvicorn's has no slot for it
        return watcher

    def holds_too_much(self) -> bool:
        """More unparsed bytes held than the head's limit: reading stays paused until they are parsed."""
        return len(self._held) > self.limits.max_head_bytes

    def client_hung_up(self) -> None:
        """The client ended its side while reading was paused: it has left (as a FIN read would say)."""
        if isinstance(self.flow, _FlowControl):
            self.flow.stop_watching()
        log.info("event=client_left_while_not_read client=%s", self.client)
        self.transport.close()

    def _head_too_large(self) -> RequestHeadTooLarge:
        return RequestHeadTooLarge(f"the request line and headers are over {self.limits.max_head_bytes} bytes")

    def _feed(self, data: bytes) -> None:
        """Feed the parser. A request that offers to upgrade (CONNECT aside) is parsed again without the offer, by
        a fresh parser, with what came after its head: each offer is taken out once, so this ends."""
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                if self._replay is None:  # CONNECT: served plainly, as uvicorn does, and the connection closed
                    if self.cycle is not None:
                        self.cycle.keep_alive = False
                    return
                data, self._replay = self._replay + data[upgrade.args[0] :], None
                self.parser = httptools.HttpRequestParser(self)
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn makes its parser

    def on_message_begin(self) -> None:
        """A new request begins: its head is counted from here."""
        super().on_message_begin()
        self._in_head = True
        self._head_begun = True
        self._head_retained = 0
        self._in_body_of = None
        self._header_count = 0
        self._trailer_bytes = 0
        self._raw_headers = []

    def on_url(self, url: bytes) -> None:
        """Parts of the request target, counted against the head's limit."""
        super().on_url(url)
        if len(self.url) > self.limits.max_head_bytes:
            self._refusal = RequestHeadTooLarge(f"the request line is over {self.limits.max_head_bytes} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header, counted against the header limit; or one trailer, counted against that limit and, with its
        name, against the head's size limit (trailers have budgets of their own, as large as the head's: so
        trailers that arrive in one read with the request's end are held to them too)."""
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = TooManyHeaders(f"the request has more than {self.limits.max_headers} headers")
            raise _Refused
        if self._in_head:
            # What is kept of the head, never more than came on the wire (":" and CRLF at least per header): it
            # bounds a head that began in the middle of a read, behind another request, which the wire count does
            # not see whole.
            self._head_retained += len(name) + len(value) + 3
            if len(self.url) + self._head_retained > self.limits.max_head_bytes:
                self._refusal = self._head_too_large()
                raise _Refused
        else:
            self._trailer_bytes += len(name) + len(value)
            if self._trailer_bytes > self.limits.max_head_bytes:
                self._refusal = TrailersTooLarge(f"over {self.limits.max_head_bytes} bytes of trailers")
                raise _Refused
        self._raw_headers.append((name, value))
        super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        """Body bytes: progress. A queued request's body, in the read of its head, is kept in full (it is at most that
        read) but does not stop reading, as uvicorn would past 64 KiB: what comes after it is held (_hold)."""
        self._since_progress = 0
        super().on_body(body)
        if self.pipeline and self.pipeline[0][0] is self.cycle:
            self.flow.resume_reading()

    def on_message_complete(self) -> None:
        """The request is whole: progress. If it was answered before its body was all here, what comes next is
        the next request's head."""
        if self._replay is not None:
            return  # not whole: the parser skipped its body (see _without_upgrade)
        self._since_progress = 0
        self._in_body_of = None
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete and not self.pipeline:
            self._in_head = True
            self._head_bytes = 0
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        """The head is whole: stop its clock and its byte count, and bound the pipeline."""
        if self.parser.should_upgrade() and self.parser.get_method() != b"CONNECT":
            self._replay = self._without_upgrade()
            return
        self._in_head = False
        self._head_begun = False
        self._heads_complete += 1
        self._head_bytes = 0
        self._header_count = 0
        self._since_progress = 0
        self._cancel(self._head_timer)
        if len(self.pipeline) >= self.limits.max_pipelined:
            self._refusal = TooManyPipelined(
                f"more than {self.limits.max_pipelined} requests were sent ahead of their answers"
            )
            raise _Refused
        super().on_headers_complete()
        self._in_body_of = self.cycle
        if not (self.pipeline and self.pipeline[0][0] is self.cycle):
            self._running = self.cycle  # started at once, not queued
        else:  # queued: uvicorn stopped reading; what comes next is read and held (_hold), so a FIN is seen
            self.flow.resume_reading()
        if self._drain is not None and self._drain.refusing and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with `Connection: close`: the client will not send on it again

    def _without_upgrade(self) -> bytes:
        """The request's head as received, less its offer to switch protocols (`Upgrade`, `HTTP2-Settings`, and
        those tokens of `Connection`).

        A client may offer to upgrade any request (`curl --http2` and Java's HTTP clients offer HTTP/2 as
        `Upgrade: h2c` on plain HTTP), and a server that does not switch serves the request as if the offer had
        not been made (RFC 9110, 7.8). httptools treats every such offer as accepted: it ends the request at its
        head and skips its body, so the app got an empty body (a 422 for a valid upload; uvicorn issue #2722). So
        the head is parsed again without the offer, by a new parser, which then reads the body and what follows."""
        headers = []
        for name, value in self._raw_headers:
            if name.lower() in (b"upgrade", b"http2-settings"):
                continue
            if name.lower() == b"connection":
                tokens = [token.strip() for token in value.split(b",")]
                value = b", ".join(token for token in tokens if token.lower() not in (b"upgrade", b"http2-settings"))
                if not value:
                    continue
            headers.append(name + b": " + value + b"\r\n")
        version = self.parser.get_http_version().encode("ascii")
        request_line = self.parser.get_method() + b" " + self.url + b" HTTP/" + version + b"\r\n"
        return request_line + b"".join(headers) + b"\r\n"

    def on_response_complete(self) -> None:
        """An answer is sent: the next request's head has its own time and byte budget, and once no request is queued
        what was held meanwhile is parsed. After a refusal that waited for the answers before it, the last of them is
        followed by the refusal's, then the close."""
        queued = self.pipeline[-1][0] if self.pipeline else None  # the next to run
        super().on_response_complete()
        if queued is not None and all(cycle is not queued for cycle, _ in self.pipeline):
            self._running = queued  # started by uvicorn
        self._idle_since = time.monotonic()
        self._arm_write_timer_if_unsent()
        if self._last_answer is not None:
            self.flow.pause_reading()
            self._answers_owed -= 1
            if self._answers_owed == 0 and not self.transport.is_closing():
                self._close_with(self._last_answer)
            return
        if self.transport.is_closing():
            return
        if not self.pipeline and (self.cycle is None or not self.cycle.more_body):
            self._in_head = True  # whatever comes next counts as the next request's head, and is timed as one
        # else answered before its body was read (a 404, say): the rest of the body is still the body, not a head
        # (it had been counted as one: 431); it has the head's time to arrive, then the connection is closed
        if not self._head_begun:
            self._head_bytes = 0  # (a head already begun keeps its count)
        self._arm_head_timer()
        if not self.pipeline and self._held and not self._release_pending:
            self._release_pending = True  # parsed from the loop, not inside this answer's send; in order
            self.loop.call_soon(self._release_held)

    def _arm_write_timer_if_unsent(self) -> None:
        """An answer not yet taken by the client: it has write_timeout_s to take it (also while closing)."""
        if self.transport.get_write_buffer_size() and self._write_timer is None and self.limits.write_timeout_s > 0:
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_timed_out)

    def _arm_head_timer(self) -> None:
        self._cancel(self._head_timer)
        if self.limits.head_timeout_s > 0:
            self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and self.cycle.response_complete and self.cycle.more_body:
            self.transport.close()  # answered, and the unread rest of its body still not here
            return
        if (
            self.transport.is_closing()
            or not self._in_head
            or (self.cycle is not None and not self.cycle.response_complete)
        ):
            return
        if self._head_bytes == 0 and not self._head_begun:  # nothing since the last answer (or ever): idle, closed
            self.transport.close()
            return
        self._refuse(
            RequestHeadTimeout(f"the request line and headers did not arrive within {self.limits.head_timeout_s:g} s")
        )

    def shutdown(self) -> None:
        """The server is stopping: a connection in the middle of a request is closed after its answer (uvicorn's
        way); an idle one once it has been idle for IDLE_CLOSE_S, unless a request arrives first."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # closed, or a request came: it is answered with `Connection: close`
        idle = time.monotonic() - self._idle_since
        if idle >= IDLE_CLOSE_S and self._head_bytes == 0 and not self._head_begun:
            self.transport.close()
        else:
            self.loop.call_later(max(IDLE_CLOSE_S - idle, 0.05), self._close_when_idle)

    # -- answers ------------------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The client is not reading: give it `write_timeout_s` to catch up, then close."""
        super().pause_writing()
        if self._write_timer is None and self.limits.write_timeout_s > 0:
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        """The client read enough."""
        self._cancel(self._write_timer)
        self._write_timer = None
        super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.get_write_buffer_size():
            return  # taken meanwhile
        log.info("event=connection_closed reason=client_not_reading client=%s", self.client)
        self.transport.abort()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's plain-text 400, as JSON."""
        self._refuse(MalformedHttp(msg))

    def _refuse(self, error: ServiceError) -> None:
        """Answer `error` in the service's JSON, and close the connection; after the answers of the requests
        before it, if some are still in progress or queued (pipelined)."""
        self._cancel(self._head_timer)
        if self.transport.is_closing() or self._last_answer is not None:
            return
        log.info("event=connection_refused status=%d error=%s client=%s", http_status(error), error.error, self.client)
        if (counted := self.app_state.get(ON_REFUSAL)) is not None:
            counted(error.error)
        answer = raw_answer(error)
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is not None and cycle is self._in_body_of:
            # Refused in its own body (a bad chunk, trailers over the limit, a Transfer-Encoding httptools refuses
            # after the head).
            if self.pipeline:  # queued behind another request's answer: it never runs
                self.pipeline.popleft()  # the newest, and so this one
            elif not cycle.response_started:  # running, waiting for its body: answered here, the app told it left
                cycle.scope.setdefault("state", {})[REFUSAL_KEY] = error
                cycle.disconnected = True
                cycle.message_event.set()
                cycle = None
            else:  # answered early (before its body ended), or being answered: closed, no second answer
                self._close_with(b"")
                return
        if cycle is None or cycle.response_complete:
            self._close_with(answer)
            return
        # Requests before it are in progress or queued: they are answered first, then this, then the connection is
        # closed (it had been closed at once, and their answers lost). Nothing more is read meanwhile.
        self._last_answer = answer
        self._answers_owed = len(self.pipeline) + 1  # those queued, and the one in progress
        self.flow.pause_reading()

    def _close_with(self, answer: bytes) -> None:
        if answer:
            self.transport.write(answer)
        self.pipeline.clear()
        self.transport.close()
        self._arm_write_timer_if_unsent()  # a client that does not read would hold the closing connection

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


_DEFAULT_LIMITS = ConnectionLimits()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing at once; the refusal is already recorded."""

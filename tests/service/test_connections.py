"""The connection protocol (service/connections.py) driven directly, over a transport whose client never reads: what
a real socket shows only once the kernel's buffers are full (the system tests use real sockets otherwise)."""

import asyncio
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.connections import BoundedHttpToolsProtocol, ConnectionLimits


class UnreadTransport(asyncio.Transport):
    """A transport whose client takes nothing: every byte written stays in its buffer, below the high-water mark
    (so the protocol is never told to pause writing)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False
        self.aborted = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def get_write_buffer_size(self) -> int:
        return len(self.written)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True  # a real transport closes once its buffer is sent: never, here

    def abort(self) -> None:
        self.closing = True
        self.aborted.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def connected(transport: asyncio.Transport, app: Any = hello) -> BoundedHttpToolsProtocol:
    config = ConnectionLimits(write_timeout_s=0.05).apply(Config(app=app, log_level="warning"))
    config.load()
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    protocol.connection_made(transport)
    return protocol


def test_a_refusal_behind_an_answer_the_client_does_not_read_is_cut_off_at_the_write_timeout() -> None:
    # It had been held open for good: the refusal waited for the answer before it, then closed without a timer.
    async def scenario() -> bytes:
        transport = UnreadTransport()
        connected(transport).data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
        await asyncio.wait_for(transport.aborted.wait(), timeout=30)  # only a guard against a hang
        return transport.written

    written = asyncio.run(scenario())
    assert written.startswith(b"HTTP/1.1 200 ") and b'"error":"bad_request"' in written  # both answers, in order


def test_the_request_in_progress_is_told_its_client_left_when_others_were_pipelined_behind_it() -> None:
    # uvicorn told only the newest request (a queued one): the one in progress went on, and its answer raised a
    # server error on the closed connection
    async def scenario() -> list[str]:
        heard: list[str] = []
        left = asyncio.Event()

        async def waits_for_its_client(scope: Scope, receive: Receive, send: Send) -> None:
            heard.append((await receive())["type"])  # the request
            heard.append((await receive())["type"])  # then nothing more, until the client leaves
            left.set()

        transport = UnreadTransport()
        protocol = connected(transport, waits_for_its_client)
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0)  # the first request's app starts; the second is queued behind it
        protocol.connection_lost(None)
        await asyncio.wait_for(left.wait(), timeout=30)  # only a guard against a hang
        return heard

    assert asyncio.run(scenario()) == ["http.request", "http.disconnect"]

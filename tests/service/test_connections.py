"""The connection protocol (service/connections.py) driven directly, over a transport whose client never reads: what
a real socket shows only once the kernel's buffers are full (the system tests use real sockets otherwise)."""

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
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


class ReadingTransport(UnreadTransport):
    """An UnreadTransport that records whether the protocol has reading paused."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def echo_path(scope: Scope, receive: Receive, send: Send) -> None:
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def test_reading_goes_on_while_requests_are_queued_and_what_it_brings_is_parsed_after_them_in_order() -> None:
    # uvicorn stopped reading as soon as a request was queued: a client that then left was not seen, and the request
    # in progress ran to its end for nobody
    async def scenario() -> tuple[bool, bool, bytes]:
        transport = ReadingTransport()
        protocol = connected(transport, echo_path)
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        reading_while_queued = transport.reading
        protocol.data_received(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /d HTT")  # read while /b waits: held
        protocol.data_received(b"P/1.1\r\nHost: x\r\n\r\n")
        held_unparsed = len(protocol.pipeline) == 1
        for _ in range(100):  # only a guard against a hang
            if transport.written.count(b"HTTP/1.1 200") == 4:
                break
            await asyncio.sleep(0.01)
        return reading_while_queued, held_unparsed, transport.written

    reading_while_queued, held_unparsed, written = asyncio.run(scenario())
    assert reading_while_queued and held_unparsed
    assert [part.rsplit(b"\r\n\r\n", 1)[-1] for part in written.split(b"HTTP/1.1 ")[1:]] == [b"/a", b"/b", b"/c", b"/d"]


def test_what_is_held_while_requests_are_queued_is_bounded_by_the_head_limit() -> None:
    async def scenario() -> list[bool]:
        transport = ReadingTransport()
        protocol = connected(transport, echo_path)
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        reading = [transport.reading]
        protocol.data_received(b"GET /c HTTP/1.1\r\nX: " + b"y" * 65_000)
        reading.append(transport.reading)  # 65,000 bytes: under the 64 KiB limit
        protocol.data_received(b"y" * 1_000)
        reading.append(transport.reading)  # over it: reading stops until the queue has run
        protocol.flow.resume_reading()  # as uvicorn does on each receive() of the app
        reading.append(transport.reading)
        return reading

    assert asyncio.run(scenario()) == [True, True, False, False]


def test_a_queued_requests_body_does_not_stop_reading() -> None:
    # uvicorn stops reading past 64 KiB of a body its app has not taken: for a queued request, that hid a FIN too
    async def scenario() -> bool:
        transport = ReadingTransport()
        protocol = connected(transport, echo_path)
        upload = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100_000
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + upload)
        return transport.reading

    assert asyncio.run(scenario())


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_client_that_hangs_up_while_reading_is_paused_is_seen(loop_factory: Callable[[], Any]) -> None:
    # a paused transport does not read the FIN: the request in progress ran on for nobody (a real socket here)
    async def scenario() -> list[str]:
        heard: list[str] = []
        left = asyncio.Event()

        async def waits_for_its_client(scope: Scope, receive: Receive, send: Send) -> None:
            heard.append((await receive())["type"])
            heard.append((await receive())["type"])
            left.set()

        config = ConnectionLimits().apply(Config(app=waits_for_its_client, log_level="warning"))
        config.load()
        loop = asyncio.get_running_loop()
        protocols: list[BoundedHttpToolsProtocol] = []

        def made() -> BoundedHttpToolsProtocol:
            protocols.append(BoundedHttpToolsProtocol(config, ServerState(), {}, loop))
            return protocols[-1]

        server = await loop.create_server(made, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            while not heard:
                await asyncio.sleep(0.01)
            protocols[0].flow.pause_reading()  # as for an upload the app has not taken, or too much held
            client.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(left.wait(), timeout=30)  # only a guard against a hang
        server.close()
        return heard

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(scenario()) == ["http.request", "http.disconnect"]

"""Hostile clients for the soak (`python -m benchmarks.soak --attack`): issue 23's table, one attack after another
in a loop on its own thread, each a real client doing what the table says, against the server the normal traffic
goes to. What each attack got back is counted: a status code, or how the server ended the connection."""

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx2 as httpx
from PIL import Image

from tests.conftest import encode
from tests.helpers import (
    bmp_rle8_row,
    gif_dispose_bomb,
    image_files,
    jpeg_of_empty_markers,
    multipart,
    png_of_private_chunks,
)


def costly_jpeg() -> bytes:
    """6000x6000 progressive JPEG of 99 scans, 320 KB: within every size limit, 2-3 s of CPU to decode."""
    data = encode(Image.new("RGB", (6000, 6000), (200, 30, 30)), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * 89 + data[-2:]


def _status(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "closed"


class Attacker:
    """Runs the attacks in turn against 127.0.0.1:`port` until `stop()`; `outcomes` counts (attack, result)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attacker", daemon=True)
        self._files = {
            "costly-jpeg": costly_jpeg(),
            "jpeg-empty-markers": jpeg_of_empty_markers(400_000),
            "png-private-chunks": png_of_private_chunks(160_000),
            "bmp-rle-row": bmp_rle8_row(36_000_000),
            "gif-dispose": gif_dispose_bomb(),
        }
        self.attacks: dict[str, Callable[[], str]] = {
            "pipelined-flood": self.pipelined_flood,
            "huge-header": self.huge_header,
            "silent-connections": self.silent_connections,
            "unread-answers": self.unread_answers,
            "leave-mid-decode": self.leave_mid_decode,
        } | {name: (lambda name=name: self.upload(name)) for name in self._files}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, attack in self.attacks.items():
                if self._stop.is_set():
                    return
                try:
                    result = attack()
                except (OSError, httpx.HTTPError) as error:
                    result = type(error).__name__
                self.outcomes[(name, result)] += 1
                self._stop.wait(0.5)

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def upload(self, name: str) -> str:
        """32 copies of a small costly file (1 of the large ones) in one /predict."""
        data = self._files[name]
        copies = 32 if len(data) < 4_000_000 and name not in {"costly-jpeg", "bmp-rle-row", "gif-dispose"} else 1
        files = image_files(*((f"{name}-{index}", data) for index in range(copies)))
        return str(httpx.post(f"http://127.0.0.1:{self.port}/predict", files=files, timeout=60).status_code)

    def pipelined_flood(self) -> str:
        """Tiny GETs written for 2 s on one connection without reading an answer."""
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 256
        with self._connect() as connection:
            connection.settimeout(0.2)
            deadline = time.monotonic() + 2
            with contextlib.suppress(OSError):
                while time.monotonic() < deadline:
                    connection.sendall(request)
                return "not closed"
            return "closed"

    def huge_header(self) -> str:
        """A 1 MB Content-Type header on /predict."""
        with self._connect() as connection:
            with contextlib.suppress(OSError):
                connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: " + b"a" * 1_000_000)
            with contextlib.suppress(OSError):
                return _status(connection.recv(64))
            return "closed"

    def silent_connections(self) -> str:
        """200 connections that send nothing, held 3 s."""
        connections = [self._connect() for _ in range(200)]
        self._stop.wait(3)
        for connection in connections:
            connection.close()
        return "held"

    def unread_answers(self) -> str:
        """20 connections that send a v2 request with a 1.9 MB id and never read the answer, held 3 s."""
        body = b'{"id": "' + b"i" * 1_900_000 + b'", "inputs": []}'
        head = "POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        connections = []
        for _ in range(20):
            connection = self._connect()
            with contextlib.suppress(OSError):
                connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            connections.append(connection)
        self._stop.wait(3)
        for connection in connections:
            connection.close()
        return "held"

    def leave_mid_decode(self) -> str:
        """The costly JPEG, the connection closed 0.3 s into its decoding."""
        body, content_type = multipart(image_files(("costly.jpg", self._files["costly-jpeg"])))
        with self._connect() as connection:
            head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            self._stop.wait(0.3)
        return "left"

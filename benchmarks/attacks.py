"""Hostile clients: issue 23's table, each row a real client doing what the table says against 127.0.0.1:`port`.
The soak (`python -m benchmarks.soak --attack`) runs them one after another in a loop at a smaller scale beside
its normal traffic; tests/system/test_attack_table.py runs each at the table's scale and measures what it cost.

Each attack returns what the server did with it: a status code, or how it ended the attacker's connections
("closed x200": closed unanswered; "400 x20": answered 400 then closed; "open x3": not ended by the server within
the time given)."""

import contextlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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

MODEL_INFER = "/v2/models/cifar10-resnet9/infer"
"""The bundled model's v2 infer path: the v2 attacks need a model that exists to get past the route."""


def costly_jpeg() -> bytes:
    """6000x6000 progressive JPEG of 99 scans, 320 KB: within every size limit, 2-3 s of CPU to decode."""
    data = encode(Image.new("RGB", (6000, 6000), (200, 30, 30)), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * 89 + data[-2:]


def _status(head: bytes) -> str:
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "closed"


def _counted(outcomes: Counter[str]) -> str:
    return ", ".join(f"{outcome} x{count}" for outcome, count in sorted(outcomes.items()))


def _endings(connections: list[socket.socket], within_s: float) -> str:
    """Read each connection to its end (keeping only the start of what arrives), for at most `within_s` in all,
    then close it: how the server ended them, counted."""
    deadline = time.monotonic() + within_s
    endings: Counter[str] = Counter()
    for connection in connections:
        start = b""
        try:
            while True:
                connection.settimeout(max(0.0, deadline - time.monotonic()))  # 0: only what has arrived
                if not (chunk := connection.recv(65536)):
                    break
                start = start or chunk[:64]
            endings[_status(start)] += 1
        except (TimeoutError, BlockingIOError):
            endings["open"] += 1
        except ConnectionResetError:
            endings[_status(start)] += 1
        finally:
            connection.close()
    return _counted(endings)


class Attacker:
    """The attacks against 127.0.0.1:`port`. `start()` runs the soak's mix (`SOAK_MIX`) in a loop on a thread
    until `stop()`; `outcomes` counts (attack, result)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attacker", daemon=True)
        self.files = {
            "costly-jpeg": costly_jpeg(),
            "jpeg-empty-markers": jpeg_of_empty_markers(400_000),
            "png-private-chunks": png_of_private_chunks(160_000),
            "bmp-rle-row": bmp_rle8_row(36_000_000),
            "gif-dispose": gif_dispose_bomb(),
        }

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, attack in SOAK_MIX.items():
                if self._stop.is_set():
                    return
                try:
                    result = attack(self)
                except (OSError, httpx.HTTPError) as error:
                    result = type(error).__name__
                self.outcomes[(name, result)] += 1
                self._stop.wait(0.5)

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def upload(self, data: bytes, name: str, copies: int = 1, requests: int = 1) -> str:
        """`requests` concurrent /predict requests of `copies` copies of `data` each; their statuses, counted."""
        files = image_files(*((f"{name}-{index}", data) for index in range(copies)))

        def one(_: int) -> str:
            url = f"http://127.0.0.1:{self.port}/predict"
            return str(httpx.post(url, files=files, timeout=120).status_code)

        with ThreadPoolExecutor(requests) as pool:
            return _counted(Counter(pool.map(one, range(requests))))

    def v2_bodies(self, files: int, file_bytes: int, requests: int) -> str:
        """`requests` concurrent binary v2 infer requests of `files` files of `file_bytes` each (PNG signatures
        followed by zeros): their statuses, counted."""
        data = [b"\x89PNG" + bytes(file_bytes - 4) for _ in range(files)]
        binary = b"".join(struct.pack("<I", len(file)) + file for file in data)
        parameters = {"binary_data_size": len(binary)}
        tensor = {"name": "image", "shape": [files], "datatype": "BYTES", "parameters": parameters}
        head = json.dumps({"inputs": [tensor]}).encode()
        headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}

        def one(_: int) -> str:
            url = f"http://127.0.0.1:{self.port}{MODEL_INFER}"
            return str(httpx.post(url, content=head + binary, headers=headers, timeout=120).status_code)

        with ThreadPoolExecutor(requests) as pool:
            return _counted(Counter(pool.map(one, range(requests))))

    def pipelined_flood(self, seconds: float) -> str:
        """Tiny GETs written on one connection for up to `seconds` without reading an answer: "closed" when the
        server cut the connection off before then."""
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 256
        with self._connect() as connection:
            connection.settimeout(0.2)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    connection.sendall(request)
                except TimeoutError:  # the server is not reading: keep trying
                    continue
                except OSError:
                    return "closed"
            return "not closed"

    def huge_header(self, size: int) -> str:
        """A Content-Type header of `size` bytes on /predict."""
        with self._connect() as connection:
            with contextlib.suppress(OSError):  # closed by the server before the whole head was sent
                connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: " + b"a" * size)
            return _endings([connection], within_s=30)

    def silent_connections(self, count: int, hold_s: float, within_s: float) -> str:
        """`count` connections that send nothing, held `hold_s`, then left for the server to end within
        `within_s`."""
        connections = [self._connect() for _ in range(count)]
        self._stop.wait(hold_s)
        return _endings(connections, within_s)

    def unread_answers(self, count: int, hold_s: float, within_s: float) -> str:
        """`count` connections that send a v2 request with a 1.9 MB id and do not read the answer for `hold_s`,
        then left for the server to end within `within_s`."""
        body = b'{"id": "' + b"i" * 1_900_000 + b'", "inputs": []}'
        head = f"POST {MODEL_INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        connections = []
        for _ in range(count):
            connection = self._connect()
            with contextlib.suppress(OSError):
                connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            connections.append(connection)
        self._stop.wait(hold_s)
        return _endings(connections, within_s)

    def leave_mid_decode(self, after_s: float = 0.3) -> str:
        """The costly JPEG, the connection closed `after_s` into its decoding."""
        body, content_type = multipart(image_files(("costly.jpg", self.files["costly-jpeg"])))
        with self._connect() as connection:
            head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(after_s)
        return "left"


SOAK_MIX: dict[str, Callable[[Attacker], str]] = {
    "pipelined-flood": lambda attacker: attacker.pipelined_flood(seconds=2),
    "huge-header": lambda attacker: attacker.huge_header(1_000_000),
    "silent-connections": lambda attacker: attacker.silent_connections(200, hold_s=3, within_s=0),
    "unread-answers": lambda attacker: attacker.unread_answers(20, hold_s=3, within_s=0),
    "leave-mid-decode": lambda attacker: attacker.leave_mid_decode(),
    "costly-jpeg": lambda attacker: attacker.upload(attacker.files["costly-jpeg"], "costly-jpeg"),
    "jpeg-empty-markers": lambda attacker: attacker.upload(attacker.files["jpeg-empty-markers"], "markers", 32),
    "png-private-chunks": lambda attacker: attacker.upload(attacker.files["png-private-chunks"], "chunks", 32),
    "bmp-rle-row": lambda attacker: attacker.upload(attacker.files["bmp-rle-row"], "rle"),
    "gif-dispose": lambda attacker: attacker.upload(attacker.files["gif-dispose"], "gif"),
}
"""The soak's mix: the table's attacks at a scale that lets each end within a few seconds."""

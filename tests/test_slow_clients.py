"""Slow uploads cannot lock other clients out: with the default settings, 64 clients trickling their bodies hold
no admission slot, and a normal request is answered at once (through the real server)."""

import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx2 as httpx

from tests.conftest import encode, noisy_image
from tests.test_cancellation import metric, wait_for
from tests.test_end_to_end import running_server

TRICKLERS = 64  # the default CLASSIFIER_MAX_CONCURRENT_REQUESTS


def test_trickling_uploads_do_not_lock_out_a_normal_request(bundled_model: Path, tmp_path: Path) -> None:
    photo = [("files", ("cat.png", encode(noisy_image((200, 120, 60)), "PNG"), "image/png"))]
    with running_server(bundled_model, tmp_path / "server.log") as url, ExitStack() as sockets:
        host, port = url.removeprefix("http://").split(":")
        for index in range(TRICKLERS):
            client = sockets.enter_context(socket.create_connection((host, int(port))))
            client.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="files"; '
                + f'filename="slow{index}.png"\r\n\r\n'.encode()
                + b"\x89PNG"  # ... and the rest never comes (until the request timeout)
            )
        # Every trickler is in progress on the server (the scrape itself is one more request in flight).
        wait_for(lambda: metric(url, "classifier_http_requests_in_flight") >= TRICKLERS + 1, "the tricklers")
        started = time.perf_counter()
        answer = httpx.post(f"{url}/predict", files=photo, timeout=30)
        elapsed = time.perf_counter() - started
        assert answer.status_code == 200, answer.text
        assert metric(url, "classifier_refusals_total", reason="overloaded") == 0
    print(f"\nwith {TRICKLERS} trickling uploads in progress, a normal request got 200 in {elapsed * 1000:.0f} ms")

"""Slow uploads cannot lock other clients out: with the default settings, 64 clients trickling their bodies hold
no admission slot, and a normal request is answered at once (through the real server)."""

import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx2 as httpx

from tests.conftest import encode, noisy_image, read_response
from tests.helpers import image_files, metric, running_server, wait_for

TRICKLERS = 64  # the default CLASSIFIER_MAX_CONCURRENT_REQUESTS
PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'


def test_trickling_uploads_do_not_lock_out_a_normal_request(bundled_model: Path, tmp_path: Path) -> None:
    photo = image_files(("cat.png", encode(noisy_image((200, 120, 60)), "PNG")))
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


def test_uploads_share_a_memory_budget_and_a_stalled_one_is_cut_off(bundled_model: Path, tmp_path: Path) -> None:
    """A client that sends most of a body and stalls holds those bytes, so another upload that would go over the
    budget is refused 503 (JSON, Retry-After) mid-body; after the idle timeout the stalled one gets 408 and its
    bytes are given back."""
    settings = {"max_body_bytes": "200000", "body_memory_bytes": "200000", "body_idle_timeout_s": "2"}
    with running_server(bundled_model, tmp_path / "server.log", **settings) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as staller:
            staller.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 190000\r\n\r\n" + PART_HEAD + b"x" * 150_000
            )

            def chunked() -> object:
                yield PART_HEAD  # no Content-Length: counted as it arrives
                yield from [b"y" * 10_000] * 10

            def refused_mid_body() -> bool:
                answer = httpx.post(
                    f"{url}/predict", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=b"}
                )
                return answer.status_code == 503

            wait_for(refused_mid_body, "the stalled upload's bytes to be counted")
            answer = httpx.post(
                f"{url}/predict", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=b"}
            )
            assert answer.status_code == 503 and answer.json()["error"] == "overloaded", answer.text
            assert answer.headers["Retry-After"] == "1"
            status, reply = read_response(staller)
        assert status == 408 and reply["error"] == "upload_stalled", reply
        photo = image_files(("cat.png", encode(noisy_image((200, 120, 60)), "PNG")))
        assert httpx.post(f"{url}/predict", files=photo, timeout=30).status_code == 200
        assert metric(url, "classifier_refusals_total", reason="upload_stalled") == 1


def test_a_client_gone_mid_upload_is_counted_as_499_not_as_a_server_error(bundled_model: Path, tmp_path: Path) -> None:
    with running_server(bundled_model, tmp_path / "server.log") as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as leaver:
            leaver.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n" + PART_HEAD + b"x" * 20_000
            )
            wait_for(lambda: metric(url, "classifier_http_requests_in_flight") >= 2, "the upload to be in progress")
        wait_for(
            lambda: metric(url, "classifier_http_requests_total", route="/predict", method="POST", status="499") == 1,
            "the upload to be logged as 499",
        )
        assert metric(url, "classifier_http_requests_total", route="/predict", method="POST", status="500") == 0
        assert metric(url, "classifier_http_requests_in_flight") == 1  # only the scrape itself
    assert "Exception in ASGI application" not in (tmp_path / "server.log").read_text()

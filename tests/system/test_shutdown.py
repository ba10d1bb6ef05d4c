"""Graceful shutdown of the real server: SIGTERM with requests in flight."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import REPO, encode, noisy_image, read_response
from tests.helpers import answers_200, free_port, image_files, metric, multipart

REQUESTS = 48
IMAGES_PER_REQUEST = 64
HELD_BACK = 8


@pytest.mark.parametrize(
    ("workers", "stop"),
    [(1, "sigterm"), (2, "sigterm"), (2, "ctrl-c")],
    ids=["one-worker", "two-workers", "two-workers-ctrl-c-to-the-group"],
)
def test_sigterm_drains_in_flight_requests_and_exits_zero(
    workers: int, stop: str, bundled_model: Path, tmp_path: Path
) -> None:
    """SIGTERM to the server (as Kubernetes sends it), or Ctrl-C, which the terminal sends to every process of the
    group (the supervisor passes it on too, so each worker gets two signals)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "CLASSIFIER_MODEL_PATH": str(bundled_model),
        "CLASSIFIER_PORT": str(port),
        "CLASSIFIER_MAX_CONCURRENT_REQUESTS": "256",
        # Room for every image at once: on a loaded machine the held-back uploads may complete before any batch ran.
        "CLASSIFIER_QUEUE_CAPACITY": str((REQUESTS + HELD_BACK) * IMAGES_PER_REQUEST),
        "CLASSIFIER_QUEUE_TIMEOUT_MS": "0",
        "CLASSIFIER_DRAIN_TIMEOUT_S": "20",
        "CLASSIFIER_LOG_FORMAT": "json",
        "CLASSIFIER_WORKERS": str(workers),
        "CLASSIFIER_BODY_IDLE_TIMEOUT_S": "120",  # the held-back upload below must not be cut off
    }
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=output, stderr=output, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200 and events_logged(log, "ready") == workers:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        images = image_files(
            *(
                (f"{i}.png", encode(noisy_image((i * 3 % 256, 60, 90), (32, 32), seed=i), "PNG"))
                for i in range(IMAGES_PER_REQUEST)
            )
        )

        def send(_: int) -> tuple[int, str | None]:
            try:
                response = httpx.post(f"{url}/predict", files=images, timeout=60)
            except httpx.ConnectError:
                # On a loaded machine a client thread may only connect after the drain ended and the listener
                # closed: refused at the socket, never accepted.
                return 0, "connection_refused"
            return response.status_code, response.json().get("error")

        # Uploads held back by the test: accepted before SIGTERM, they keep the server draining (so the probes
        # below meet a draining server however fast the rest is answered), then complete during the drain, so
        # their 512 images are queued and run while it drains.
        body, content_type = multipart(images)
        held_back = [socket.create_connection(("127.0.0.1", port)) for _ in range(HELD_BACK)]
        for connection in held_back:
            connection.sendall(
                f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body[:-10]
            )
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            results = [pool.submit(send, i) for i in range(REQUESTS)]
            # SIGTERM once every request has reached the server (answered or in progress), so each was accepted.
            deadline = time.monotonic() + 120
            while arrived(url) < REQUESTS + HELD_BACK:
                assert time.monotonic() < deadline, "the requests did not all reach the server"
                time.sleep(0.05)
            done_before = sum(future.done() for future in results)
            signalled = time.monotonic()
            if stop == "sigterm":
                server.send_signal(signal.SIGTERM)
            else:
                os.killpg(server.pid, signal.SIGINT)
            # With workers, the supervisor passes SIGTERM on within half a second (uvicorn's loop): until every
            # worker drains, new requests may still be accepted (and answered), which is right but not tested here.
            while events_logged(log, "drain_started") < workers:
                assert time.monotonic() - signalled < 10, log.read_text()
                time.sleep(0.02)
            # With two workers, one may finish draining and close a connection it had just accepted without
            # reading it (uvicorn's own shutdown): the probes retry until the draining one answers.
            ready_during_drain = answered(lambda: httpx.get(f"{url}/ready", timeout=5))
            refused = answered(lambda: httpx.post(f"{url}/predict", files=images[:1], timeout=5))
            for connection in held_back:
                connection.sendall(body[-10:])
            held_back_answers = [read_response(connection) for connection in held_back]
            for connection in held_back:
                connection.close()
            statuses = [future.result() for future in results]
        exit_code = server.wait(timeout=30)
        exit_seconds = time.monotonic() - signalled
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    # Every request reached the server before SIGTERM: each was accepted, and each is answered.
    in_flight = REQUESTS - done_before + HELD_BACK
    held_back_statuses = [status for status, _ in held_back_answers]
    print(
        f"\nshutdown: {in_flight} accepted requests in flight at SIGTERM ({done_before} done before it), "
        f"{[status for status, _ in statuses].count(200)} of {REQUESTS} answered 200, held back until the drain "
        f"{held_back_statuses}, exit code {exit_code}, exited {exit_seconds:.2f} s after SIGTERM"
    )
    assert statuses == [(200, None)] * REQUESTS
    assert held_back_statuses == [200] * HELD_BACK, [answer.get("error") for _, answer in held_back_answers]
    assert all(len(answer["predictions"]) == IMAGES_PER_REQUEST for _, answer in held_back_answers)
    assert exit_code == 0
    assert exit_seconds < 20
    assert ready_during_drain.status_code == 503
    assert ready_during_drain.json()["status"] == "draining"
    assert refused.status_code == 503
    assert refused.json()["error"] == "shutting_down"
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [event["message"] for event in events]
    assert any(message.startswith("event=drain_started") for message in messages)
    assert any(message.startswith("event=drain_finished") for message in messages)
    access = [event for event in events if event.get("route") == "/predict"]
    assert sum(event["status"] == 200 for event in access) == REQUESTS + HELD_BACK
    assert not [message for message in messages if "Traceback" in message or "exceeded" in message]
    if workers > 1:
        assert len({event["pid"] for event in access}) >= 1
        (metrics_dir,) = re.findall(r"metrics_dir=(\S+)", log.read_text())
        assert not Path(metrics_dir).exists(), "the shared metrics folder was left behind"


def answered(call: Callable[[], httpx.Response], attempts: int = 20) -> httpx.Response:
    """`call`'s response, retried while the connection is closed before any response (never processed)."""
    for _ in range(attempts - 1):
        try:
            return call()
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
            time.sleep(0.05)
    return call()


def events_logged(log: Path, event: str) -> int:
    """How many times `event=<event>` was logged so far (once per worker for start-up and drain events)."""
    return log.read_text().count(f"event={event} ")


def arrived(url: str) -> float:
    """/predict requests that reached the server: answered ones plus those in progress (all workers together)."""
    answered = metric(url, "classifier_http_requests_total", route="/predict")
    return answered + metric(url, "classifier_http_requests_in_flight") - 1  # the scrape is in flight too


def test_two_workers_stop_under_keep_alive_load_answering_every_request(bundled_model: Path, tmp_path: Path) -> None:
    """300 requests from 32 keep-alive clients, SIGTERM after the first 100, with a shutdown delay (3 s): all 300
    are answered 200, none lost to a connection closed under it, and the server exits 0. (Without the delay the
    requests after SIGTERM are refused with 503 and `Connection: close`: see the issue notes for that race.)"""
    shutdown_delay_s, answers = "3", {"200"}
    port = free_port()
    env = os.environ | {
        "CLASSIFIER_MODEL_PATH": str(bundled_model),
        "CLASSIFIER_PORT": str(port),
        "CLASSIFIER_WORKERS": "2",
        "CLASSIFIER_SHUTDOWN_DELAY_S": shutdown_delay_s,
    }
    url = f"http://127.0.0.1:{port}"
    files = image_files(("a.png", encode(noisy_image((10, 20, 30)), "PNG")))
    outcomes: list[str] = []
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not answers_200(f"{url}/ready"):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        remaining = iter(range(300))

        def client(_: int) -> None:
            with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) as connection:
                for _ in remaining:
                    try:
                        outcomes.append(str(connection.post("/predict", files=files).status_code))
                    except httpx.HTTPError as error:
                        outcomes.append(type(error).__name__)
                    if len(outcomes) == 100:
                        server.send_signal(signal.SIGTERM)

        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(client, range(32)))
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    print(f"\n2 workers, shutdown delay {shutdown_delay_s} s, SIGTERM after 100 of 300 requests: {counts}")
    assert len(outcomes) == 300 and set(outcomes) <= answers

"""Graceful shutdown of the real server: SIGTERM with requests in flight."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import REPO, encode, noisy_image
from tests.test_end_to_end import free_port

REQUESTS = 48
IMAGES_PER_REQUEST = 64


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
        "CLASSIFIER_QUEUE_CAPACITY": str(REQUESTS * IMAGES_PER_REQUEST),
        "CLASSIFIER_QUEUE_TIMEOUT_MS": "0",
        "CLASSIFIER_DRAIN_TIMEOUT_S": "20",
        "CLASSIFIER_LOG_FORMAT": "json",
        "CLASSIFIER_WORKERS": str(workers),
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

        images = [
            ("files", (f"{i}.png", encode(noisy_image((i * 3 % 256, 60, 90), (32, 32), seed=i), "PNG"), "image/png"))
            for i in range(IMAGES_PER_REQUEST)
        ]

        def send(_: int) -> tuple[int, str | None]:
            try:
                response = httpx.post(f"{url}/predict", files=images, timeout=60)
            except httpx.ConnectError:
                # On a loaded machine a client thread may only connect after the drain ended and the listener
                # closed: refused at the socket, never accepted.
                return 0, "connection_refused"
            return response.status_code, response.json().get("error")

        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            results = [pool.submit(send, i) for i in range(REQUESTS)]
            # SIGTERM once a good part of the load is queued (or after 5 s), so the drain has work to finish.
            wait_until = time.monotonic() + 5
            while queued_images(url) < 4 * IMAGES_PER_REQUEST and time.monotonic() < wait_until:
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
            ready_during_drain = httpx.get(f"{url}/ready", timeout=5)
            refused = httpx.post(f"{url}/predict", files=images[:1], timeout=5)
            statuses = [future.result() for future in results]
        exit_code = server.wait(timeout=30)
        exit_seconds = time.monotonic() - signalled
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    # Requests that reached the server after SIGTERM were refused (503 shutting_down), not accepted.
    accepted = [status for status, _ in statuses if status not in (0, 503)]
    refused_late = [error for status, error in statuses if status in (0, 503)]
    in_flight = len(accepted) - done_before
    print(
        f"\nshutdown: {in_flight} accepted requests in flight at SIGTERM ({done_before} done before it), "
        f"{accepted.count(200)} of {len(accepted)} accepted answered 200, {len(refused_late)} refused after SIGTERM, "
        f"exit code {exit_code}, exited {exit_seconds:.2f} s after SIGTERM"
    )
    assert in_flight > 0, "every request finished before SIGTERM: the test proved nothing"
    assert accepted == [200] * len(accepted)
    assert set(refused_late) <= {"shutting_down", "connection_refused"}
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
    assert sum(event["status"] == 200 for event in access) == len(accepted)
    assert not [message for message in messages if "Traceback" in message or "exceeded" in message]
    if workers > 1:
        assert len({event["pid"] for event in access}) >= 1
        (metrics_dir,) = re.findall(r"metrics_dir=(\S+)", log.read_text())
        assert not Path(metrics_dir).exists(), "the shared metrics folder was left behind"


def events_logged(log: Path, event: str) -> int:
    """How many times `event=<event>` was logged so far (once per worker for start-up and drain events)."""
    return log.read_text().count(f"event={event} ")


def queued_images(url: str) -> float:
    """The server's classifier_queue_depth gauge."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text)
    (gauge,) = [family for family in families if family.name == "classifier_queue_depth"]
    return float(gauge.samples[0].value)

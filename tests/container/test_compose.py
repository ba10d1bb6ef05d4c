"""docker-compose.yml as a user runs it (`--profile cpu --profile monitoring up -d --scale api-cpu=2`), with the
compose of the engine that answers (docker compose, or podman-compose): HAProxy in front of two replicas classifies,
passes the request id both ways and enforces its limits; Prometheus scrapes each replica; a model written into the
models volume is served from it; then every replica is replaced, one after another, under a steady load through
the proxy, and not one request fails."""

import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx2 as httpx
import pytest

from tests import helpers
from tests.conftest import REPO
from tests.container.engine import Container, Engine, build
from tests.helpers import answers_200, free_port, image_files

SAMPLES = sorted((REPO / "tests" / "data" / "cifar10-sample").glob("*/*.jpg"))[::15]
REPLICAS = 2
LOAD_CLIENTS = 8
MAX_LOAD_S = 180  # the load stops by itself even if the replacement hangs
PROFILES = ["--profile", "cpu", "--profile", "monitoring"]


@dataclass
class Stack:
    """A compose project brought up for this module."""

    engine: Engine
    project: str
    url: str
    prometheus: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [*self.engine.compose(), "-p", self.project, "-f", str(REPO / "docker-compose.yml")]
        result = subprocess.run(
            [*command, *PROFILES, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def containers(self, service: str) -> list[str]:
        """The names of the service's running containers."""
        labels = [f"label=com.docker.compose.project={self.project}", f"label=com.docker.compose.service={service}"]
        filters = [option for label in labels for option in ("--filter", label)]
        return sorted(self.engine.run("ps", *filters, "--format", "{{.Names}}").stdout.split())

    def healthy(self, container: str) -> bool:
        """Whether the container's own HEALTHCHECK passes now."""
        if self.engine.name == "podman":
            return self.engine.run("healthcheck", "run", container, check=False).returncode == 0
        status = self.engine.run("inspect", "--format", "{{.State.Health.Status}}", container, check=False)
        return status.stdout.strip() == "healthy"


def wait_for(condition: object, what: str, seconds: float = 120) -> None:
    """tests.helpers.wait_for, polling every 0.2 s: the conditions here run engine commands."""
    helpers.wait_for(condition, what, seconds, poll_s=0.2)


@pytest.fixture(scope="module")
def prometheus_image(engine: Engine) -> str:
    """Prometheus from Debian's packages (no registry here for prom/prometheus)."""
    containerfile = REPO / "tests" / "container" / "prometheus.Containerfile"
    return build(engine, None, "localhost/prometheus-debian:test", containerfile=containerfile)


@pytest.fixture(scope="module")
def stack(engine: Engine, cpu_image: str, proxy_image: str, prometheus_image: str) -> Iterator[Stack]:
    port, prometheus_port = free_port(), free_port()
    env = engine.environment | {
        "CLASSIFIER_PUBLISHED_PORT": str(port),
        "PROMETHEUS_PUBLISHED_PORT": str(prometheus_port),
        "PROMETHEUS_IMAGE": prometheus_image,
    }
    project = f"classifier-test-{os.getpid()}"
    running = Stack(engine, project, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prometheus_port}", env)
    try:
        running.compose("up", "-d", "--scale", f"api-cpu={REPLICAS}")
        wait_for(lambda: len(running.containers("api-cpu")) == REPLICAS, "the replicas")
        for name in running.containers("api-cpu"):
            wait_for(lambda name=name: running.healthy(name), f"{name} to pass its healthcheck")
        wait_for(lambda: answers_200(f"{running.url}/proxy/health"), "the proxy")
        yield running
    finally:
        subprocess.run(
            [*engine.compose(), "-p", running.project, "-f", str(REPO / "docker-compose.yml"), *PROFILES,
             "down", "--volumes", "--timeout", "5"],
            capture_output=True, env=env, timeout=300,
        )  # fmt: skip
        # podman-compose removes only the containers numbered up to the compose file's scale: remove the rest.
        leftovers = engine.run("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={running.project}")
        for container in leftovers.stdout.split():
            engine.run("rm", "--force", container, check=False)
        engine.run("pod", "rm", "--force", f"pod_{running.project}", check=False)  # podman-compose's pod
        engine.run("network", "rm", f"{running.project}_default", check=False)
        engine.run("volume", "rm", f"{running.project}_models", check=False)


def upload(index: int = 0) -> dict[str, object]:
    path = SAMPLES[index % len(SAMPLES)]
    return {"files": image_files((path.name, path.read_bytes()))}


def test_the_proxy_classifies_and_passes_the_request_id_both_ways(stack: Stack) -> None:
    given = httpx.post(f"{stack.url}/predict", headers={"X-Request-ID": "compose-test-1"}, timeout=30, **upload())
    assert given.status_code == 200, given.text
    assert given.json()["predictions"][0]["label"] == SAMPLES[0].parent.name
    assert given.headers["X-Request-ID"] == "compose-test-1"
    made = httpx.post(f"{stack.url}/predict", headers={"X-Request-ID": "bad id!"}, timeout=30, **upload())
    assert made.status_code == 200 and made.headers["X-Request-ID"] not in {"", "bad id!"}
    # Two values (or a list in one header): the proxy makes one id, and the service answers with the proxy's.
    doubled = httpx.post(
        f"{stack.url}/predict", headers=[("X-Request-ID", "bad id!,looks-ok-1")], timeout=30, **upload()
    )
    assert doubled.status_code == 200 and doubled.headers["X-Request-ID"] != "looks-ok-1"
    (proxy,) = stack.containers("proxy")
    log = stack.engine.run("logs", proxy).stdout + stack.engine.run("logs", proxy).stderr
    for request_id in ("compose-test-1", made.headers["X-Request-ID"], doubled.headers["X-Request-ID"]):
        assert f"request_id={request_id} " in log
    # Metrics come from each replica (Prometheus scrapes them), never through the proxy.
    assert httpx.get(f"{stack.url}/metrics", timeout=10).status_code == 404


def test_the_proxy_refuses_large_heads_large_bodies_and_slow_clients(stack: Stack) -> None:
    port = int(stack.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n")
        head = connection.recv(4096)
        assert head.startswith(b"HTTP/1.1 413") and b'"error": "body_too_large"' in head
    # A client that never finishes its request head is answered 408 and closed after 10 s (timeout http-request).
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        started = time.monotonic()
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        reply = connection.recv(4096)
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply
    print(f"\nan unfinished request head was cut off after {waited:.1f} s")


def test_prometheus_scrapes_every_replica_and_lists_no_target_that_does_not_run(stack: Stack) -> None:
    def targets() -> list[dict[str, object]]:
        try:
            answer = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=5)
        except httpx.TransportError:
            return []
        return answer.json()["data"]["activeTargets"] if answer.status_code == 200 else []

    wait_for(lambda: len(targets()) == REPLICAS and all(t["health"] == "up" for t in targets()), "the scrapes", 90)
    scraped = {str(target["labels"]["instance"]) for target in targets()}  # type: ignore[index]
    print(f"\nPrometheus scrapes {sorted(scraped)}, all up")


def test_a_model_written_into_the_models_volume_is_served_from_it(
    stack: Stack, cpu_image: str, start: Callable[..., Container]
) -> None:
    """What the train profile does: write a model into the `models` volume as the images' user (10001), then
    serve it with CLASSIFIER_MODEL_PATH=/models/<file> (the train image itself, TensorFlow, is not built here)."""
    volume = f"{stack.project}_models"
    model = "/app/models/default.onnx"
    stack.engine.run("run", "--rm", "--volume", f"{volume}:/models", cpu_image, "cp", model, "/models/trained.onnx")
    served = start(
        cpu_image, "--read-only", "--volume", f"{volume}:/models:ro", "--publish", "127.0.0.1::8000",
        "--env", "CLASSIFIER_MODEL_PATH=/models/trained.onnx",
    )  # fmt: skip
    port = stack.engine.run("port", served.name, "8000/tcp").stdout.split()[0].rsplit(":", 1)[1]
    wait_for(lambda: answers_200(f"http://127.0.0.1:{port}/ready"), "the model from the volume to be served", 60)
    assert "path=/models/trained.onnx" in served.logs()


@dataclass
class Load:
    """A steady load of /predict through the proxy from a few clients, until stopped (or MAX_LOAD_S)."""

    url: str
    outcomes: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, seed: int) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        with httpx.Client(base_url=self.url, timeout=60) as client:
            index = seed
            while not self.stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    outcome = str(client.post("/predict", **upload(index)).status_code)
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                with self.lock:
                    self.outcomes[outcome] += 1
                    self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                index += 1


def test_every_replica_is_replaced_under_load_and_no_request_fails(stack: Stack) -> None:
    load = Load(stack.url)
    clients = [threading.Thread(target=load.client, args=(seed,)) for seed in range(LOAD_CLIENTS)]
    started = time.monotonic()
    for client in clients:
        client.start()
    replaced = []
    try:
        for old in stack.containers("api-cpu"):
            # A new replica first (the compose of a rolling update: one more, then the old one stopped).
            before = set(stack.containers("api-cpu"))
            stack.compose("up", "-d", "--no-recreate", "--scale", f"api-cpu={len(before) + 1}")
            (new,) = set(stack.containers("api-cpu")) - before
            wait_for(lambda new=new: stack.healthy(new), f"{new} to pass its healthcheck")
            stopping = time.monotonic()
            stack.engine.run("stop", "--time", "30", old, timeout=90)
            exit_code = stack.engine.run("inspect", "--format", "{{.State.ExitCode}}", old).stdout.strip()
            replaced.append((old, new, round(time.monotonic() - stopping, 1), exit_code))
            stack.engine.run("rm", old)
        time.sleep(2)  # requests keep going to the new replicas alone
    finally:
        load.stop.set()
        for client in clients:
            client.join()
    elapsed = time.monotonic() - started
    total = sum(load.outcomes.values())
    print(
        f"\nreplaced {replaced} (old, new, seconds from SIGTERM to exit, exit code) under load: {total} requests "
        f"in {elapsed:.0f} s ({total / elapsed:.0f}/s), outcomes {dict(load.outcomes)}, "
        f"slowest {load.slowest_s * 1000:.0f} ms"
    )
    assert len(replaced) == REPLICAS and all(exit_code == "0" for *_, exit_code in replaced)
    assert load.outcomes == Counter({"200": total})
    assert total / elapsed >= 50
    # Only the new replicas run (a name may come back: compose numbers a new replica in the first free slot).
    assert set(stack.containers("api-cpu")) == {new for _, new, *_ in replaced}

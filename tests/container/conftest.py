"""Container tests: the images built from the Dockerfile and run by a real engine (docker, else rootful podman,
installed here as root), the compose stack, and the Kubernetes manifests played by podman. They carry the
`container` marker; where no engine can be had (not root, no apt-get) they are skipped with the reason."""

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.container.engine import Container, Engine, Unavailable, build, find_engine

HERE = Path(__file__).parent
_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The engine that answers (installed first where it can be)."""
    try:
        return find_engine()
    except Unavailable as error:
        pytest.skip(f"no container engine here: {error}")


@pytest.fixture(scope="session")
def cpu_image(engine: Engine) -> str:
    """image-classifier:cpu, built from the Dockerfile (with a base made from Debian's packages if need be)."""
    return build(engine, "cpu")


@pytest.fixture(scope="session")
def proxy_image(engine: Engine) -> str:
    """image-classifier:proxy (HAProxy from Debian's packages)."""
    return build(engine, "proxy")


@pytest.fixture(scope="session", autouse=True)
def _restore_ip_forwarding() -> Iterator[None]:
    """Container networking turns IP forwarding on for the machine; put it back as it was."""
    setting = Path("/proc/sys/net/ipv4/ip_forward")
    before = setting.read_text() if setting.exists() else None
    yield
    if before is not None and os.access(setting, os.W_OK) and setting.read_text() != before:
        setting.write_text(before)


@pytest.fixture
def start(engine: Engine) -> Iterator[Callable[..., Container]]:
    """start(image, *engine_run_options, command=()) runs a detached container named for this test run; every
    container started so is removed after the test."""
    started: list[Container] = []

    def run(image: str, *options: str, command: tuple[str, ...] = ()) -> Container:
        container = Container(engine, f"classifier-test-{os.getpid()}-{next(_names)}")
        started.append(container)
        engine.run("run", "--detach", "--name", container.name, *options, image, *command)
        return container

    yield run
    for container in started:
        container.remove()

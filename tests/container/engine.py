"""The container engine behind `make image` and tests/container/: docker where a Docker engine answers, else rootful
podman (installed from Debian's packages where it can be, as root). What this needs on a machine without a
registry lives here, not in the Dockerfile or the compose file: a base image made from Debian's packages when the
Dockerfile's cannot be pulled, the host's network and CA bundle for pip inside a build, and podman settings of
our own (containers.conf beside this file, passed in CONTAINERS_CONF; nothing under /etc changes).

Standard library only: `make image` runs it with the system's Python, before any virtual environment exists.

    python3 -m tests.container.engine image [--target cpu|gpu|proxy|train] [--tag NAME]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
PODMAN_PACKAGES = ["podman", "buildah", "runc", "netavark", "aardvark-dns", "slirp4netns", "uidmap", "iptables"]
LOCAL_BASE = "localhost/bookworm-python:3.11"
"""The base image made here from Debian's packages when the Dockerfile's PYTHON_IMAGE cannot be pulled."""
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3.11,python3-venv,python3-pip,ca-certificates,python-is-python3"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TARGETS = ("cpu", "gpu", "proxy", "train")


class CommandFailed(subprocess.CalledProcessError):
    """A command that failed, with the end of what it printed in its message."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stdout or '')[-3000:]}{(self.stderr or '')[-3000:]}"


class Unavailable(RuntimeError):
    """No container engine can be used on this machine; the message says why."""


@dataclass(frozen=True)
class Engine:
    """A container engine command line: `docker`, or `podman` with its settings in the environment."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def environment(self) -> dict[str, str]:
        """The environment for the engine's commands (and compose's)."""
        return os.environ | self.env

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ENGINE args...`, its output captured; CalledProcessError (with that output) if `check` and it fails."""
        result = subprocess.run(
            [self.name, *args], capture_output=True, text=True, timeout=timeout, env=self.environment
        )
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def has_image(self, name: str) -> bool:
        """Whether the image is in the engine's local store."""
        return self.run("image", "inspect", name, check=False, timeout=60).returncode == 0

    def compose(self) -> list[str]:
        """The compose command line: `docker compose`, or podman-compose (the dev extra installs it)."""
        if self.name == "docker":
            return ["docker", "compose"]
        return [sys.executable, "-m", "podman_compose"]

    def build_flags(self) -> list[str]:
        """What a build needs here besides the Dockerfile's own arguments. Podman: the host's network and CA
        bundle for pip and apt (this machine reaches the registries only so), and the Docker image format, which
        keeps HEALTHCHECK."""
        if self.name != "podman":
            return []
        flags = ["--format", "docker", "--network", "host"]
        if HOST_CA_BUNDLE.exists():
            flags += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        return flags


@dataclass
class Container:
    """A container started by a test, removed (with its volumes) when the test is done with it."""

    engine: Engine
    name: str

    def inspect(self, template: str) -> str:
        """A `{{...}}` Go template over the container's `inspect` record."""
        return self.engine.run("inspect", "--format", template, self.name).stdout.strip()

    def exec(self, *command: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running container."""
        return self.engine.run("exec", self.name, *command, check=check)

    def logs(self) -> str:
        """What the container wrote to stdout and stderr."""
        result = self.engine.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def url(self, port: int = 8000) -> str:
        """The base URL of the container's published `port`, on the loopback address."""
        mapping = self.engine.run("port", self.name, f"{port}/tcp").stdout.split()[0]
        return "http://" + mapping.replace("0.0.0.0", "127.0.0.1")

    def wait_ready(self, url: str | None = None, seconds: float = 60) -> float:
        """Seconds until `url`/ready (the published port 8000's by default) answered 200, polled every 20 ms; fails
        with the container's logs if it stops running or is not ready within `seconds`."""
        url = url or self.url()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:  # refused, reset, timed out, or an HTTP error status (503: not ready yet)
                pass
            assert self.inspect("{{.State.Running}}") == "true", self.logs()
            time.sleep(0.02)
        raise AssertionError(f"{self.name} not ready within {seconds} s:\n{self.logs()}")

    def remove(self) -> None:
        """Stop at once and remove."""
        self.engine.run("rm", "--force", "--volumes", self.name, check=False, timeout=60)


def find_engine(*, install: bool = True) -> Engine:
    """docker if a Docker engine answers, else podman, installed first (as root, with apt-get) if `install`."""
    if shutil.which("docker") and _answers(Engine("docker")):
        return Engine("docker")
    podman = Engine("podman", {"CONTAINERS_CONF": str(CONTAINERS_CONF)})
    if not shutil.which("podman"):
        if not install:
            raise Unavailable("no Docker engine answers and podman is not installed")
        _apt_install(PODMAN_PACKAGES)
    if not _answers(podman):
        raise Unavailable(f"podman is installed but `podman info` fails: {podman.run('info', check=False).stderr}")
    return podman


def _answers(engine: Engine) -> bool:
    try:
        return engine.run("info", check=False, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _apt_install(packages: list[str]) -> None:
    """Install Debian packages, or raise Unavailable saying why not."""
    if os.geteuid() != 0:
        raise Unavailable(f"{' '.join(packages)} must be installed, which needs root (apt-get)")
    if not shutil.which("apt-get"):
        raise Unavailable(f"{' '.join(packages)} must be installed, and this machine has no apt-get")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, capture_output=True, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600, check=True)
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            raise Unavailable(f"apt-get could not install {' '.join(packages)}: {result.stderr[-2000:]}")


def dockerfile_base() -> str:
    """The Dockerfile's default base image (its PYTHON_IMAGE argument)."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no ARG PYTHON_IMAGE"
    return match.group(1)


def base_image(engine: Engine) -> str:
    """The base image to build on: the Dockerfile's when it is here or can be pulled, else one made here from
    Debian's packages (once; it is kept in the engine's store)."""
    wanted = dockerfile_base()
    qualified = wanted if "/" in wanted else f"docker.io/library/{wanted}"
    for name in (wanted, qualified):
        if engine.has_image(name):
            return name
    if engine.run("pull", qualified, check=False, timeout=600).returncode == 0:
        return qualified
    if not engine.has_image(LOCAL_BASE):
        make_debian_base(engine)
    return LOCAL_BASE


def make_debian_base(engine: Engine) -> None:
    """Debian bookworm with Python 3.11 (what the Dockerfile's python:3.11-slim-bookworm provides), made with
    debootstrap and imported as LOCAL_BASE: about a minute and 200 MB."""
    if not shutil.which("debootstrap"):
        _apt_install(["debootstrap"])
    with tempfile.TemporaryDirectory(prefix="debian-base-") as folder:
        root = Path(folder) / "root"
        command = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(root)]
        result = subprocess.run([*command, DEBIAN_MIRROR], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise Unavailable(f"debootstrap failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [engine.name, "import", "-", LOCAL_BASE], stdin=tar.stdout, capture_output=True, text=True,
            env=engine.environment, timeout=600,
        )  # fmt: skip
        tar.wait()
        if imported.returncode != 0:
            raise Unavailable(f"{engine.name} import failed: {imported.stderr}")


def build(
    engine: Engine,
    target: str | None,
    tag: str | None = None,
    *,
    containerfile: Path = DOCKERFILE,
    show: bool = False,
    timeout: float = 1800,
) -> str:
    """Build one target of the Dockerfile (or all of another `containerfile`, on the same base) as `tag`
    (image-classifier:TARGET), its output shown or captured (and in the error if it fails); returns the tag."""
    tag = tag or f"image-classifier:{target}"
    base = base_image(engine)
    arguments = ["build", *engine.build_flags(), "--build-arg", f"PYTHON_IMAGE={base}", "-f", str(containerfile)]
    if target is not None:
        arguments += ["--target", target]
    command = [engine.name, *arguments, "-t", tag, str(REPO)]
    before = engine.run("image", "inspect", "--format", "{{.Id}}", tag, check=False, timeout=60).stdout.strip()
    result = subprocess.run(command, capture_output=not show, text=True, timeout=timeout, env=engine.environment)
    if result.returncode != 0:
        raise CommandFailed(result.returncode, command, result.stdout or "", result.stderr or "")
    after = engine.run("image", "inspect", "--format", "{{.Id}}", tag, timeout=60).stdout.strip()
    if before and before != after:  # the image the tag named before is left without a name: remove it (not if in use)
        engine.run("image", "rm", before, check=False, timeout=60)
    return tag


def main() -> int:
    """`image`: build an image with the engine that answers."""
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.container.engine", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True)
    image = commands.add_parser("image", help="build an image of the Dockerfile")
    image.add_argument("--target", choices=TARGETS, default="cpu")
    image.add_argument("--tag", help="the image's name (default image-classifier:TARGET)")
    arguments = parser.parse_args()
    try:
        engine = find_engine()
        print(f"engine: {engine.name}; base image: {base_image(engine)}", flush=True)
        tag = build(engine, arguments.target, arguments.tag, show=True)
    except Unavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: the build failed:\n{error.stdout[-4000:]}{error.stderr[-4000:]}", file=sys.stderr)
        return 1
    size = engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    print(f"built {tag} ({int(size) / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

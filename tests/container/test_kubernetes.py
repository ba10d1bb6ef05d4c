"""The Kubernetes manifests run: the CPU overlay on one host (deploy/overlays/single-host: one replica, a loopback
host port), rendered by kustomize and played by `podman kube play`, is ready and classifies, with the manifest's
securityContext, memory limit and liveness probe applied to the container."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.container.engine import Container, Engine
from tests.helpers import free_port, image_files, memory_limit_bytes

SAMPLE = sorted((REPO / "tests" / "data" / "cifar10-sample" / "ship").glob("*.jpg"))[0]  # the same file everywhere


def rendered(port: int) -> list[dict[str, Any]]:
    """The single-host overlay, its host port moved to `port` (8000 may be taken on a test machine)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomize overlay cannot be rendered here")
    output = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / "overlays" / "single-host")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    docs = [doc for doc in yaml.safe_load_all(output) if doc]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"] = port
    return docs


@pytest.fixture
def played(engine: Engine, cpu_image: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if engine.name != "podman":
        pytest.skip("`kube play` is podman's; with docker, the manifests are checked offline only")
    port = free_port()
    docs = rendered(port)
    manifest = tmp_path / "single-host.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    kube_network = "podman-default-kube-network"  # made by the first `kube play`: removed after, if it was ours
    had_network = engine.run("network", "exists", kube_network, check=False).returncode == 0
    try:
        engine.run("kube", "play", str(manifest), timeout=300)
        yield f"http://127.0.0.1:{port}", next(doc for doc in docs if doc["kind"] == "Deployment")
    finally:
        engine.run("kube", "down", str(manifest), check=False, timeout=120)
        if not had_network:
            engine.run("network", "rm", kube_network, check=False)


def test_the_cpu_overlay_plays_ready_classifying_and_hardened(engine: Engine, played: tuple[str, dict]) -> None:
    url, deployment = played
    name = f"{deployment['metadata']['name']}-pod-0-api"  # podman's name for the Deployment's container
    Container(engine, name).wait_ready(url)  # on the manifest's host port (not one `podman port` knows)
    answer = httpx.post(f"{url}/predict", files=image_files((SAMPLE.name, SAMPLE.read_bytes())), timeout=30)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "ship"

    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    record = yaml.safe_load(engine.run("inspect", name).stdout)[0]
    config, host = record["Config"], record["HostConfig"]
    assert config["User"] == f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
    assert host["ReadonlyRootfs"] is container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == memory_limit_bytes()
    # capabilities: drop ALL leaves the server process none at all
    status = engine.run("exec", name, "cat", "/proc/1/status").stdout
    assert {line.split()[1] for line in status.splitlines() if line.startswith("Cap")} == {"0000000000000000"}
    # The liveness probe becomes the container's health check (podman 4 converts only liveness, to a curl command
    # run inside the container: the slim image has no curl, so podman's check itself cannot pass; Kubernetes
    # probes over HTTP from the kubelet, as the image's own HEALTHCHECK, tested in test_image.py, does).
    liveness = container["livenessProbe"]
    probe = f"http://localhost:{liveness['httpGet']['port']}{liveness['httpGet']['path']}"
    assert probe in config["Healthcheck"]["Test"]
    assert config["Healthcheck"]["Interval"] == liveness["periodSeconds"] * 10**9
    assert (
        httpx.get(probe.replace("localhost", "127.0.0.1").replace(":8000", f":{url.rsplit(':', 1)[1]}")).status_code
        == 200
    )

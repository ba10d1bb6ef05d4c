"""The benchmark's baselines (benchmarks/baselines) answer as a user's first server would, so that `make bench`
compares against working servers; the plain ONNX Runtime server agrees with this service on the same file."""

import importlib
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.helpers import Files, image_files

SAMPLE = sorted((Path(__file__).parent / "data" / "cifar10-sample").rglob("*.jpg"))[:3]


def uploads() -> Files:
    return image_files(*((path.name, path.read_bytes()) for path in SAMPLE))


def test_the_plain_route_reads_every_file() -> None:
    from benchmarks.baselines import plain_route

    with TestClient(plain_route.app) as client:
        answer = client.post("/predict", files=uploads())
    assert answer.status_code == 200
    assert [p["bytes"] for p in answer.json()["predictions"]] == [path.stat().st_size for path in SAMPLE]


def test_the_plain_onnx_server_agrees_with_this_service(bundled_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASELINE_MODEL", str(bundled_model))
    sys.modules.pop("benchmarks.baselines.plain_onnx", None)
    plain_onnx = importlib.import_module("benchmarks.baselines.plain_onnx")
    with TestClient(plain_onnx.app) as plain, TestClient(create_app(Settings(model_path=bundled_model))) as ours:
        theirs = [p["label"] for p in plain.post("/predict", files=uploads()).json()["predictions"]]
        mine = [p["label"] for p in ours.post("/predict", files=uploads()).json()["predictions"]]
    assert theirs == mine

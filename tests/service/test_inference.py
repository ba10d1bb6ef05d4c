"""The ONNX Runtime model: metadata, providers, and refusal of files it cannot serve."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from service import inference
from service.errors import ModelLoadError, ProviderUnavailable
from service.inference import CPU, CUDA, OnnxModel, choose_providers, top_k
from tests.conftest import REPO
from tests.helpers import write_model


def test_bundled_model_metadata(bundled_model: Path) -> None:
    info = OnnxModel(bundled_model).info
    assert len(info.labels) == 10
    assert info.labels[3] == "cat"
    assert (info.height, info.width) == (32, 32)
    assert info.providers == (CPU,)
    assert info.eval_accuracy is not None and 0 < info.eval_accuracy <= 1


def test_predict_returns_probabilities(bundled_model: Path) -> None:
    model = OnnxModel(bundled_model)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probabilities = model.predict(images)
    assert probabilities.shape == (5, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_top_k_orders_and_caps() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    ranked = top_k(probabilities, ("a", "b", "c"), 5)
    assert [[label for label, _ in row] for row in ranked] == [["b", "c", "a"], ["a", "c", "b"]]


def test_a_minimal_valid_model_loads(tmp_path: Path) -> None:
    path = write_model(tmp_path / "ok.onnx", TensorProto.UINT8, ["batch", 8, 8, 3], ["a", "b", "c"])
    model = OnnxModel(path)
    assert model.info.name == "tiny"
    assert model.info.version == "unknown"
    assert model.predict(np.zeros((2, 8, 8, 3), dtype=np.uint8)).shape == (2, 3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.onnx", "does not exist"),
        (lambda d: (d / "text.onnx").write_text("not a model") and d / "text.onnx", "could not be loaded"),
        (
            lambda d: write_model(d / "f.onnx", TensorProto.FLOAT, ["batch", 8, 8, 3], ["a", "b", "c"]),
            "must take uint8",
        ),
        (
            lambda d: write_model(d / "nchw.onnx", TensorProto.UINT8, ["batch", 3, 8, 8], ["a", "b", "c"]),
            "uint8",
        ),
        (
            lambda d: write_model(d / "rank.onnx", TensorProto.UINT8, ["batch", 8, 3], ["a", "b", "c"]),
            "uint8",
        ),
        (
            lambda d: write_model(d / "dyn.onnx", TensorProto.UINT8, ["batch", "h", "w", 3], ["a", "b", "c"]),
            "fixed",
        ),
        (
            lambda d: write_model(d / "nolabels.onnx", TensorProto.UINT8, ["batch", 8, 8, 3], None),
            "class_names",
        ),
        (
            lambda d: write_model(d / "count.onnx", TensorProto.UINT8, ["batch", 8, 8, 3], ["a", "b"]),
            "3 classes",
        ),
    ],
    ids=[
        "missing",
        "not-onnx",
        "float-input",
        "nchw",
        "wrong-rank",
        "dynamic-size",
        "no-labels",
        "label-count",
    ],
)
def test_models_it_cannot_serve_are_refused_with_the_file_named(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=message) as caught:
        OnnxModel(path)
    assert str(path) in str(caught.value)


def test_truncated_model_is_refused(bundled_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(bundled_model.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"truncated\.onnx"):
        OnnxModel(path)


def test_unknown_provider_name_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="NoSuchExecutionProvider"):
        choose_providers(("NoSuchExecutionProvider", CPU))


def test_cuda_is_skipped_without_a_warning_where_onnxruntime_is_the_cpu_build(caplog: pytest.LogCaptureFixture) -> None:
    # The CPU package installed on purpose: said at INFO, not warned at every start.
    with caplog.at_level(logging.INFO):
        assert choose_providers((CUDA, CPU)) == (CPU,)
    (record,) = [record for record in caplog.records if "CUDAExecutionProvider" in record.getMessage()]
    assert record.levelno == logging.INFO and "not_in_this_build" in record.getMessage()


def test_a_gpu_build_whose_cuda_does_not_load_is_warned_of(
    bundled_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No GPU here: pretend this ONNX Runtime offers CUDA (the gpu package) and its session, as the gpu package does
    # where CUDA's libraries do not load, runs on the CPU instead.
    session = inference.ort.InferenceSession

    def falls_back(path: str, sess_options: object, providers: list[str]) -> object:
        return session(path, sess_options=sess_options, providers=[name for name in providers if name != CUDA])

    monkeypatch.setattr(inference.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(inference.ort, "InferenceSession", falls_back)
    with caplog.at_level(logging.WARNING, logger="service.inference"):
        assert OnnxModel(bundled_model).info.providers == (CPU,)
    assert "event=provider_fallback" in caplog.text


def test_cuda_is_chosen_first_when_onnxruntime_offers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: pretend this ONNX Runtime build offers CUDA, as onnxruntime-gpu on a GPU machine does.
    monkeypatch.setattr(inference.ort, "get_available_providers", lambda: [CUDA, CPU])
    assert choose_providers((CUDA, CPU)) == (CUDA, CPU)


def test_require_gpu_fails_without_one(bundled_model: Path) -> None:
    with pytest.raises(ProviderUnavailable, match="a GPU is required"):
        OnnxModel(bundled_model, require_gpu=True)


def test_require_gpu_stops_the_server_with_a_message(bundled_model: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env={"CLASSIFIER_REQUIRE_GPU": "1", "CLASSIFIER_PORT": "18999", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "GPU is required" in result.stderr


def test_serving_never_imports_tensorflow() -> None:
    code = (
        "import sys, service.app, service.__main__\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'keras' not in sys.modules, 'keras was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)

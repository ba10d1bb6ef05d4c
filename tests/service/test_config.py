"""Settings from environment variables, and startup refusal with a message naming the variable."""

import subprocess
import sys

import pytest

from service.config import AUTO_PROVIDERS, SettingsError, load_settings
from tests.conftest import REPO


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.port == 8000
    assert settings.providers == AUTO_PROVIDERS
    assert settings.model_path.name == "default.onnx"


def test_environment_variables_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASSIFIER_PORT", "9001")
    monkeypatch.setenv("CLASSIFIER_TOP_K", "5")
    monkeypatch.setenv("CLASSIFIER_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("CLASSIFIER_REQUIRE_GPU", "true")
    monkeypatch.setenv("CLASSIFIER_LOG_LEVEL", "WARNING")
    settings = load_settings()
    assert (settings.port, settings.top_k, settings.require_gpu) == (9001, 5, True)
    assert settings.providers == ("CPUExecutionProvider",)
    assert settings.log_level == "warning"


def test_comma_separated_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASSIFIER_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    assert load_settings().providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLASSIFIER_PORT", "eighty"),
        ("CLASSIFIER_PORT", "70000"),
        ("CLASSIFIER_MAX_IMAGES_PER_REQUEST", "0"),
        ("CLASSIFIER_MAX_IMAGE_BYTES", "-5"),
        ("CLASSIFIER_TOP_K", "0"),
        ("CLASSIFIER_INTRA_OP_THREADS", "-1"),
        ("CLASSIFIER_REQUIRE_GPU", "perhaps"),
        ("CLASSIFIER_LOG_LEVEL", "chatty"),
        ("CLASSIFIER_PROVIDERS", " , "),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_invalid_setting_stops_the_server_with_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env={"CLASSIFIER_MAX_IMAGE_PIXELS": "lots", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CLASSIFIER_MAX_IMAGE_PIXELS" in result.stderr

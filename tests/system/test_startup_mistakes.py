"""A new user's mistakes in starting the server (`python -m service`), one row each: every one exits 2 with exactly
one line, which names the problem and says what to do, and no traceback, before anything is served."""

import os
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_MODEL, REPO
from tests.helpers import free_port

Setup = Callable[[Path, int], tuple[dict[str, str], list[str]]]
"""Given a scratch folder and a port that is in use, the settings of the mistake and what its line must say."""


def bundled_keras_copy(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    keras = BUNDLED_MODEL.with_suffix(".keras")
    assert keras.is_file()
    return {"MODEL_PATH": str(keras)}, [
        f"CLASSIFIER_MODEL_PATH={keras} is a Keras model",
        f"its ONNX export is beside it: CLASSIFIER_MODEL_PATH={BUNDLED_MODEL}",
    ]


def keras_model_of_ones_own(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    model = tmp / "my-model.keras"
    with zipfile.ZipFile(model, "w") as archive:  # what a .keras file is
        archive.writestr("metadata.json", "{}")
    return {"MODEL_PATH": str(model)}, [
        "is a Keras model, and the service serves ONNX models",
        f"export it to ONNX with `python -m training export --run-dir RUN_DIR --model {model} --output "
        f"{tmp / 'my-model.onnx'}`",
    ]


def missing_model(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    return {"MODEL_PATH": str(tmp / "nowhere.onnx")}, [
        f"CLASSIFIER_MODEL_PATH={tmp / 'nowhere.onnx'} does not exist",
        "set CLASSIFIER_MODEL_PATH to an .onnx file (`python -m training export` writes one)",
    ]


def missing_model_with_two_workers(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    settings, said = missing_model(tmp, taken)
    return settings | {"WORKERS": "2"}, said


def port_in_use(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    return {"PORT": str(taken)}, [
        f"port {taken} on 127.0.0.1 is already in use",
        f"pick another port: CLASSIFIER_PORT={taken + 1}",
    ]


def setting_not_a_number(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    return {"MAX_BATCH_SIZE": "abc"}, [
        "CLASSIFIER_MAX_BATCH_SIZE='abc' is invalid: it must be a valid integer",
        "fix it, or unset it (default 32)",
    ]


def folder_as_the_model(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    run = tmp / "runs" / "photos"
    run.mkdir(parents=True)
    (run / "photos.onnx").write_bytes(BUNDLED_MODEL.read_bytes())
    return {"MODEL_PATH": str(run)}, [
        f"CLASSIFIER_MODEL_PATH={run} is a folder, not a model file",
        f"serve the model in it: CLASSIFIER_MODEL_PATH={run / 'photos.onnx'}",
    ]


def file_that_is_not_onnx(tmp: Path, taken: int) -> tuple[dict[str, str], list[str]]:
    notes = tmp / "model.onnx"
    notes.write_text("not a model, but notes about one\n")
    return {"MODEL_PATH": str(notes)}, [
        f"CLASSIFIER_MODEL_PATH={notes} is not an ONNX model (",
        "set CLASSIFIER_MODEL_PATH to an .onnx file",
    ]


MISTAKES: list[Setup] = [
    bundled_keras_copy,
    keras_model_of_ones_own,
    missing_model,
    missing_model_with_two_workers,
    port_in_use,
    setting_not_a_number,
    folder_as_the_model,
    file_that_is_not_onnx,
]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port that something else listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[setup.__name__ for setup in MISTAKES])
def test_a_startup_mistake_is_one_line_with_a_hint_and_exit_2(mistake: Setup, taken_port: int, tmp_path: Path) -> None:
    settings, said = mistake(tmp_path, taken_port)
    env = os.environ | {"CLASSIFIER_HOST": "127.0.0.1", "CLASSIFIER_PORT": str(free_port())}
    env |= {f"CLASSIFIER_{name}": value for name, value in settings.items()}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    (line,) = output.splitlines()  # nothing else: no log lines of a server that never started
    assert line.startswith("error: "), line
    for part in said:
        assert part in line, line


@pytest.mark.parametrize(
    ("arguments", "variable"),
    [
        (["--port", "9000"], "CLASSIFIER_PORT"),
        (["--model=pets.onnx"], "CLASSIFIER_MODEL_PATH"),
        (["serve", "--workers", "2"], "CLASSIFIER_WORKERS"),
        (["CLASSIFIER_HOST=0.0.0.0"], "CLASSIFIER_HOST"),
        (["serve"], None),
        (["x" * 100_000], None),
    ],
    ids=["flag", "alias", "second-argument", "variable", "word", "long"],
)
def test_an_argument_is_refused_naming_the_variable_to_set(arguments: list[str], variable: str | None) -> None:
    # Without this check the flag would be ignored and the server would start on the defaults.
    result = subprocess.run(
        [sys.executable, "-m", "service", *arguments], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    (line,) = output.splitlines()
    assert line.startswith("error: python -m service takes no arguments (got "), line
    assert len(line) < 400, "the argument is echoed shortened"
    assert "python -m service --help" in line
    assert (f"set {variable} in the environment instead" in line) if variable else ("instead" not in line), line


def test_help_says_settings_are_environment_variables_and_starts_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "CLASSIFIER_PORT=9000 python -m service" in result.stdout
    assert "docs/settings.md" in result.stdout
    assert "event=listening" not in result.stdout + result.stderr

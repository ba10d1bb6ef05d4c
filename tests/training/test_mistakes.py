"""A user's mistakes with the training command line: each exits 2 with one line saying what is wrong, no traceback,
and leaves no partial files behind."""

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, make_image_folder
from training.cli import main

pytestmark = pytest.mark.slow

Setup = Callable[[Path, Path], list[str]]
"""Given a scratch folder and the tiny finished run, writes what the mistake needs and returns the argv."""


def one_class(tmp: Path, run: Path) -> list[str]:
    data = make_image_folder(tmp / "data", per_class=3)
    for name in ("green", "red"):
        shutil.rmtree(data / name)
    return ["train", "--data", str(data), "--run-dir", str(tmp / "new-run")]


def empty_class_named(tmp: Path, run: Path) -> list[str]:
    data = make_image_folder(tmp / "data", per_class=3)
    (data / "purple").mkdir()
    return ["train", "--data", str(data), "--run-dir", str(tmp / "new-run"), "--classes", "blue,purple"]


def no_images(tmp: Path, run: Path) -> list[str]:
    for name in ("cats", "dogs"):
        (tmp / "data" / name).mkdir(parents=True)
        (tmp / "data" / name / "IMG_0001.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    return ["train", "--data", str(tmp / "data"), "--run-dir", str(tmp / "new-run")]


def run_dir_exists(tmp: Path, run: Path) -> list[str]:
    data = make_image_folder(tmp / "data", per_class=3)
    return ["train", "--data", str(data), "--run-dir", str(run), "--epochs", "1"]


def missing_run_dir_export(tmp: Path, run: Path) -> list[str]:
    return ["export", "--run-dir", str(tmp / "nowhere"), "--output", str(tmp / "out" / "model.onnx")]


def missing_run_dir_evaluate(tmp: Path, run: Path) -> list[str]:
    return ["evaluate", "--run-dir", str(tmp / "nowhere"), "--out", str(tmp / "report")]


def missing_run_dir_card(tmp: Path, run: Path) -> list[str]:
    return ["card", "--run-dir", str(tmp / "nowhere"), "--model", str(run / "model.onnx"), "--out", str(tmp / "card")]


def image_size_not_a_size(tmp: Path, run: Path) -> list[str]:
    data = make_image_folder(tmp / "data", per_class=3)
    return ["train", "--data", str(data), "--run-dir", str(tmp / "new-run"), "--image-size", "64x"]


def image_size_too_small_for_the_network(tmp: Path, run: Path) -> list[str]:
    data = make_image_folder(tmp / "data", per_class=3)
    return ["train", "--data", str(data), "--run-dir", str(tmp / "new-run"), "--image-size", "16"]


def too_few_calibration_images(tmp: Path, run: Path) -> list[str]:
    output = tmp / "out" / "model.onnx"
    return ["export", "--run-dir", str(run), "--output", str(output), "--quantize", "int8", "--calibration-images", "0"]


def resume_with_flags(tmp: Path, run: Path) -> list[str]:
    return ["train", "--run-dir", str(run), "--resume", "--epochs", "50"]


def export_over_an_existing_file(tmp: Path, run: Path) -> list[str]:
    return ["export", "--run-dir", str(run), "--output", str(run / "model.onnx")]


def export_to_the_runs_model(tmp: Path, run: Path) -> list[str]:
    return ["export", "--run-dir", str(run), "--output", str(run / "model.keras")]


def card_of_another_model(tmp: Path, run: Path) -> list[str]:
    return ["card", "--run-dir", str(run), "--model", str(REPO / "models" / "default.onnx"), "--out", str(tmp / "c")]


def evaluate_a_file_that_is_no_model(tmp: Path, run: Path) -> list[str]:
    (tmp / "notes.txt").write_text("not a model\n")
    return ["evaluate", "--model", str(tmp / "notes.txt"), "--data", str(make_image_folder(tmp / "data", per_class=3))]


MISTAKES: list[tuple[str, Setup, str]] = [
    ("one class", one_class, "has images of one class only ('blue'); a classifier needs at least two classes"),
    ("empty class named", empty_class_named, "class folder(s) ['purple']"),
    ("no images", no_images, "has no images in class folders"),
    ("run dir exists", run_dir_exists, "already holds a training run: give another --run-dir, --resume"),
    ("missing run dir: export", missing_run_dir_export, "is not a training run: it has no run.json"),
    ("missing run dir: evaluate", missing_run_dir_evaluate, "is not a training run: it has no run.json"),
    ("missing run dir: card", missing_run_dir_card, "is not a training run: it has no run.json"),
    ("image size not a size", image_size_not_a_size, "argument --image-size: '64x' is not SIZE or HEIGHTxWIDTH"),
    ("image size too small", image_size_too_small_for_the_network, "the baseline network cannot take 16x16 images"),
    ("too few calibration images", too_few_calibration_images, "argument --calibration-images: must be at least 1"),
    ("resume with flags", resume_with_flags, "--resume continues the run as it was started; it takes no --epochs"),
    ("export over a file", export_over_an_existing_file, "exists: give another --output, or --overwrite to replace it"),
    ("export over the run's model", export_to_the_runs_model, "model.keras must be a .onnx file"),
    ("card of another model", card_of_another_model, "default.onnx is not an export of"),
    ("evaluate a non-model", evaluate_a_file_that_is_no_model, "notes.txt is neither a .onnx nor a .keras file"),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its hash, and every folder."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in folder.rglob("*")
    }


@pytest.mark.parametrize(("setup", "message"), [(setup, message) for _, setup, message in MISTAKES],
                         ids=[name for name, _, _ in MISTAKES])  # fmt: skip
def test_a_mistake_is_one_line_and_leaves_nothing_behind(
    setup: Setup, message: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = setup(tmp_path, tiny_run)
    before, run_before = snapshot(tmp_path), snapshot(tiny_run)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and message in line, line
    assert snapshot(tmp_path) == before, "the mistake left files behind"
    assert snapshot(tiny_run) == run_before, "the mistake changed an existing run"


def test_the_command_itself_says_a_mistake_in_one_line(tiny_run: Path, tmp_path: Path) -> None:
    # The real command, not main() in this process: its stderr holds the log and the one error line, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "training", *run_dir_exists(tmp_path, tiny_run)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {tiny_run} already holds a training run")

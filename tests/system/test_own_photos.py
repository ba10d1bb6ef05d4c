"""The README's "Train on your own photos", run as written: a folder of mixed photos becomes a served model."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import onnx

from tests.conftest import REPO
from tests.helpers import PHOTO_CLASSES, free_port, make_photo_folder, photo, server_process

README = (REPO / "README.md").read_text()


def walkthrough() -> list[str]:
    """The commands of the README's walkthrough, one per line, comments dropped."""
    section = README.split("## Train on your own photos", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the walkthrough has no ```sh block"
    return [line.split("  #")[0].strip() for line in block[1].splitlines() if line.strip()]


def bundled_files() -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted((REPO / "models").iterdir())}


def test_the_walkthrough_turns_a_folder_of_photos_into_a_served_model(tmp_path: Path) -> None:
    bundled = bundled_files()
    make_photo_folder(tmp_path / "photos")
    (tmp_path / "new-photo.jpg").write_bytes(photo(PHOTO_CLASSES["leaves"], 12345)[0])
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the project's Python, as `make venv` makes
    commands = walkthrough()
    assert commands[0] == "make venv"  # made already: the suite runs in it
    *steps, serve, ask = commands[1:]
    assert serve.endswith("&") and ask.startswith("curl ")

    outputs = []
    for step in steps:
        result = subprocess.run(["bash", "-c", step], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{step}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, step
        outputs.append(result.stdout + result.stderr)
    train, evaluate, export, card = outputs
    assert "wrote runs/photos/photos.card.md" in card
    assert "skipped in class folder 'leaves' (not images, by suffix or kind): .heic=1" in train
    assert "skipped in class folder 'sky' (not images, by suffix or kind): .txt=1" in train
    assert "class folder 'empty' holds no images" in train and "IMG_9999.jpg" in train
    assert "images per class: apples=61 leaves=61 sky=61" in train and "train=165 validation=18" in train
    assert ".ipynb_checkpoints" not in train
    assert re.search(r"accuracy=\d\.\d+ macro_f1=\d\.\d+ examples=18", evaluate)
    assert "18 of the run's validation images, 238 random ones" in export
    run = tmp_path / "runs" / "photos"
    text = (run / "photos.card.md").read_text()
    assert "CIFAR" not in text and "image folder photos" in text and "seconds" in text and "CPUs" in text
    assert "python -m training train --data photos --run-dir runs/photos --image-size 64" in text
    assert "python -m training export --run-dir runs/photos --output runs/photos/photos.onnx" in text
    assert "image: uint8 [batch, 64, 64, 3]" in text

    port = free_port()
    env = os.environ | {"CLASSIFIER_PORT": str(port)}
    with server_process(["bash", "-c", serve.removesuffix("&")], env, port, tmp_path / "server.log", cwd=tmp_path):
        ask = ask.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        if shutil.which("curl"):
            asked = subprocess.run(["bash", "-c", ask], cwd=tmp_path, capture_output=True, timeout=60)
            answer = json.loads(asked.stdout)
        else:  # the same request, where curl is missing
            files = {"files": ("new-photo.jpg", (tmp_path / "new-photo.jpg").read_bytes())}
            answer = httpx.post(f"http://127.0.0.1:{port}/predict", files=files, timeout=60).json()
    assert answer["model"] | {"digest": "-"} == {"name": "photos", "version": "1", "digest": "-"}
    assert len(answer["model"]["digest"]) == 12
    assert answer["predictions"][0]["label"] == "leaves"
    assert {entry["label"] for entry in answer["predictions"][0]["top_k"]} == set(PHOTO_CLASSES)
    assert "WARNING" not in (tmp_path / "server.log").read_text()  # the CPU build is no cause for a warning

    # int8 calibrates on the 165 training images (a whole number of calibration batches: 128 of them).
    int8 = run / "int8.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "training", "export", "--run-dir", "runs/photos", "--output", str(int8),
         "--quantize", "int8", "--flip-averaging"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = {prop.key: prop.value for prop in onnx.load(int8).metadata_props}
    assert metadata["calibration_images"] == "128" and metadata["quantization"].startswith("int8")

    assert bundled_files() == bundled, "the walkthrough changed the bundled model's files"

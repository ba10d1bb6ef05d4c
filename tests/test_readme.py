"""The README stays a ten-minute read that is true: its length, the model it describes, the commands it shows."""

import json
import re

import onnxruntime as ort

from tests.conftest import BUNDLED_MODEL, REPO

README = (REPO / "README.md").read_text()


def section(heading: str) -> str:
    """The README's text under `## heading`, up to the next `## ` heading."""
    assert f"\n## {heading}\n" in README, heading
    return README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_is_short() -> None:
    lines = README.count("\n")
    assert lines < 250, f"README.md has {lines} lines: move reference text into docs/"


def test_quickstart_commands_are_make_targets() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("serve", "test", "train", "export", "evaluate"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
        assert f"make {target}" in README, target
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")


def test_the_readme_names_the_bundled_models_classes_and_input_size() -> None:
    session = ort.InferenceSession(str(BUNDLED_MODEL), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    height, width = json.loads(metadata["image_size"])
    text = section("What the bundled model knows, and what it does not")
    assert ", ".join(json.loads(metadata["class_names"])) in text
    assert f"{height}x{width}" in text
    assert metadata["model_name"] in text and metadata["model_version"] in text


def test_the_readme_runs_the_client_in_one_shell_line() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("python -m service.client ")]
    assert len(lines) == 1, lines


def test_the_own_photos_walkthrough_starts_with_make_venv() -> None:
    # tests/system/test_own_photos.py runs the block; this only keeps its shape in the fast loop.
    block = re.search(r"```sh\n(.*?)```", section("Train on your own photos"), re.DOTALL)
    assert block, "the walkthrough has no ```sh block"
    commands = [line for line in block[1].splitlines() if line.strip()]
    assert commands[0].startswith("make venv") and commands[-1].startswith("curl ")

"""TensorFlow's start-up lines: TF_CPP_MIN_LOG_LEVEL applies to those logged before TensorFlow reads it."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from training.framework import shown

ONEDNN = b"I0000 00:00:1796540680.440907    8307 port.cc:153] oneDNN custom operations are on. You may see ..."
NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
WARNING = b"W0000 00:00:1796540680.440907    8307 cuda_executor.cc:1309] could not open file to read NUMA node"
ERROR = b"E1206 07:04:40.440907    8307 cuda_dnn.cc:8579] Unable to register cuDNN factory"
PYTHON_WARNING = b"/venv/lib/python3.11/site-packages/keras/x.py:12: UserWarning: something"


@pytest.mark.parametrize(
    ("line", "levels_shown_at"),
    [(ONEDNN, {0}), (NOTICE, {0}), (WARNING, {0, 1}), (ERROR, {0, 1, 2}), (PYTHON_WARNING, {0, 1, 2, 3})],
)
def test_a_line_shows_below_its_level(line: bytes, levels_shown_at: set[int]) -> None:
    assert {level for level in range(4) if shown(line, level)} == levels_shown_at


def start_lines(level: str) -> list[str]:
    """What a fresh process writes to stderr while importing TensorFlow the training commands' way."""
    code = "from training.framework import import_tensorflow; import_tensorflow(); import keras"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": level},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


@pytest.mark.slow
def test_the_training_commands_level_leaves_no_start_up_lines() -> None:
    everything = start_lines("0")  # what TensorFlow prints by itself (the oneDNN line twice, on x86-64)
    if not any("oneDNN custom operations are on" in line for line in everything):
        pytest.skip("this build of TensorFlow logs no oneDNN line on import")
    assert not [line for line in start_lines("2") if "oneDNN" in line or "absl::InitializeLog" in line]

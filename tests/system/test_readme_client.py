"""The README's command-line client line, run as written (against a server of the bundled model on a free port
instead of 8000), the way tests/system/test_own_photos.py runs the README's walkthrough. That a serving install
(`make serve`) has what the client imports is tests/test_install.py."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.helpers import running_server

README = (REPO / "README.md").read_text()


def test_the_readme_client_line_classifies_every_file_it_names(bundled_model: Path, tmp_path: Path) -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    (line,) = [line for block in blocks for line in block.splitlines() if line.startswith("python -m service.client ")]
    words = shlex.split(line)
    with running_server(bundled_model, tmp_path / "server.log") as url:
        words = [
            sys.executable if word == "python" else url if word == "http://127.0.0.1:8000" else word for word in words
        ]
        result = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=120)
    named = {str(path.relative_to(REPO)) for path in (REPO / "tests/data/cifar10-sample/cat").iterdir()}
    named |= {str(path.relative_to(REPO)) for path in REPO.glob("tests/data/cifar10-sample/ship/0*.jpg")}
    printed = {row.split()[0] for row in result.stdout.splitlines()[1:]}
    print(f"\n{line}\n-> exit {result.returncode}, {len(printed)} files classified")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # no warning (a pattern matching nothing), no error
    assert printed == named

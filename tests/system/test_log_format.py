"""The server's log as a new user meets it: key=value text on a terminal, one JSON object per line anywhere else (a
file here, as under a container engine), and never a terminal escape code in either."""

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO
from tests.helpers import free_port, running_server


def test_on_a_terminal_the_log_is_text(bundled_model: Path) -> None:
    port = free_port()
    env = os.environ | {"CLASSIFIER_MODEL_PATH": str(bundled_model), "CLASSIFIER_PORT": str(port)}
    env.pop("CLASSIFIER_LOG_FORMAT", None)  # auto
    terminal, server_side = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=server_side,
        stderr=server_side,
    )  # fmt: skip
    os.close(server_side)
    seen = b""
    try:
        deadline = time.monotonic() + 60  # against a hang only: the loop ends at the ready line
        while b"event=ready" not in seen:
            assert time.monotonic() < deadline and process.poll() is None, seen.decode(errors="replace")
            if select.select([terminal], [], [], 1)[0]:
                seen += os.read(terminal, 65536)
    finally:
        process.terminate()
        process.wait(timeout=60)
        os.close(terminal)
    lines = seen.decode().splitlines()
    assert "\x1b" not in seen.decode()
    assert any(line.endswith(f"logger=service.main event=listening url=http://127.0.0.1:{port}") for line in lines)
    for line in lines[: len(lines) - 1]:  # the last may be cut short
        assert " level=" in line and " logger=" in line and not line.startswith("{"), line


def test_elsewhere_the_log_is_json_without_colour_codes(bundled_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_server(bundled_model, log, log_format="auto"):
        pass
    lines = log.read_text().splitlines()
    assert any("Started server process" in line for line in lines)  # uvicorn's line with a coloured copy
    for line in lines:
        event = json.loads(line)
        assert "color_message" not in event and "\x1b" not in line and "\\u001b" not in line, line

"""The command-line client (`python -m service.client`) against the real server."""

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from tests.conftest import REPO
from tests.helpers import image_files, running_server

SAMPLE = REPO / "tests" / "data" / "cifar10-sample"


def client(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "service.client", *args, "--format", "jsonl", "--no-progress"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen[str]) -> tuple[int, list[dict], str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, [json.loads(line) for line in out.splitlines()], err


def test_a_folder_is_classified_with_predict_s_labels(bundled_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for label in ("cat", "ship", "truck"):
        (folder / label).mkdir(parents=True)
        for source in sorted((SAMPLE / label).glob("*.jpg"))[:3]:
            shutil.copy(source, folder / label / source.name)
    (folder / "notes.txt").write_text("not searched: folders are searched for images only")
    files = sorted(p for p in folder.rglob("*.jpg"))
    with running_server(bundled_model, tmp_path / "server.log") as url:
        expected = httpx.post(f"{url}/predict", files=image_files(*((p.name, p.read_bytes()) for p in files))).json()
        status, results, _ = finished(client(url, str(folder), "--batch", "4", "--concurrency", "2"))
    assert status == 0
    assert [r["file"] for r in results] == [str(p) for p in files]
    assert [r["label"] for r in results] == [p["label"] for p in expected["predictions"]]
    assert [r["error"] for r in results] == [None] * len(files)


def test_a_bad_file_is_reported_with_its_reason_and_a_nonzero_exit(bundled_model: Path, tmp_path: Path) -> None:
    good = sorted((SAMPLE / "cat").glob("*.jpg"))[:2]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with running_server(bundled_model, tmp_path / "server.log") as url:
        status, results, err = finished(client(url, str(good[0]), str(bad), str(good[1]), str(tmp_path / "gone.jpg")))
    assert status == 1
    by_file = {r["file"]: r for r in results}
    assert by_file[str(bad)]["error"].startswith("415 invalid_image") and "bad.png" in by_file[str(bad)]["error"]
    assert "No such file" in by_file[str(tmp_path / "gone.jpg")]["error"]
    assert by_file[str(good[0])]["label"] and by_file[str(good[1])]["label"]  # one bad file fails only itself
    assert "2 of 4 files failed" in err


def refusals(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    match = re.search(r'classifier_refusals_total\{reason="overloaded"\} (\S+)', metrics)
    return float(match[1]) if match else 0.0


def test_a_503_is_retried_after_retry_after(bundled_model: Path, tmp_path: Path) -> None:
    image = sorted((SAMPLE / "ship").glob("*.jpg"))[0]
    with running_server(bundled_model, tmp_path / "server.log", body_memory_bytes="4000", max_body_bytes="4000") as url:
        # An upload held half-way holds 3,500 of the 4,000 bytes the bodies in progress may take: the client's
        # request does not fit, and is refused with 503 and Retry-After until the upload goes.
        port = int(url.rsplit(":", 1)[1])
        held = socket.create_connection(("127.0.0.1", port))
        part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + b"x" * 3400
        held.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 3600\r\n\r\n" + part)  # fmt: skip
        deadline = time.monotonic() + 30
        while httpx.post(f"{url}/predict", files=image_files(("a.jpg", b"y" * 1000))).status_code != 503:
            assert time.monotonic() < deadline, "the held upload never took its bytes"  # until the server holds them
            time.sleep(0.05)
        before = refusals(url)
        running = client(url, str(image), "--retries", "30")
        while refusals(url) == before:  # the client has been refused at least once
            assert time.monotonic() < deadline, "the client was never refused"
            time.sleep(0.05)
        held.close()
        status, results, _ = finished(running)
    assert status == 0
    assert results[0]["label"] == "ship" and results[0]["error"] is None

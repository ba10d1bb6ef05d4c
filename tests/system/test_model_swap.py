"""A new model without downtime (issue 24), through the real server: models swapped under steady load lose nothing
and never mix; bad new models are refused while the old one keeps serving; memory comes back after many swaps;
tritonclient's model repository calls work."""

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.http as triton
from onnx import TensorProto

from service.imaging import decode_image
from service.inference import OnnxModel
from service.serving import CIFAR10_LABELS, SAMPLES
from tests.conftest import REPO
from tests.helpers import image_files, running_server_process, tree_rss_mb, wait_for, write_model

LIGHT = REPO / "benchmarks" / "models" / "light.onnx"
SWAPS = 10
FILES = sorted(SAMPLES.glob("*.jpg"))[:3]
"""Three different images in every request: a request answered by two models would show it in its rows."""


@dataclass(frozen=True)
class Answer:
    sent_at: float
    status: int
    model: str  # name/version/digest, from the X-Model header
    rows: np.ndarray | None


def sample_pixels() -> np.ndarray:
    """FILES decoded as the service decodes them."""
    return np.stack([decode_image(p.read_bytes(), filename=p.name, size=(32, 32), max_pixels=2**20) for p in FILES])


def expected_rows(model_path: Path) -> tuple[str, np.ndarray]:
    """A model's X-Model (served as "served") and its probabilities for FILES, computed here."""
    model = OnnxModel(model_path)
    info = model.info
    return f"served/{info.version}/{info.digest}", model.predict(sample_pixels())


class Load:
    """Steady /predict and v2 infer traffic from `threads` threads until `stop()`; every answer kept."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url, self.answers, self._stop = url, [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(index,)) for index in range(threads)]
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [len(FILES), 32, 32, 3],
                    "data": sample_pixels().ravel().tolist(),
                }
            ]
        }
        self._infer = json.dumps(body).encode()
        self._files = image_files(*((path.name, path.read_bytes()) for path in FILES))
        self._lock = threading.Lock()

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                if index % 2:
                    response = client.post("/predict", files=self._files)
                    rows = None
                    if response.status_code == 200:
                        predictions = response.json()["predictions"]
                        rows = np.array([[item["probability"]] for item in predictions])
                else:
                    response = client.post("/v2/models/served/infer", content=self._infer)
                    rows = None
                    if response.status_code == 200:
                        rows = np.array(response.json()["outputs"][0]["data"]).reshape(len(FILES), -1)
                with self._lock:
                    self.answers.append(Answer(sent, response.status_code, response.headers.get("x-model", ""), rows))


def swaps_logged(log: Path, model: str) -> int:
    digest = model.rsplit("/", 1)[1]
    return sum(
        1 for line in log.read_text().splitlines() if "event=model_swapped" in line and f"digest={digest}" in line
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_swapping_models_under_load_loses_nothing_and_mixes_nothing(
    bundled_model: Path, tmp_path: Path, workers: int
) -> None:
    served = tmp_path / "served.onnx"
    served.symlink_to(bundled_model)
    models = {bundled_model: expected_rows(bundled_model), LIGHT: expected_rows(LIGHT)}
    log = tmp_path / "server.log"
    settings = {"workers": str(workers), "model_name": "served", "log_format": "json"}
    with running_server_process(served, log, **settings) as (url, server), Load(url) as load:
        time.sleep(1)
        swaps: list[tuple[float, float, str]] = []  # when each swap began, when it was seen done, the model it brought
        for number in range(SWAPS):
            target = LIGHT if number % 2 == 0 else bundled_model
            model = models[target][0]
            before = swaps_logged(log, model)
            began = time.monotonic()
            served.unlink()
            served.symlink_to(target)
            os.kill(server.pid, signal.SIGHUP)
            done = before + workers
            wait_for(lambda model=model, done=done: swaps_logged(log, model) >= done, f"swap {number + 1} everywhere")
            swaps.append((began, time.monotonic(), model))
            time.sleep(2)
    answers = load.answers
    duration = answers[-1].sent_at - answers[0].sent_at
    statuses = {status: sum(a.status == status for a in answers) for status in {a.status for a in answers}}
    print(f"\n{workers} worker(s): {len(answers)} answers in {duration:.1f} s ({len(answers) / duration:.0f}/s), "
          f"statuses {statuses}, {SWAPS} swaps")  # fmt: skip
    assert statuses == {200: len(answers)}
    assert len(answers) / duration >= 50
    by_header = {model: rows for model, rows in models.values()}
    for answer in answers:
        assert answer.model in by_header, answer.model
        rows = by_header[answer.model]
        if answer.rows.shape[1] == 1:  # /predict: the top probability of each image
            assert np.allclose(answer.rows[:, 0], rows.max(axis=1), atol=1e-4), answer
        else:
            assert np.allclose(answer.rows, rows, atol=1e-4), answer
    # Within 1 s of a swap's completion every answer comes from the new model (until the next swap begins)
    for (_, done, model), (next_began, _, _) in zip(swaps, [*swaps[1:], (float("inf"), 0, "")], strict=True):
        late = [a for a in answers if done + 1 <= a.sent_at < next_began]
        assert late and all(a.model == model for a in late), (model, {a.model for a in late})
    assert "Traceback" not in log.read_text()


def test_bad_new_models_are_refused_and_the_old_one_keeps_serving(bundled_model: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "served.onnx").symlink_to(bundled_model)
    (repository / "not_onnx.onnx").write_text("not a model")
    (repository / "truncated.onnx").write_bytes(bundled_model.read_bytes()[:300_000])
    write_model(repository / "other_size.onnx", TensorProto.UINT8, ["batch", 64, 64, 3], list(CIFAR10_LABELS), 10)
    write_model(repository / "no_labels.onnx", TensorProto.UINT8, ["batch", 32, 32, 3], None)
    write_model(repository / "warm_up_fails.onnx", TensorProto.UINT8, [1, 32, 32, 3], ["a", "b", "c"])
    write_model(repository / "wrong_answers.onnx", TensorProto.UINT8, ["batch", 32, 32, 3], list(CIFAR10_LABELS), 10)
    rows = {
        "not_onnx": "could not be loaded by ONNX Runtime",
        "truncated": "could not be loaded by ONNX Runtime",
        "other_size": "takes 64x64 images; the service serves 32x32",
        "no_labels": "has no valid 'class_names' metadata",
        "warm_up_fails": "failed its warm-up",
        "wrong_answers": "classifies 1 of the 10 sample images right",
    }
    settings = {"model_control": "explicit", "model_repository": str(repository)}
    with running_server_process(repository / "served.onnx", tmp_path / "server.log", **settings) as (url, server):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        good = image_files(("cat.jpg", (SAMPLES / "cat.jpg").read_bytes()))
        served = httpx.post(f"{url}/predict", files=good).headers["x-model"]
        threads = threading.active_count()
        rss = tree_rss_mb(server.pid)
        for name, reason in rows.items():
            with pytest.raises(triton.InferenceServerException, match=re.escape(reason)):
                client.load_model(name)
            answer = httpx.post(f"{url}/predict", files=good)
            assert (answer.status_code, answer.headers["x-model"]) == (200, served), name
        # A file that vanished: the configured path no longer there when SIGHUP asks to reload it
        moved = tmp_path / "moved.onnx"
        (repository / "served.onnx").rename(moved)
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: "does not exist" in (tmp_path / "server.log").read_text(), "the reload to be refused")
        assert httpx.post(f"{url}/predict", files=good).headers["x-model"] == served
        # A FIFO where the model was: refused at once, not read until someone writes (it had held the load lock)
        os.mkfifo(repository / "served.onnx")
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: "is not a regular file" in (tmp_path / "server.log").read_text(), "the FIFO to be refused")
        assert httpx.post(f"{url}/predict", files=good).headers["x-model"] == served
        # After an unload, a new model is checked against the served input size and the samples all the same
        client.unload_model("served")
        for name in ("other_size", "wrong_answers"):
            with pytest.raises(triton.InferenceServerException, match=re.escape(rows[name])):
                client.load_model(name)
        assert httpx.get(f"{url}/ready").status_code == 503
        refused = httpx.get(f"{url}/metrics").text
        client.close()
        growth = tree_rss_mb(server.pid) - rss
    log = (tmp_path / "server.log").read_text()
    refusals = len(rows) + 2 + 2  # the table, the vanished file, the FIFO, the two after the unload
    print(f"\n{refusals} refusals; RSS growth {growth:.1f} MB; threads {threads} -> {threading.active_count()}")
    assert f'classifier_model_loads_total{{result="refused"}} {refusals}.0' in refused
    assert log.count("event=model_refused") == refusals
    assert growth < 50


@pytest.fixture
def repository(bundled_model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "served.onnx").symlink_to(bundled_model)
    (folder / "light.onnx").symlink_to(LIGHT)
    return folder


@pytest.fixture
def controlled(repository: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A server with the model repository API on, serving the repository's "served" model."""
    settings = {"model_control": "explicit", "model_repository": str(repository)}
    with running_server_process(repository / "served.onnx", tmp_path / "server.log", **settings) as (url, server):
        yield url, server.pid


def test_tritonclient_indexes_loads_and_unloads(controlled: tuple[str, int]) -> None:
    url, _ = controlled
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        states = {entry["name"]: entry["state"] for entry in client.get_model_repository_index()}
        assert states == {"served": "READY", "light": "UNAVAILABLE"}
        assert client.is_model_ready("served") and not client.is_model_ready("light")
        client.load_model("light")
        assert client.is_model_ready("light") and not client.is_model_ready("served")
        assert {entry["name"]: entry["state"] for entry in client.get_model_repository_index()}["light"] == "READY"
        assert client.get_model_metadata("light")["versions"] == ["1.0.0"]
        client.unload_model("light")
        assert not client.is_model_ready("light") and not client.is_server_ready()
        assert httpx.get(f"{url}/ready").status_code == 503
        client.load_model("served")
        assert client.is_model_ready("served") and client.is_server_ready()
        with pytest.raises(triton.InferenceServerException, match="has no model 'missing'"):
            client.load_model("missing")
    finally:
        client.close()


def test_the_repository_api_is_off_unless_turned_on(bundled_model: Path, tmp_path: Path) -> None:
    with running_server_process(bundled_model, tmp_path / "server.log") as (url, _):
        answer = httpx.post(f"{url}/v2/repository/models/default/load")
    assert answer.status_code == 403 and answer.json()["code"] == "model_control_off"


def test_memory_comes_back_after_twenty_swaps(controlled: tuple[str, int]) -> None:
    url, pid = controlled
    good = image_files(("cat.jpg", (SAMPLES / "cat.jpg").read_bytes()))
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(20):  # warm: every path a request and a swap take, once
            assert client.post("/predict", files=good).status_code == 200
        one_model = tree_rss_mb(pid)
        for number in range(20):
            name = "light" if number % 2 == 0 else "served"
            assert client.post(f"/v2/repository/models/{name}/load").status_code == 200
            assert client.post("/predict", files=good).status_code == 200
        time.sleep(1)  # the last swap's old model is retired once its requests are answered: it has none
        after = tree_rss_mb(pid)
    print(f"\nRSS of the server and its processes: {one_model:.0f} MB with one model, {after:.0f} MB after 20 swaps")
    assert after < one_model * 1.10

"""The client's retry policy against refusals from what may sit in front of the service (a rate limiter, a proxy):
httpx's MockTransport stands in for those, which cannot run here. The client against the real server is tested
in tests/system/test_client.py."""

from pathlib import Path

import httpx2 as httpx
import pytest

from service.client import Classifier, main


def classifier(handler, monkeypatch) -> Classifier:
    monkeypatch.setattr("service.client.time.sleep", lambda seconds: None)
    client = Classifier("http://server", top_k=3, headers={}, retries=2, timeout_s=5, max_file_bytes=1000)
    client.client = httpx.Client(transport=httpx.MockTransport(handler))
    return client


def files(tmp_path: Path, count: int) -> list[Path]:
    paths = [tmp_path / f"{i}.png" for i in range(count)]
    for path in paths:
        path.write_bytes(b"png")
    return paths


def test_a_429_is_retried_like_a_503_not_fanned_out_file_by_file(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def limited(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "rate_limited", "detail": "slow down"})

    client = classifier(limited, monkeypatch)
    results = client.classify(files(tmp_path, 4))
    assert len(seen) == 3  # one request, retried twice: never one per file
    assert all("kept refusing" in result.error for result in results)
    assert client.classify(files(tmp_path, 2))[0].error.startswith("not sent")  # the run gives up at once
    assert len(seen) == 3


def test_only_a_refusal_for_a_file_is_retried_file_by_file(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def not_found(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": "not_found", "detail": "Not Found"})

    results = classifier(not_found, monkeypatch).classify(files(tmp_path, 4))
    assert len(seen) == 1
    assert all(result.error == "404 not_found: Not Found" for result in results)


def test_a_retry_after_that_is_not_a_finite_number_waits_a_second(tmp_path: Path, monkeypatch) -> None:
    waits: list[float] = []
    answers = iter(["nan", "inf", "-1e999"])

    def refusing(request: httpx.Request) -> httpx.Response:
        value = next(answers, None)
        if value is None:
            return httpx.Response(200, json={"predictions": [{"top_k": [{"label": "cat", "probability": 0.9}]}]})
        return httpx.Response(503, headers={"Retry-After": value}, json={"error": "overloaded", "detail": "later"})

    client = classifier(refusing, monkeypatch)
    client.retries = 3
    monkeypatch.setattr("service.client.time.sleep", waits.append)
    (result,) = client.classify(files(tmp_path, 1))
    assert result.label == "cat" and waits == [1.0, 1.0, 1.0]


def test_the_command_line_refuses_an_abbreviated_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["http://server", "photo.png", "--conc", "2"])  # argparse would take it for --concurrency
    assert exit_.value.code == 2
    assert "unrecognized arguments: --conc 2" in capsys.readouterr().err

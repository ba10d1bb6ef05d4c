"""Files that are cheap to send and cost seconds of Pillow's Python to parse (issue 23's table: JPEGs of empty
markers, PNGs of private chunks, run-length BMPs padded pixel by pixel), through the real server: two requests of
32 such files each are refused at once, the server spends well under a second of CPU on all of them, and a normal
request meanwhile is answered within a second."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import encode, noisy_image
from tests.helpers import (
    bmp_rle8_row,
    image_files,
    jpeg_of_empty_markers,
    png_of_private_chunks,
    running_server_process,
    tree_cpu_seconds,
)


@pytest.mark.parametrize(
    ("make", "files", "status"),
    [(lambda: jpeg_of_empty_markers(400_000), 32, 415), (lambda: png_of_private_chunks(160_000), 32, 415),
     (lambda: bmp_rle8_row(36_000_000), 1, 413)],
    ids=["jpeg-empty-markers", "png-private-chunks", "bmp-rle-row"],
)  # fmt: skip
def test_costly_files_cost_the_server_little_cpu(
    bundled_model: Path, tmp_path: Path, make: Callable[[], bytes], files: int, status: int
) -> None:
    """(Before these checks: 30.5 s and 28.1 s of server CPU for the JPEG and PNG rows, both requests 504 and the
    work going on after them; 20 s for the two 1 KB BMPs.)"""
    data = make()
    attack = image_files(*((f"f{index}", data) for index in range(files)))
    good = image_files(("cat.png", encode(noisy_image((200, 120, 60)), "PNG")))

    async def run(url: str) -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            attacks = [asyncio.ensure_future(client.post("/predict", files=attack)) for _ in range(2)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            normal = await client.post("/predict", files=good)
            normal_s = time.monotonic() - started
            assert normal.status_code == 200
            return list(await asyncio.gather(*attacks)), normal_s

    with running_server_process(bundled_model, tmp_path / "server.log") as (url, server):
        before = tree_cpu_seconds(server.pid)
        answers, normal_s = asyncio.run(run(url))
        time.sleep(1)  # anything the attack left running would still be burning CPU now
        spent = tree_cpu_seconds(server.pid) - before
    print(f"\n2 x {files} files of {len(data)} bytes: {[a.status_code for a in answers]}; server CPU {spent:.2f} s; "
          f"a normal /predict meanwhile {normal_s * 1000:.0f} ms")  # fmt: skip
    assert [answer.status_code for answer in answers] == [status, status]
    assert all(answer.headers["content-type"] == "application/json" for answer in answers)
    assert spent < 1.5
    assert normal_s < 1

"""Decode memory is bounded by design, through the real server: many concurrent worst-case small files (large
single-colour images that decode to hundreds of MB each) leave the server's peak memory below the Kubernetes
memory limit, every answer is 200, a 4xx or a 503 in JSON, and the server keeps serving."""

import asyncio
from pathlib import Path

import httpx2 as httpx

from tests.conftest import encode, noisy_image
from tests.helpers import (
    SIDE,
    image_files,
    manifest_settings,
    memory_limit_bytes,
    running_server_process,
    tree_peak_rss_bytes,
    worst_cases,
)

CONCURRENT = 32


def test_concurrent_worst_case_images_stay_within_the_memory_limit(bundled_model: Path, tmp_path: Path) -> None:
    files = worst_cases()
    names = sorted(files)

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as client:

            async def one(index: int) -> httpx.Response:
                name = names[index % len(names)]
                return await client.post("/predict", files=image_files((name, files[name])))

            return await asyncio.gather(*(one(index) for index in range(CONCURRENT)))

    # The shipped manifests' settings, with a long request timeout: the decodes queue for the memory budget, and
    # a loaded CI machine must not turn that wait into 504s; what is measured here is memory.
    settings = manifest_settings() | {"request_timeout_s": "300"}
    with running_server_process(bundled_model, tmp_path / "server.log", **settings) as (url, server):
        idle = tree_peak_rss_bytes(server.pid)
        answers = asyncio.run(send_all(url))
        peak = tree_peak_rss_bytes(server.pid)
        good = image_files(("cat.png", encode(noisy_image((200, 120, 60)), "PNG")))
        after = httpx.post(f"{url}/predict", files=good, timeout=30)
    outcomes: dict[str, set[int]] = {}
    for index, answer in enumerate(answers):
        outcomes.setdefault(names[index % len(names)], set()).add(answer.status_code)
        assert answer.headers["content-type"] == "application/json", answer.text
        assert answer.status_code == 200 or 400 <= answer.status_code < 500 or answer.status_code == 503, answer.text
    limit = memory_limit_bytes()
    statuses = ", ".join(f"{name}: {sorted(codes)}" for name, codes in outcomes.items())
    print(
        f"\n{CONCURRENT} concurrent worst-case uploads ({SIDE}x{SIDE}; {statuses}): "
        f"peak RSS {idle / 2**20:.0f} MiB idle -> {peak / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB"
    )
    assert after.status_code == 200
    assert outcomes["big.webp"] == {413}
    assert outcomes["rgba.png"] == {200}
    assert peak < limit

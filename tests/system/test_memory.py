"""Decode memory is bounded by design, through the real server: many concurrent worst-case small files (large
single-colour images that decode to hundreds of MB each) leave the server's peak memory below the Kubernetes
memory limit, every answer is 200, a 4xx or a 503 in JSON, and the server keeps serving."""

import asyncio
import json
import struct
from pathlib import Path

import httpx2 as httpx

from service.app import DECODE_PROCESSES
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


def test_v2_bodies_are_counted_as_often_as_they_are_held(bundled_model: Path, tmp_path: Path) -> None:
    """Four binary v2 requests of 60 MiB at once (six 10 MiB files each): the files copied out of a body count
    against the body budget too, so the server's peak stays within that budget (it held two or three copies of
    each body, counted once: +600 MB for 240 MiB of bodies)."""
    files = [b"\x89PNG" + bytes(10 * 2**20 - 100) for _ in range(6)]
    binary = b"".join(struct.pack("<I", len(file)) + file for file in files)
    tensor = {"name": "image", "shape": [6], "datatype": "BYTES", "parameters": {"binary_data_size": len(binary)}}
    head = json.dumps({"inputs": [tensor]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}

    async def send_all(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            infer = "/v2/models/cifar10-resnet9/infer"
            answers = [client.post(infer, content=head + binary, headers=headers) for _ in range(4)]
            return [answer.status_code for answer in await asyncio.gather(*answers)]

    budget = 256 * 2**20
    with running_server_process(bundled_model, tmp_path / "server.log", body_memory_bytes=str(budget)) as (url, server):
        idle = tree_peak_rss_bytes(server.pid)
        statuses = asyncio.run(send_all(url))
        peak = tree_peak_rss_bytes(server.pid)
    print(
        f"\nfour 60 MiB v2 requests: {statuses}; peak RSS {idle / 2**20:.0f} -> {peak / 2**20:.0f} MiB "
        "(the server and its processes)"
    )
    assert set(statuses) <= {415, 503} and 415 in statuses  # not images; some wait their turn (503)
    # Beside the bodies, each decoder process holds the files of the request it checks (counted in the decode
    # budget): at most one request's 60 MiB per process.
    in_decoders = DECODE_PROCESSES * sum(len(file) for file in files)
    assert peak - idle < budget + in_decoders + 100 * 2**20

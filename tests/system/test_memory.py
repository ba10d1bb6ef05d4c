"""Decode memory is bounded by design, through the real server: many concurrent worst-case small files (large
single-colour images that decode to hundreds of MB each) leave the server's peak memory below the Kubernetes
memory limit, every answer is 200, a 4xx or a 503 in JSON, and the server keeps serving."""

import asyncio
import io
import re
from pathlib import Path

import httpx2 as httpx
import yaml
from PIL import Image

from tests.conftest import REPO, encode, noisy_image
from tests.helpers import image_files, running_server_process

SIDE = 5000
CONCURRENT = 32


def worst_cases() -> dict[str, bytes]:
    """Files of a few KB to 1 MB whose decoding is expensive, in every accepted format and costly mode."""
    palette = Image.new("P", (SIDE, SIDE), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    frames = [Image.new("P", (SIDE, SIDE), index) for index in range(3)]
    rgba = [Image.new("RGBA", (SIDE, SIDE), (index, 0, 0, 200)) for index in range(2)]

    def save(image: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    return {
        "rgba.png": save(rgba[0], "PNG"),
        "grey16.png": save(Image.new("I;16", (SIDE, SIDE), 40000), "PNG"),
        "palette.png": save(palette, "PNG", transparency=0),
        "cmyk.jpg": save(Image.new("CMYK", (SIDE, SIDE), (1, 2, 3, 4)), "JPEG", progressive=True),
        "animated.gif": save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "frames.tif": save(rgba[0], "TIFF", save_all=True, append_images=rgba[1:], compression="tiff_deflate"),
        "big.webp": save(Image.new("RGBA", (SIDE, SIDE), (1, 2, 3, 4)), "WEBP", lossless=True),  # 413: too costly
        "small.webp": save(Image.new("RGBA", (3000, 3000), (1, 2, 3, 4)), "WEBP", lossless=True),
    }


def memory_limit_bytes() -> int:
    """The api container's memory limit in the shipped Kubernetes manifests."""
    deployment = yaml.safe_load((REPO / "deploy" / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limit).groups()  # type: ignore[union-attr]
    return int(number) * {"Mi": 2**20, "Gi": 2**30}[unit]


def manifest_settings() -> dict[str, str]:
    """The shipped ConfigMap's service settings (but where to listen), as `running_server` takes them."""
    configmap = yaml.safe_load((REPO / "deploy" / "base" / "configmap.yaml").read_text())
    return {
        name.removeprefix("CLASSIFIER_").lower(): value
        for name, value in configmap["data"].items()
        if name not in {"CLASSIFIER_HOST", "CLASSIFIER_PORT"}
    }


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]


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
        idle = peak_rss_bytes(server.pid)
        answers = asyncio.run(send_all(url))
        peak = peak_rss_bytes(server.pid)
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

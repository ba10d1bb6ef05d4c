"""The memory limit holds in a real cgroup: the CPU image with the Kubernetes manifests' memory limit and
ConfigMap settings takes 32 concurrent worst-case uploads (small files that decode big, of every accepted format,
and a 37-byte GIF that made Pillow allocate 4 GB while opening it) and every file of the tests' hostile corpus,
is never OOM-killed, and answers a normal request within 1 s afterwards."""

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx2 as httpx

from tests.conftest import REPO, encode, noisy_image
from tests.container.engine import Container
from tests.helpers import image_files, manifest_settings, memory_limit_bytes, png_declaring, worst_cases

CONCURRENT = 32


def hostile_corpus() -> dict[str, bytes]:
    """The files the tests keep because they once broke the decoder, and crafted headers."""
    corpus = {path.name: path.read_bytes() for path in sorted((REPO / "tests" / "data" / "corrupt").iterdir())}
    return corpus | {"declares-huge.png": png_declaring(100_000, 100_000), "empty.png": b""}


def test_worst_case_uploads_never_pass_the_memory_limit(cpu_image: str, start: Callable[..., Container]) -> None:
    limit = memory_limit_bytes()
    # The ConfigMap's settings, with a long request timeout: the decodes queue for the memory budget, and a loaded
    # machine must not turn that wait into 504s; what is measured here is memory.
    settings = manifest_settings() | {"request_timeout_s": "300"}
    environment = [
        option for name, value in settings.items() for option in ("--env", f"CLASSIFIER_{name.upper()}={value}")
    ]
    container = start(
        cpu_image, "--read-only", "--tmpfs", "/tmp", "--memory", str(limit), "--memory-swap", str(limit),
        "--publish", "127.0.0.1::8000", *environment,
    )  # fmt: skip
    url = container.url()
    container.wait_ready()

    files = worst_cases() | hostile_corpus()
    names = sorted(files)

    async def send_all() -> list[tuple[str, int, str]]:
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as client:

            async def one(index: int) -> tuple[str, int, str]:
                name = names[index % len(names)]
                answer = await client.post("/predict", files=image_files((name, files[name])))
                return name, answer.status_code, answer.headers["content-type"]

            return await asyncio.gather(*(one(index) for index in range(max(CONCURRENT, len(names)))))

    answers = asyncio.run(send_all())
    started = time.monotonic()
    good = image_files(("cat.png", encode(noisy_image((200, 120, 60)), "PNG")))
    after = httpx.post(f"{url}/predict", files=good, timeout=1)
    answered_s = time.monotonic() - started

    peak = container.exec("cat", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes").stdout.strip()
    if not peak.isdigit():  # cgroup v2
        peak = container.exec("cat", "/sys/fs/cgroup/memory.peak").stdout.strip()
    statuses = Counter((name, status) for name, status, _ in answers)
    print(
        f"\n{len(answers)} concurrent uploads: {dict(statuses)}; peak cgroup memory "
        f"{int(peak) / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB; a normal request "
        f"afterwards answered in {answered_s * 1000:.0f} ms"
    )
    assert container.inspect("{{.State.Running}} {{.State.OOMKilled}} {{.RestartCount}}") == "true false 0"
    assert after.status_code == 200
    assert all(content_type == "application/json" for *_, content_type in answers)
    assert all(status == 200 or 400 <= status < 500 or status == 503 for _, status, _ in answers), statuses
    assert {status for name, status, _ in answers if name == "dispose.gif"} == {413}
    assert {status for name, status, _ in answers if name == "rgba.png"} == {200}

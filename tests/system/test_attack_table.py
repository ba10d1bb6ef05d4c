"""Issue 23's table of attacks, each row against a real server of its own at the table's scale (the attacks are
benchmarks/attacks.py's, which the soak runs too). For every row four figures are measured and bounded:
- memory: the peak resident memory of the server and its processes (sampled every 20 ms) over its idle figure,
  at most 100 MB beyond the request bodies the server holds, each counted as often as it is held: once in the
  server (the body budget) and, for files checked in a decoder process, once there (the decode budget); the
  37-byte GIF: 64 MB in all; beyond the decoded pixels too where the image is within the pixel limit;
- a normal /predict, sent again and again while the attack runs: the slowest printed (within 1 s on a quiet
  machine is the issue's figure; a timed pass mark would fail on a loaded one) and bounded at 3 s, which catches
  a normal client stalled for the attack's length, as each row of the table did before;
- the attacker refused (4xx) or its connections ended by the server;
- the work of the attack ended with it: the server's CPU time (its processes' included) in the second after the
  attack ended, under 0.2 s.
The remaining row, SIGTERM under load with two workers, is tests/system/test_shutdown.py."""

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from benchmarks.attacks import Attacker
from service.app import DECODE_PROCESSES
from tests.conftest import encode, noisy_image
from tests.helpers import (
    image_files,
    jpeg_of_empty_markers,
    png_of_private_chunks,
    running_server_process,
    tree_cpu_seconds,
    tree_rss_mb,
)

MIB = 2**20
BODY_BUDGET = 256 * MIB
"""The server's default body budget (CLASSIFIER_BODY_MEMORY_BYTES), which these servers keep."""
SETTINGS = {"head_timeout_s": "2", "write_timeout_s": "2", "keep_alive_timeout_s": "2"}
"""Shorter than the defaults (10, 30 and 5 s) so that the rows that wait for the server to end a connection end
sooner; every other limit is the default."""
NORMAL = image_files(("cat.png", encode(noisy_image((200, 120, 60)), "PNG")))
CPU_AFTER_S = 1.0
DECODED_MB = 6000 * 6000 * 3 / 1e6
"""The costly JPEG's pixels (benchmarks/attacks.py): 36 megapixels, within the default pixel limit."""


def memory_mb(pid: int) -> float:
    """The resident memory of the server and its processes, in MB (10^6 bytes)."""
    return tree_rss_mb(pid) * MIB / 1e6


def beyond(request_mb: float, requests: int) -> float:
    """100 MB beyond `requests` bodies of `request_mb` each in the server, and the files' copies in the decoder
    processes, one request's in each."""
    return 100 + request_mb * (requests + min(requests, DECODE_PROCESSES))


@dataclass(frozen=True)
class Row:
    attack: Callable[[Attacker], str]
    outcome: str
    """A regular expression that what the server did with the attack (see benchmarks/attacks.py) matches."""
    memory_mb: float = 100
    """How much the server's memory may grow."""
    normal: frozenset[int] = frozenset({200})
    normal_within_s: float = 3


ROWS = {
    "pipelined-flood-20-s": Row(lambda attacker: attacker.pipelined_flood(seconds=20), r"^closed$"),
    "20-MB-header": Row(lambda attacker: attacker.huge_header(20_000_000), r"^431 x1$"),
    "2-x-32-jpegs-of-empty-markers": Row(
        lambda attacker: attacker.upload(jpeg_of_empty_markers(400_000), "markers", copies=32, requests=2),
        r"^415 x2$",
        memory_mb=beyond(32 * 1.6, requests=2),
    ),
    "3-rle-bmps-of-36-megapixels": Row(
        lambda attacker: attacker.upload(attacker.files["bmp-rle-row"], "rle", requests=3), r"^413 x3$"
    ),
    "4-x-6-pngs-of-private-chunks": Row(
        lambda attacker: attacker.upload(png_of_private_chunks(10 * MIB // 12), "chunks", copies=6, requests=4),
        r"^((413|415|503) x\d(, )?)+$",
        memory_mb=beyond(60 * MIB / 1e6, requests=4),
    ),
    "4-v2-bodies-of-60-MiB": Row(
        lambda attacker: attacker.v2_bodies(files=6, file_bytes=10 * MIB, requests=4),
        r"^415 x\d(, 503 x\d)?$",
        memory_mb=beyond(60 * MIB / 1e6, requests=4),
    ),
    "250-unread-answers-to-1.9-MB-ids": Row(
        lambda attacker: attacker.unread_answers(250, hold_s=3, within_s=30),
        r"^((400|503) x\d+(, )?)+$",
        memory_mb=100 + BODY_BUDGET / 1e6,  # refused before any decoding
        # 475 MB of bodies arrive at the speed of the loopback; a normal request waits while the event loop takes
        # them in (0.8-1.7 s on a quiet machine, 4 s beside `stress-ng --cpu 2`; the same for 1.9 MB multipart
        # bodies on /predict): bandwidth, bounded by the proxy's rate limits in front, not by the server
        normal_within_s=10,
    ),
    # over the cap of 4,096 connections: the rest are answered 503 at once; normal clients too, until the head
    # timeout ends the silent ones (a proxy's per-address limit keeps one client from taking them all)
    "4500-silent-connections": Row(
        lambda attacker: attacker.silent_connections(4500, hold_s=0, within_s=30),
        r"^(503 x\d+, )?closed x\d+$",
        normal=frozenset({200, 503}),
    ),
    "37-byte-gif": Row(lambda attacker: attacker.upload(attacker.files["gif-dispose"], "gif"), r"^413 x1$", 64),
    # within every size limit, 2.2-2.9 s of CPU against a limit of 2 s that the kernel counts in whole seconds
    "99-scan-jpeg": Row(
        lambda attacker: attacker.upload(attacker.files["costly-jpeg"], "scans"), r"^(413|200) x1$", 100 + DECODED_MB
    ),
    "client-leaves-mid-decode": Row(lambda attacker: attacker.leave_mid_decode(), r"^left$", 100 + DECODED_MB),
}


@pytest.fixture(scope="module")
def attacker_files() -> dict[str, bytes]:
    return Attacker(0).files


@pytest.mark.parametrize("name", ROWS)
def test_an_attack_is_bounded_in_memory_time_and_cpu(
    bundled_model: Path, tmp_path: Path, name: str, attacker_files: dict[str, bytes]
) -> None:
    row = ROWS[name]
    with running_server_process(bundled_model, tmp_path / "server.log", **SETTINGS) as (url, server):
        attacker = Attacker(int(url.rsplit(":", 1)[1]))
        attacker.files = attacker_files
        assert httpx.post(f"{url}/predict", files=NORMAL, timeout=30).status_code == 200  # warm
        idle_mb = memory_mb(server.pid)
        samples: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                samples.append(memory_mb(server.pid))

        outcome: list[str] = []
        attack = threading.Thread(target=lambda: outcome.append(row.attack(attacker)))
        sampler = threading.Thread(target=sample)
        sampler.start()
        attack.start()
        normal: list[tuple[int, float]] = []
        with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while attack.is_alive() or not normal:
                started = time.monotonic()
                status = client.post("/predict", files=NORMAL).status_code
                normal.append((status, time.monotonic() - started))
                attack.join(timeout=0.1)
        attack.join()
        before = tree_cpu_seconds(server.pid)
        time.sleep(CPU_AFTER_S)
        cpu_after = tree_cpu_seconds(server.pid) - before
        sampling.set()
        sampler.join()
    growth_mb = max(samples, default=idle_mb) - idle_mb
    slowest_s = max(seconds for _, seconds in normal)
    statuses = sorted({status for status, _ in normal})
    print(
        f"\n{name}: the attack got {outcome}; memory {idle_mb:.0f} MB idle, +{growth_mb:.0f} MB at most "
        f"(allowed {row.memory_mb:.0f}); {len(normal)} normal requests {statuses}, the slowest {slowest_s:.3f} s; "
        f"server CPU {cpu_after:.3f} s in the {CPU_AFTER_S:g} s after"
    )
    assert outcome and re.search(row.outcome, outcome[0]), outcome
    assert growth_mb < row.memory_mb
    assert set(statuses) <= row.normal
    assert slowest_s < row.normal_within_s
    assert cpu_after < 0.2

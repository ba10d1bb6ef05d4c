"""Mutation fuzzer for image decoding: bit flips, byte overwrites, truncations and splices of valid files of every
format Pillow writes here, run through `open_image` + `decode` with the service's default limits.

The property: each case yields the model's input (a uint8 array of the input size) or one of our client errors
(4xx). Anything else (another exception, a 5xx) is a failure; its bytes are saved to examine.

    python -m benchmarks.fuzz_decode --cases 200000 --processes 2     # (make fuzz) prints figures, exit 1 on failure

tests/service/test_imaging_fuzz.py runs a seeded few thousand cases of the same mutations.
"""

import argparse
import io
import json
import multiprocessing
import random
import resource
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, features

from service.config import Settings
from service.error_responses import http_status
from service.errors import ServiceError
from service.imaging import configure_pillow, decode, open_image

SIZE = (32, 32)
DEFAULTS = Settings(_env_file=None)  # type: ignore[call-arg]


def seed_files() -> dict[str, bytes]:
    """Small valid files: every format Pillow writes here, in the modes and variants clients send (EXIF with an
    orientation, animation, several frames, progressive, 16-bit, palette with transparency, CMYK)."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (21, 27, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decoding reads and applies it
    exif[0x010F] = "fuzz camera"
    frames = [photo.rotate(angle) for angle in (0, 90, 180)]
    seeds: dict[str, bytes] = {}

    def add(name: str, image: Image.Image, fmt: str, **options: object) -> None:
        buffer = io.BytesIO()
        try:
            image.save(buffer, format=fmt, **options)
        except (OSError, ValueError, KeyError, TypeError):
            return  # this Pillow cannot write that variant
        seeds[name] = buffer.getvalue()

    add("jpeg-exif", photo, "JPEG", quality=80, exif=exif)
    add("jpeg-progressive", photo, "JPEG", progressive=True)
    add("jpeg-cmyk", photo.convert("CMYK"), "JPEG")
    add("jpeg-grey", photo.convert("L"), "JPEG")
    add("mpo", photo, "MPO", save_all=True, append_images=[photo.rotate(90)])
    add("png-rgba", photo.convert("RGBA"), "PNG", exif=exif)
    add("png-palette-transparent", photo.convert("P"), "PNG", transparency=3)
    add("png-16bit", photo.convert("I;16"), "PNG")
    add("png-1bit", photo.convert("1"), "PNG")
    add("png-la", photo.convert("LA"), "PNG")
    add("apng", frames[0], "PNG", save_all=True, append_images=frames[1:])
    add("webp-lossy", photo, "WEBP", quality=70, exif=exif)
    add("webp-lossless-rgba", photo.convert("RGBA"), "WEBP", lossless=True)
    add("webp-animated", frames[0], "WEBP", save_all=True, append_images=frames[1:])
    add("gif-animated", frames[0].convert("P"), "GIF", save_all=True, append_images=frames[1:], loop=0)
    add("bmp", photo, "BMP")
    add("bmp-palette", photo.convert("P"), "BMP")
    add("tiff-exif", photo, "TIFF", exif=exif)
    add("tiff-multi-deflate", frames[0], "TIFF", save_all=True, append_images=frames[1:], compression="tiff_deflate")
    add("tiff-cmyk-lzw", photo.convert("CMYK"), "TIFF", compression="tiff_lzw")
    add("tiff-float", photo.convert("F"), "TIFF")
    add("tiff-jpeg", photo, "TIFF", compression="jpeg")
    # Formats Pillow reads but the service refuses: their parsers must not run on uploads at all.
    for fmt in ("ICO", "PPM", "TGA", "PCX", "SGI", "IM", "DDS", "QOI", "SPIDER", "MSP", "XBM", "BLP"):
        add(fmt.lower(), photo.convert("1") if fmt in {"MSP", "XBM"} else photo, fmt)
    if features.check("jpg_2000"):
        add("jpeg2000", photo, "JPEG2000")
    if features.check("avif"):
        add("avif", photo, "AVIF")
    return seeds


def mutate(data: bytes, donors: list[bytes], rng: random.Random) -> bytes:
    """One to several random mutations of `data`: bit flips, overwrites with edge values, truncation, splices with
    another file, and repeated or removed runs."""
    buffer = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        kind = rng.randrange(7)
        position = rng.randrange(len(buffer)) if buffer else 0
        if kind == 0 and buffer:
            buffer[position] ^= 1 << rng.randrange(8)
        elif kind == 1 and buffer:
            width = rng.choice((1, 2, 4))
            value = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)))
            buffer[position : position + width] = bytes([value]) * width
        elif kind == 2:
            buffer = buffer[: rng.randrange(len(buffer) + 1)]
        elif kind == 3:
            donor = rng.choice(donors)
            start = rng.randrange(len(donor))
            buffer = buffer[:position] + donor[start : start + rng.randrange(1, 256)] + buffer[position:]
        elif kind == 4:
            donor = rng.choice(donors)
            buffer = buffer[:position] + donor[rng.randrange(len(donor)) :]
        elif kind == 5 and buffer:
            run = buffer[position : position + rng.randrange(1, 64)]
            buffer[position:position] = run * rng.randrange(1, 4)
        elif kind == 6 and buffer:
            del buffer[position : position + rng.randrange(1, 64)]
    return bytes(buffer)


def check(data: bytes) -> str:
    """Run one case; returns its outcome: "ok", or the client error's code. Raises on a property violation."""
    try:
        opened = open_image(
            data,
            filename="fuzz",
            size=SIZE,
            max_pixels=DEFAULTS.max_image_pixels,
            max_decode_bytes=DEFAULTS.max_decode_bytes,
        )
        array = decode(opened, SIZE)
    except ServiceError as error:
        if not 400 <= http_status(error) < 500:
            raise AssertionError(f"a {http_status(error)}: {error}") from error
        return error.error
    if array.shape != (*SIZE, 3) or array.dtype != np.uint8:
        raise AssertionError(f"wrong output {array.shape} {array.dtype}")
    return "ok"


def run_cases(seed: int, cases: int, failures_dir: Path | None = None) -> tuple[Counter[str], list[str]]:
    """`cases` seeded mutations, spread evenly over the seed files; outcome counts and failure descriptions."""
    warnings.simplefilter("ignore")  # Pillow warns about some corrupt files; only the outcome matters here
    seeds = seed_files()
    names = sorted(seeds)
    donors = [seeds[name] for name in names]
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for index in range(cases):
        name = names[index % len(names)]
        data = mutate(seeds[name], donors, rng)
        try:
            outcomes[check(data)] += 1
        except Exception as error:
            outcomes["FAILED"] += 1
            failures.append(f"{name}: {type(error).__name__}: {error}")
            if failures_dir is not None:
                failures_dir.mkdir(parents=True, exist_ok=True)
                (failures_dir / f"{seed}-{index}-{name}.bin").write_bytes(data)
    return outcomes, failures


def _worker(job: tuple[int, int, str | None]) -> tuple[Counter[str], list[str], float]:
    configure_pillow()
    seed, cases, failures_dir = job
    outcomes, failures = run_cases(seed, cases, Path(failures_dir) if failures_dir else None)
    return outcomes, failures, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the fuzzer in several processes and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=5_000, help="cases per job (one seed each)")
    parser.add_argument("--failures-dir", default="benchmarks/results/fuzz-failures")
    parser.add_argument("--out", default="benchmarks/results/fuzz_decode.json")
    args = parser.parse_args()
    jobs = [
        (args.seed * 1_000_003 + index, min(args.chunk, args.cases - start), args.failures_dir)
        for index, start in enumerate(range(0, args.cases, args.chunk))
    ]
    started = time.perf_counter()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    peak_mb = 0.0
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for job_outcomes, job_failures, job_peak in pool.imap_unordered(_worker, jobs):
            outcomes += job_outcomes
            failures += job_failures
            peak_mb = max(peak_mb, job_peak)
    elapsed = time.perf_counter() - started
    total = sum(outcomes.values())
    seeds = seed_files()
    summary = {
        "cases": total,
        "failures": outcomes["FAILED"],
        "outcomes": dict(outcomes.most_common()),
        "seed_files": len(seeds),
        "seed_formats": sorted(seeds),
        "seconds": round(elapsed, 1),
        "cases_per_second": round(total / elapsed),
        "peak_rss_mb_per_process": round(peak_mb, 1),
        "pillow": Image.__version__,
    }
    print(json.dumps(summary, indent=2))
    for failure in failures[:20]:
        print("FAILURE", failure)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()

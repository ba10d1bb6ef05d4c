"""The decode-memory estimate is an upper bound: for worst-case small files of every accepted format and the
modes that cost most, the process's measured peak memory while decoding stays below what the header promised."""

import json
import subprocess
import sys

from tests.conftest import REPO

# Runs in a fresh process: writes each worst case, resets the kernel's peak-RSS mark (VmHWM), decodes, reads it.
MEASURE = r"""
import gc, io, json, re, sys
from PIL import Image
from service.imaging import decode, open_image

SIDE = 4000
def save(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()

def status(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read())[1]) * 1024

palette = Image.new("P", (SIDE, SIDE), 1)
palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
frames = [Image.new("P", (SIDE, SIDE), index) for index in range(3)]
cases = {
    "png-rgba": lambda: save(Image.new("RGBA", (SIDE, SIDE), (10, 20, 30, 128)), "PNG"),
    "png-16bit": lambda: save(Image.new("I;16", (SIDE, SIDE), 1000), "PNG"),
    "png-palette-transparent": lambda: save(palette, "PNG", transparency=0),
    "png-la": lambda: save(Image.new("LA", (SIDE, SIDE), (7, 100)), "PNG"),
    "png-1bit": lambda: save(Image.new("1", (SIDE, SIDE), 1), "PNG"),
    "png-thin-rgba": lambda: save(Image.new("RGBA", (40, SIDE * SIDE // 40), (10, 20, 30, 128)), "PNG"),
    "png-thin-1bit": lambda: save(Image.new("1", (40, SIDE * SIDE // 40), 1), "PNG"),
    "jpeg-cmyk-progressive": lambda: save(Image.new("CMYK", (SIDE, SIDE), (1, 2, 3, 4)), "JPEG", progressive=True),
    "jpeg-grey-progressive": lambda: save(Image.new("L", (SIDE, SIDE), 5), "JPEG", progressive=True),
    "gif-animated": lambda: save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
    "tiff-multi-rgba": lambda: save(
        Image.new("RGBA", (SIDE, SIDE)), "TIFF", save_all=True, append_images=[Image.new("RGBA", (SIDE, SIDE))],
        compression="tiff_deflate",
    ),
    "tiff-float": lambda: save(Image.new("F", (SIDE, SIDE), 3.5), "TIFF", compression="tiff_deflate"),
    "webp-lossless-rgba": lambda: save(Image.new("RGBA", (SIDE, SIDE), (1, 2, 3, 4)), "WEBP", lossless=True),
    "bmp-rgb": lambda: save(Image.new("RGB", (SIDE, SIDE), (1, 2, 3)), "BMP"),
}
if len(sys.argv) == 1:
    print(json.dumps(sorted(cases)))
    raise SystemExit
name = sys.argv[1]
data = cases[name]()
del palette, frames
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := the current RSS
before = status("VmRSS")
opened = open_image(data, filename=name, size=(32, 32), max_pixels=10**9, max_decode_bytes=2**40)
decode(opened, (32, 32))
print(json.dumps({"peak": status("VmHWM") - before, "estimate": opened.decode_bytes, "file": len(data)}))
"""


def measure(*args: str) -> object:
    """Run MEASURE in a fresh process (memory freed by an earlier case would hide a later one's peak)."""
    command = [sys.executable, "-c", MEASURE, *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_measured_decode_peak_stays_below_the_header_estimate() -> None:
    names: list[str] = measure()  # type: ignore[assignment]
    results: dict[str, dict[str, int]] = {name: measure(name) for name in names}  # type: ignore[misc]
    print()
    for name, figures in results.items():
        print(
            f"{name}: file {figures['file'] / 1024:.0f} KiB, peak {figures['peak'] / 2**20:.0f} MiB, "
            f"estimate {figures['estimate'] / 2**20:.0f} MiB"
        )
    over = {name: figures for name, figures in results.items() if figures["peak"] > figures["estimate"]}
    assert not over, f"decoding took more memory than estimated: {over}"
    # The worst cases really are expensive: the check above is not passed by measuring nothing.
    assert max(figures["peak"] for figures in results.values()) > 100 * 2**20

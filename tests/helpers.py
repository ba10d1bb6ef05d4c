"""Helpers shared by the tests and the benchmarks: a real server on a free loopback port, its metrics, upload bodies,
crafted images and models, and a process's memory. Test modules import these (and conftest's), never each other."""

import contextlib
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, encode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(model: Path, log: Path, **settings: str) -> Iterator[str]:
    """`python -m service` on a free loopback port, until the block ends; yields its base URL once ready."""
    with running_server_process(model, log, **settings) as (url, _):
        yield url


@contextmanager
def running_server_process(
    model: Path, log: Path, environment: dict[str, str] | None = None, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As `running_server`, yielding the server's process too; `environment` adds other variables."""
    port = free_port()
    env = (
        os.environ
        | (environment or {})
        | {
            "CLASSIFIER_MODEL_PATH": str(model),
            "CLASSIFIER_HOST": "127.0.0.1",
            "CLASSIFIER_PORT": str(port),
        }
    )
    env |= {f"CLASSIFIER_{name.upper()}": value for name, value in settings.items()}
    with server_process([sys.executable, "-m", "service"], env, port, log) as running:
        yield running


@contextmanager
def server_process(
    command: list[str], env: dict[str, str], port: int, log: Path, ready_within_s: float = 60, cwd: Path = REPO
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`command` run in `cwd` (the repository), its output in `log`, until the block ends: yields its URL on `port`
    and the process once its /ready answers 200. Starts the servers of the tests and of the benchmarks alike."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within_s
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not become ready within {ready_within_s:g} s"
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's metrics (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0


def wait_for(condition: object, what: str, seconds: float = 30, poll_s: float = 0.02) -> None:
    """Poll `condition` every `poll_s` until it is true; the deadline only guards against a hang, it is not a timing
    margin."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(poll_s)


def answers_200(url: str) -> bool:
    """Whether a GET of `url` answers 200 now (False if nothing answers)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


Files = list[tuple[str, tuple[str, bytes, str]]]
"""httpx's (and TestClient's) `files=` argument."""


def image_files(*images: tuple[str, bytes], content_type: str = "application/octet-stream") -> Files:
    """Each (filename, encoded image) as a `files` part, as /predict takes uploads."""
    return [("files", (filename, data, content_type)) for filename, data in images]


def multipart(files: Files, boundary: str | None = None) -> tuple[bytes, str]:
    """The multipart/form-data body httpx would send for `files`, and its Content-Type (with `boundary`, if
    given, instead of a random one)."""
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"} if boundary else None
    request = httpx.Request("POST", "http://x/predict", files=files, headers=headers)
    return request.read(), request.headers["content-type"]


def png_declaring(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims `width` x `height` (a decompression bomb's calling card)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def write_model(path: Path, input_type: int, shape: list, labels: list[str] | None, classes: int = 3) -> Path:
    """A minimal ONNX model: Cast -> mean over the middle axes -> MatMul to `classes` -> Softmax."""
    image = helper.make_tensor_value_info("image", input_type, shape)
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])
    channels = shape[-1]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [channels, classes], np.ones(channels * classes).tolist())
    nodes = [
        helper.make_node("Cast", ["image"], ["float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["float"], ["mean"], axes=list(range(1, len(shape) - 1)), keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [image], [output], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if labels is not None:
        helper.set_model_props(model, {"class_names": json.dumps(labels), "model_name": "tiny"})
    onnx.save(model, path)
    return path


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (a server's forkserver and decoder processes), alive now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        tree.append(current := pending.pop())
        pending += children.get(current, [])
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of `pid` and the processes below it, including those they have reaped: what
    the server has spent, in its decoder processes too."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def tree_peak_rss_bytes(pid: int) -> int:
    """The sum of the peak RSS (VmHWM) of `pid` and the processes below it: at least the tree's peak (pages
    shared with the forkserver are counted in each)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{member}/status").read_text()
            total += int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
    return total


def tree_rss_mb(pid: int) -> float:
    """The resident memory of `pid` and the processes below it, summed (shared pages counted in each), in MiB;
    a process that has just ended counts for nothing."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, AssertionError):  # gone, or a zombie (no VmRSS)
            total += rss_mb(member)
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


PHOTO_CLASSES = {"apples": (220, 40, 30), "leaves": (40, 170, 50), "sky": (60, 120, 230)}
_PHOTO_FORMATS = (("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("GIF", ".gif"), ("TIFF", ".tif"),
                  ("BMP", ".bmp"), ("JPEG", ".jpeg"))  # fmt: skip
_PHOTO_SIZES = ((50, 40), (120, 90), (33, 77), (300, 200), (64, 64), (640, 480))


def photo(colour: tuple[int, int, int], index: int) -> tuple[bytes, str]:
    """A photo-like file of `colour` as a user's folder holds them: its bytes and suffix. The format, size and mode
    vary with `index` (JPEG, PNG, WebP, GIF, TIFF, BMP; 33x77 to 640x480; RGB, greyscale, RGBA)."""
    from tests.conftest import noisy_image

    fmt, suffix = _PHOTO_FORMATS[index % len(_PHOTO_FORMATS)]
    size = _PHOTO_SIZES[index % len(_PHOTO_SIZES)] if index % 9 else (640, 480)
    image = noisy_image(colour, size, seed=index * 7 + colour[0])
    if index % 5 == 1:
        image = image.convert("L")
    elif index % 5 == 3 and fmt in {"PNG", "WEBP", "TIFF"}:
        image = image.convert("RGBA")
    return encode(image, fmt), suffix


def make_photo_folder(root: Path, per_class: int = 61) -> Path:
    """A user's folder of photos, with what real folders hold besides: ROOT/<class>/ of mixed formats, sizes and
    modes, one corrupt JPEG, a notebook's hidden checkpoint folder, an empty class folder, a .heic file and a
    text file (neither of which the service decodes), and a hidden .DS_Store."""
    for name, colour in PHOTO_CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            data, suffix = photo(colour, index)
            (folder / f"IMG_{index:04d}{suffix}").write_bytes(data)
    (root / "apples" / "IMG_9999.jpg").write_bytes(b"\xff\xd8\xff\xe0 a photo cut short by a failed copy")
    (root / "apples" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "leaves" / "IMG_5000.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (root / "sky" / "notes.txt").write_text("taken at noon\n")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "IMG_0000.png").write_bytes(photo((0, 0, 0), 0)[0])
    (root / "empty").mkdir()
    return root


# ---- Worst-case uploads and the shipped memory settings -----------------------------------------------------------

SIDE = 5000
"""The side of the worst-case images: large single-colour images are small files that decode to hundreds of MB."""


def gif_dispose_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """37 bytes: a 1x1 GIF whose first frame declares itself `width` x `height`, with a transparent colour and
    disposal to background. Pillow fills the frame's disposal area while opening it (4 GB for 65535x65535), before
    any check of the decoded size, unless its own decompression-bomb check stops it."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    graphic_control = b"\x21\xf9\x04\x09\x00\x00\x00\x00"  # disposal 2 (background), transparency on
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return header + graphic_control + frame + b";"


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
        "dispose.gif": gif_dispose_bomb(),
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


# ---- Files that are cheap to send and costly to read: Pillow parses them in Python ---------------------------------


def jpeg_of_empty_markers(count: int) -> bytes:
    """A small JPEG with `count` empty APP1 segments before its image data (4 bytes each)."""
    photo_bytes = encode(Image.new("RGB", (16, 16), (200, 100, 50)), "JPEG")
    return photo_bytes[:2] + b"\xff\xe1\x00\x02" * count + photo_bytes[2:]


def png_of_private_chunks(count: int) -> bytes:
    """A small PNG with `count` empty private chunks after its image data (12 bytes each)."""
    photo_bytes = encode(Image.new("RGB", (16, 16), (200, 100, 50)), "PNG")
    end = photo_bytes.rindex(b"IEND") - 4
    chunk = struct.pack(">I", 0) + b"prIv" + struct.pack(">I", zlib.crc32(b"prIv"))
    return photo_bytes[:end] + chunk * count + photo_bytes[end:]


def bmp_rle8_row(width: int) -> bytes:
    """A 1 KB RLE8 BMP of `width` x 1: one pixel, then an end of line that Pillow pads in Python, pixel by pixel."""
    palette = b"\x00\x00\x00\x00" * 256
    data = b"\x01\x05\x00\x00\x00\x01"  # one pixel of colour 5, end of line, end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, 1, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data

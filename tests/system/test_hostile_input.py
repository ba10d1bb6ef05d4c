"""Hostile and malformed requests through the real HTTP stack (uvicorn on loopback): each gets its documented
status and a JSON error naming the problem, and the next good request still succeeds."""

import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode, noisy_image
from tests.helpers import image_files, png_declaring, running_server

RED = (230, 30, 30)
LIMITS = {
    "max_images_per_request": "4",
    "max_image_bytes": "100000",
    "max_body_bytes": "300000",
    "request_timeout_s": "2",
}


@pytest.fixture(scope="module")
def server(bundled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(bundled_model, tmp_path_factory.mktemp("hostile") / "server.log", **LIMITS) as url:
        yield url


def files(*parts: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": image_files(*parts)}


def raw_multipart(filename: bytes, data: bytes) -> dict[str, Any]:
    """A hand-made body, so the file name can hold bytes no client library would send."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="' + filename + b'"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n"
    )
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=b"}}


def photo(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    return noisy_image(RED, size, seed=seed)


def png_with_bad_crc() -> bytes:
    data = bytearray(encode(photo(), "PNG"))
    data[29] ^= 0xFF
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 0, 255), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo((60, 20)), "JPEG", exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    return encode(Image.fromarray(np.linspace(0, 65535, 1024).astype(np.uint16).reshape(32, 32)), "PNG")


def png_chunk_bomb() -> bytes:
    """Valid header of 1x1, then a zlib stream that inflates to far more than 1 pixel needs."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    idat_start = data.index(b"IDAT") - 4
    huge = zlib.compress(b"\x00" * 5_000_000, 9)
    chunk = struct.pack(">I", len(huge)) + b"IDAT" + huge
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + huge))
    length = struct.unpack(">I", data[idat_start : idat_start + 4])[0]
    return bytes(data[:idat_start]) + chunk + bytes(data[idat_start + 12 + length :])


def trickle() -> Iterator[bytes]:
    """A valid multipart start, then a byte every 0.25 s, for longer than the server's request timeout."""
    yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="slow.png"\r\n\r\n'
    for _ in range(24):
        time.sleep(0.25)
        yield b"x"


Case = tuple[str, Callable[[], dict[str, Any]], int, str | None, str]
BIG_PART = bytes(90_000)
CASES: list[Case] = [
    # (id, request kwargs, status, error code or None for success, text the answer must contain)
    ("empty-body", lambda: {"content": b"", "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
     422, "invalid_request", "files"),
    ("wrong-content-type", lambda: {"content": b'{"files": []}', "headers": {"Content-Type": "application/json"}},
     422, "invalid_request", "files"),
    ("missing-field", lambda: {"files": [("image", ("a.png", encode(photo(), "PNG"), "image/png"))]},
     422, "invalid_request", "files"),
    ("zero-byte-file", lambda: files(("zero.png", b"")), 422, "empty_file", "zero.png"),
    ("random-bytes", lambda: files(("noise.jpg", np.random.default_rng(1).bytes(5000))), 415, "invalid_image",
     "noise.jpg"),
    ("truncated-png", lambda: files(("cut.png", encode(photo((200, 200)), "PNG")[:3000])), 415, "invalid_image",
     "cut.png"),
    ("truncated-jpeg", lambda: files(("cut.jpg", encode(photo((200, 200)), "JPEG")[:1500])), 415, "invalid_image",
     "cut.jpg"),
    ("png-bad-crc", lambda: files(("crc.png", png_with_bad_crc())), 415, "invalid_image", "crc.png"),
    ("decompression-bomb", lambda: files(("bomb.png", png_declaring(30000, 30000))), 413, "image_too_large",
     "30000x30000"),
    ("png-zlib-bomb", lambda: files(("zbomb.png", png_chunk_bomb())), 200, None, "zbomb.png"),
    ("animated-gif", lambda: files(("anim.gif", animated_gif())), 200, None, "anim.gif"),
    ("16-bit-png", lambda: files(("deep.png", sixteen_bit_png())), 200, None, "deep.png"),
    ("cmyk-jpeg", lambda: files(("cmyk.jpg", encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"))),
     200, None, "cmyk.jpg"),
    ("exif-rotated-jpeg", lambda: files(("turned.jpg", exif_rotated_jpeg())), 200, None, "turned.jpg"),
    ("svg-named-png", lambda: files(("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg"/>')), 415,
     "invalid_image", "vector.png"),
    ("text-named-png", lambda: files(("notes.png", b"just some text\n")), 415, "invalid_image", "notes.png"),
    ("too-many-files", lambda: files(*[(f"{i}.png", encode(photo(), "PNG")) for i in range(5)]), 413,
     "too_many_images", "limit is 4"),
    ("file-over-byte-limit", lambda: files(("big.bmp", encode(photo((200, 200)), "BMP"))), 413, "file_too_large",
     "big.bmp"),
    ("body-over-total-limit", lambda: files(*[(f"{i}.bin", BIG_PART) for i in range(4)]), 413, "body_too_large",
     "300000 bytes"),
    ("filename-path-separators", lambda: files(("../../etc/passwd", encode(photo(), "PNG"))), 200, None,
     '"filename":"passwd"'),
    ("filename-control-characters", lambda: raw_multipart(b"bad\x07\x1bname.png", encode(photo(), "PNG")), 200,
     None, '"filename":"badname.png"'),
    ("filename-not-utf8", lambda: raw_multipart(b"\xff\xfe\x80img.png", encode(photo(), "PNG")), 200, None,
     'img.png"'),
    ("slow-trickled-upload", lambda: {"content": trickle(), "headers": {
        "Content-Type": "multipart/form-data; boundary=b"}}, 504, "timeout", "longer than 2 s"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "status", "error", "mention"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_gets_its_status_and_the_server_keeps_serving(
    server: str, make: Callable[[], dict[str, Any]], status: int, error: str | None, mention: str
) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        response = client.post("/predict", **make())
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert mention in response.text
        if error is not None:
            assert response.json()["error"] == error
            assert response.json()["detail"]
        else:
            assert len(response.json()["predictions"]) == 1
        follow_up = client.post("/predict", **files(("good.png", encode(photo(seed=9), "PNG"))))
        assert follow_up.status_code == 200, follow_up.text

"""Decoding and preprocessing of every supported format and mode, and the client errors for bad files."""

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from service.errors import EmptyFile, ImageTooLarge, InvalidImage
from service.imaging import (
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_RLE_PIXELS,
    decode_image,
    jpeg_scans,
    open_image,
)
from tests.conftest import encode, noisy_image
from tests.helpers import bmp_rle8_row, jpeg_of_empty_markers, png_declaring, png_of_private_chunks

SIZE = (32, 32)
RED = (230, 30, 30)


def decode(data: bytes, size: tuple[int, int] = SIZE, max_pixels: int = 10_000_000) -> np.ndarray:
    return decode_image(data, filename="upload", size=size, max_pixels=max_pixels)


def assert_colour(array: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> None:
    mean = array.reshape(-1, 3).mean(axis=0)
    assert np.all(np.abs(mean - np.asarray(colour)) <= tolerance), f"mean colour {mean} is not {colour}"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
@pytest.mark.parametrize("size", [(32, 32), (7, 5), (640, 480)])
def test_every_format_and_size_becomes_model_input(fmt: str, size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, RED)
    options = {"quality": 95} if fmt in {"JPEG", "WEBP"} else {}
    array = decode(encode(image, fmt, **options))
    assert array.shape == (32, 32, 3)
    assert array.dtype == np.uint8
    assert_colour(array, RED)


def test_non_square_model_input_size_is_height_then_width() -> None:
    array = decode(encode(Image.new("RGB", (100, 100), RED), "PNG"), size=(24, 40))
    assert array.shape == (24, 40, 3)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
        ("P", None, RED),
        ("RGB", RED, RED),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("I", 16448, (64, 64, 64)),
    ],
)
def test_every_mode_becomes_rgb(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    image = Image.new("RGB", (16, 16), RED).convert("P") if mode == "P" else Image.new(mode, (16, 16), value)
    fmt = {"CMYK": "JPEG", "I;16": "PNG", "I": "TIFF"}.get(mode, "PNG")
    data = encode(image, fmt, quality=100) if fmt == "JPEG" else encode(image, fmt)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode.startswith(mode[0]), f"fixture saved as {reopened.mode}, wanted {mode}"
    assert_colour(decode(data), expected, tolerance=3)


def test_sixteen_bit_png_scales_down_rather_than_clipping() -> None:
    ramp = np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)
    array = decode(encode(Image.fromarray(ramp), "PNG"))
    assert array[0, 0, 0] == 0
    assert array[-1, -1, 0] == 255
    assert 100 < array[16, 0, 0] < 160


@pytest.mark.parametrize(
    "image",
    [Image.new("RGBA", (16, 16), (255, 0, 0, 0)), Image.new("LA", (16, 16), (0, 0))],
    ids=["RGBA", "LA"],
)
def test_transparency_is_composited_over_white(image: Image.Image) -> None:
    assert_colour(decode(encode(image, "PNG")), (255, 255, 255), tolerance=1)


def test_palette_transparency_is_composited_over_white() -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0] * 256)
    assert_colour(decode(encode(image, "PNG", transparency=0)), (255, 255, 255), tolerance=1)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_colour(decode(data), RED, tolerance=15)


def test_exif_orientation_is_honoured() -> None:
    # Stored: left half red, right half blue. Orientation 6 means "rotate 90 degrees clockwise to display",
    # which puts the left half on top.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = RED
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    array = decode(data)
    assert_colour(array[:12], RED, tolerance=20)
    assert_colour(array[-12:], (0, 0, 255), tolerance=20)


def test_large_jpeg_is_decoded_at_reduced_scale_and_still_correct() -> None:
    array = decode(encode(Image.new("RGB", (4000, 3000), RED), "JPEG", quality=90), max_pixels=12_000_000)
    assert array.shape == (32, 32, 3)
    assert_colour(array, RED)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="30000x30000"):
        decode(png_declaring(30000, 30000))


def test_pixel_limit_is_the_configured_one() -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    decode(data, max_pixels=10_000)
    with pytest.raises(ImageTooLarge, match="limit is 9999"):
        decode(data, max_pixels=9_999)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyFile),
        (b"hello, I am plain text pretending to be a PNG", InvalidImage),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), InvalidImage),
        (encode(noisy_image(RED, (64, 64)), "PNG")[:2000], InvalidImage),
        (encode(Image.new("RGB", (256, 256), RED), "JPEG")[:300], InvalidImage),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', InvalidImage),
    ],
    ids=["empty", "text", "random-bytes", "truncated-png", "truncated-jpeg", "svg"],
)
def test_bad_files_raise_client_errors_naming_the_file(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error, match="'upload'"):
        decode(data)


def test_png_with_bad_crc_is_invalid() -> None:
    data = bytearray(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    with pytest.raises(InvalidImage):
        decode(bytes(data))


CORRUPT = Path(__file__).resolve().parent.parent / "data" / "corrupt"


@pytest.mark.parametrize("path", sorted(CORRUPT.iterdir()), ids=lambda path: path.name)
def test_files_that_crashed_pillow_give_an_image_or_a_client_error(path: Path) -> None:
    """Found by benchmarks/fuzz_decode.py: Pillow raised TypeError and struct.error on them (then a 500)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            array = decode(path.read_bytes())
        except InvalidImage as error:
            assert "'upload'" in str(error)
            return
    assert array.shape == (*SIZE, 3)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX", "DDS", "QOI"])
def test_formats_pillow_reads_but_clients_do_not_send_are_refused(fmt: str) -> None:
    with pytest.raises(InvalidImage, match="not an image in a format this service accepts"):
        decode(encode(noisy_image(RED, (16, 16)), fmt))


def test_any_exception_from_the_parser_is_a_client_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import PngImagePlugin

    def broken(self: object) -> None:
        raise NotImplementedError("a decoder path nobody wrote")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with pytest.raises(InvalidImage, match="'upload' could not be decoded: a decoder path nobody wrote"):
        decode(encode(noisy_image(RED), "PNG"))


@pytest.mark.parametrize(
    ("mode", "fmt", "options"),
    [
        ("RGBA", "PNG", {}),
        ("I;16", "PNG", {}),
        ("RGB", "WEBP", {"lossless": True}),
        ("CMYK", "JPEG", {"progressive": True}),
    ],
)
def test_decode_memory_is_estimated_from_the_header_and_refused_over_the_limit(
    mode: str, fmt: str, options: dict[str, object]
) -> None:
    data = encode(Image.new(mode, (3000, 3000)), fmt, **options)
    opened = open_image(data, filename="big", size=SIZE, max_pixels=10**8, max_decode_bytes=2**40)
    assert opened.decode_bytes > 3000 * 3000  # at least a byte per pixel, before a pixel was decoded
    with pytest.raises(ImageTooLarge, match=r"'big' \(.* 3000x3000\) would take up to \d+ MiB to decode"):
        open_image(data, filename="big", size=SIZE, max_pixels=10**8, max_decode_bytes=opened.decode_bytes - 1)


def test_a_baseline_jpeg_is_estimated_at_its_reduced_decoding_scale() -> None:
    data = encode(Image.new("RGB", (4000, 3000), RED), "JPEG")
    progressive = encode(Image.new("RGB", (4000, 3000), RED), "JPEG", progressive=True)
    small = open_image(data, filename="a", size=SIZE, max_pixels=10**8, max_decode_bytes=2**40).decode_bytes
    large = open_image(progressive, filename="b", size=SIZE, max_pixels=10**8, max_decode_bytes=2**40).decode_bytes
    assert small < 4 * 2**20 < 50 * 2**20 < large  # a progressive JPEG keeps every coefficient while decoding


def test_a_large_image_is_shrunk_before_conversion_and_keeps_its_colours() -> None:
    image = Image.new("RGBA", (2000, 1000), (0, 0, 255, 0))  # transparent blue: white once composited
    image.paste((*RED, 255), (0, 0, 1000, 1000))
    array = decode(encode(image, "PNG"))
    assert_colour(array[:, :14], RED)
    assert_colour(array[:, 18:], (255, 255, 255))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_text_chunks(count: int, text: str) -> bytes:
    """A 1x1 PNG whose header carries `count` compressed international text (iTXt) chunks of `text`."""
    base = encode(Image.new("L", (1, 1)), "PNG")
    payload = zlib.compress(text.encode(), 9)
    chunks = b"".join(png_chunk(b"iTXt", b"k%d\0\1\0\0\0" % index + payload) for index in range(count))
    return base[:33] + chunks + base[33:]  # after the signature and IHDR


def test_png_text_chunks_are_bounded_while_the_header_is_read() -> None:
    """255 chunks of 256k four-byte characters: a 266 KB file that Pillow's own bound lets take 256 MiB."""
    with pytest.raises(InvalidImage, match="Too much memory used in text chunks"):
        decode(png_with_text_chunks(255, "\U0001f600" * (1 << 18)))
    assert decode(png_with_text_chunks(3, "a caption")).shape == (*SIZE, 3)  # ordinary text is fine


def tiff_with_strips(strips: int) -> bytes:
    """An uncompressed 1-pixel-wide greyscale TIFF of `strips` one-row strips, every offset a single byte."""
    entries = [  # tag, type (3 SHORT, 4 LONG, 1 BYTE), count, value
        (256, 3, 1, 1), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 1, strips, None), (277, 3, 1, 1), (278, 4, 1, 1), (279, 1, strips, None),
    ]  # fmt: skip
    table_at = 8
    blobs_at = table_at + 2 + 12 * len(entries) + 4
    blobs = b""
    table = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if value is None:  # offsets (all at the pixel byte) and byte counts (all 1)
            table += struct.pack("<HHII", tag, kind, count, blobs_at + len(blobs))
            blobs += bytes([blobs_at - 1 if tag == 273 else 1]) * count
        else:
            table += struct.pack("<HHI", tag, kind, count) + struct.pack("<I" if kind == 4 else "<H", value).ljust(
                4, b"\0"
            )
    return b"II*\0" + struct.pack("<I", table_at) + table + b"\0\0\0\0" + blobs


def test_a_tiff_of_too_many_strips_is_refused_before_pillow_reads_them() -> None:
    with pytest.raises(InvalidImage, match=r"a TIFF tag \(273\) of 1000000 values; at most 65536"):
        decode(tiff_with_strips(1_000_000))


def test_a_thin_image_is_shrunk_too() -> None:
    """A 40 x 200000 RGBA PNG: both sides are shrunk by their own factor, so the conversion works on a small copy."""
    image = Image.new("RGBA", (40, 200_000), (*RED, 255))
    array = decode(encode(image, "PNG"))
    assert_colour(array, RED, tolerance=1)


def tiff_directory(entries: list[tuple[int, int, int, int]]) -> bytes:
    """A classic little-endian TIFF whose first directory holds `entries` (tag, type, count, value)."""
    table = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries)
    return b"II*\0" + struct.pack("<I", 8) + table + b"\0\0\0\0"


def test_a_tiff_cannot_hide_its_strip_count_behind_thousands_of_tags() -> None:
    padding = [(65000, 1, 1, 0)] * 5000
    with pytest.raises(InvalidImage, match="a TIFF directory of 5001 tags; at most 4096"):
        decode(tiff_directory([*padding, (273, 1, 9_000_000, 0)]))


def test_a_tiff_exif_directory_of_a_million_numbers_is_refused() -> None:
    exif_at = 8 + 2 + 12 + 4
    exif = struct.pack("<H", 1) + struct.pack("<HHII", 33434, 5, 1_200_000, 0) + b"\0\0\0\0"  # ExposureTime
    data = tiff_directory([(34665, 4, 1, exif_at)]) + exif
    with pytest.raises(InvalidImage, match=r"a TIFF tag \(33434\) of 1200000 values"):
        decode(data)


def test_a_jpeg_header_longer_than_the_window_is_refused_without_reading_it_all() -> None:
    photo = encode(noisy_image(RED, (64, 64)), "JPEG")
    markers = (b"\xff\xe5\xff\xff" + bytes(65533)) * 50  # 50 full APP5 segments: 3.2 MB before the image data
    with pytest.raises(InvalidImage, match="no image data within its first 2097152 bytes"):
        decode(photo[:2] + markers + photo[2:])


def test_a_jpeg_header_of_millions_of_markers_is_refused_by_their_count() -> None:
    photo = encode(noisy_image(RED, (64, 64)), "JPEG")
    markers = b"\xff\xe5\x00\x02" * 700_000  # empty APP5 segments: 2.8 MB before the image data
    with pytest.raises(InvalidImage, match="more than 1024 marker segments"):
        decode(photo[:2] + markers + photo[2:])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_files_larger_than_the_header_window_still_decode(fmt: str) -> None:
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (1500, 1500, 3), dtype=np.uint8))
    data = encode(noise if fmt != "GIF" else noise.convert("P"), fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    assert len(data) > 2 * 1024 * 1024
    assert decode(data, max_pixels=10**8).shape == (*SIZE, 3)


def repeated_scans(copies: int) -> bytes:
    """A progressive JPEG whose last scan is repeated `copies` more times: each repeat is tiny, and each costs the
    decoder a pass over the whole image."""
    data = encode(noisy_image((90, 120, 200), (64, 64)), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    scan = data[last_scan:-2]  # up to the end-of-image marker
    return data[:-2] + scan * copies + data[-2:]


def test_a_jpeg_of_many_scans_is_refused_before_decoding() -> None:
    assert jpeg_scans(repeated_scans(0), MAX_JPEG_SCANS) == 10  # libjpeg's progressive script
    assert decode_image(repeated_scans(80), filename="ok.jpg", size=(32, 32), max_pixels=10**6).shape == (32, 32, 3)
    with pytest.raises(InvalidImage, match=f"more than {MAX_JPEG_SCANS} scans"):
        open_image(repeated_scans(200), filename="scans.jpg", size=(32, 32), max_pixels=10**6, max_decode_bytes=2**30)


def test_scans_inside_an_exif_thumbnail_or_icc_profile_are_not_counted() -> None:
    image = noisy_image((90, 120, 200), (64, 64))
    noise = b"\xff\xda" * 30_000  # a profile full of start-of-scan bytes, skipped by its segment lengths
    data = encode(image, "JPEG", progressive=True, icc_profile=noise)
    assert data.count(b"\xff\xda") > 1000
    assert jpeg_scans(data, MAX_JPEG_SCANS) == 10


# ---- GIF frames declared larger than the limit: found as Pillow finds them -------------------------------------

GIF_HEADER = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
GRAPHIC_CONTROL = b"\x21\xf9\x04\x09\x00\x00\x00\x00"  # disposal to background, transparency on


def gif_frame(width: int, height: int, left: int = 0, top: int = 0) -> bytes:
    return b"," + struct.pack("<HHHHB", left, top, width, height, 0) + b"\x02\x02\x4c\x01\x00"


@pytest.mark.parametrize(
    "data",
    [
        GIF_HEADER + GRAPHIC_CONTROL + gif_frame(65535, 65535) + b";",
        GIF_HEADER + GRAPHIC_CONTROL + b"\x00" + gif_frame(20000, 20000) + b";",  # a byte Pillow skips
        GIF_HEADER + b"\x00" + GRAPHIC_CONTROL + gif_frame(20000, 20000) + b";",
        b"GIF87a" + GIF_HEADER[6:] + GRAPHIC_CONTROL + b"B" + gif_frame(20000, 20000) + b";",
        GIF_HEADER + GRAPHIC_CONTROL + gif_frame(1, 1, left=65534, top=65534) + b";",  # the extent grows the image
        GIF_HEADER + b"\x21\xf9\x00\x03abc\x00" + GRAPHIC_CONTROL + gif_frame(20000, 20000) + b";",  # Pillow's quirk
    ],
    ids=["37-bytes", "junk-before-frame", "junk-after-header", "gif87a-junk", "offset-frame", "empty-extension"],
)
def test_a_gif_frame_over_the_limit_is_refused_before_pillow_fills_it(data: bytes) -> None:
    with pytest.raises(ImageTooLarge, match="GIF whose first frame"):
        open_image(data, filename="f.gif", size=(32, 32), max_pixels=36_000_000, max_decode_bytes=2**30)


_SEGMENTS = st.sampled_from(
    [
        b"\x00", b"B", b"\xff", GRAPHIC_CONTROL, b"\x21\xfe\x03abc\x02de\x00", b"\x21\xf9\x00", b"\x21\xfe\x00",
        b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00", b"\x21\xff\x00\x02\x2c\x2c\x00", b"\x02\x2c\x2c",
        gif_frame(3000, 3000), gif_frame(2, 2), gif_frame(1, 1, left=3000, top=3000), b";",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_SEGMENTS, max_size=8))
def test_the_gif_walk_finds_the_frame_pillow_finds(segments: list[bytes]) -> None:
    """Whatever the blocks before it, a frame Pillow would fill beyond the limit is refused first: with Pillow's
    own limit set just above ours, Pillow never reaches one that our walk let through."""
    data = GIF_HEADER + b"".join(segments) + gif_frame(2, 2) + b";"
    limit = 1_000_000
    try:
        open_image(data, filename="f.gif", size=(32, 32), max_pixels=limit, max_decode_bytes=2**30)
    except ImageTooLarge as refusal:
        if "GIF whose first frame" in str(refusal):
            return  # refused before Pillow opened it; any other refusal came after Pillow's fill
    except InvalidImage:
        pass
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit // 2  # Pillow refuses above twice this
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data)).close()
    except Image.DecompressionBombError as error:
        raise AssertionError(f"Pillow reached a frame our walk missed: {data!r}") from error
    except Exception:
        pass  # Pillow refuses the file for another reason
    finally:
        Image.MAX_IMAGE_PIXELS = previous


# ---- Files that cost more CPU to read than their size says: refused before Pillow's Python parsers run ----------


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (jpeg_of_empty_markers(500_000), InvalidImage),  # 2 MB: 3.6 s of CPU in Pillow before
        (png_of_private_chunks(800_000), InvalidImage),  # 9 MB: 3.9 s and +113 MB before
        (bmp_rle8_row(36_000_000), ImageTooLarge),  # 1 KB: 4 s before
    ],
    ids=["jpeg-empty-markers", "png-private-chunks", "bmp-rle-row"],
)
def test_a_file_pillow_would_parse_for_seconds_is_refused_at_once(data: bytes, refusal: type[Exception]) -> None:
    started = time.process_time()
    with pytest.raises(refusal):
        decode_image(data, filename="f", size=(32, 32), max_pixels=36_000_000)
    print(f"\nrefused after {1000 * (time.process_time() - started):.1f} ms of CPU")


@pytest.mark.parametrize(
    "data",
    [jpeg_of_empty_markers(MAX_JPEG_SEGMENTS - 20), png_of_private_chunks(1000), bmp_rle8_row(MAX_RLE_PIXELS)],
    ids=["jpeg", "png", "bmp"],
)
def test_the_same_files_within_the_limits_still_decode(data: bytes) -> None:
    assert decode_image(data, filename="f", size=(32, 32), max_pixels=36_000_000).shape == (32, 32, 3)


def _rle_bmp(width: int, height: int, codes: bytes) -> bytes:
    palette = b"\x00\x00\x00\x00" * 256
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(codes), 2835, 2835, 256, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(codes), 0, 0, offset) + info + palette + codes


_JPEG = encode(noisy_image(RED, (64, 64)), "JPEG")
_APP0 = b"\xff\xe0\x00\x02"
_GIF = encode(Image.new("P", (8, 8)), "GIF")
_FRAME = _GIF.index(b",")


@pytest.mark.parametrize(
    "data",
    [
        _JPEG[:2] + _APP0 + b"\x00" + _APP0 * 450_000 + _JPEG[2:],  # a stray byte Pillow skips, then the flood
        _JPEG[:2] + _APP0 + b"\x00" * 1_900_000 + _JPEG[2:],  # stray bytes, skipped one Python step at a time
        _rle_bmp(2, 1, b"\x00\x00" * 5_000_000),  # 10 MB of end-of-line codes that draw nothing
        _rle_bmp(2, 1, b"\x00\x02\x00\x00" * 2_500_000),  # moves of zero
        _GIF[:_FRAME] + b"\x21\xfe" + b"\x01a" * 1_000_000 + b"\x00" + _GIF[_FRAME:],  # a comment of 1M blocks
    ],
    ids=["jpeg-stray-byte-then-markers", "jpeg-stray-bytes", "bmp-rle-end-of-lines", "bmp-rle-zero-moves",
         "gif-comment-blocks"],
)  # fmt: skip
def test_files_of_costly_structure_found_by_a_review_are_refused_at_once(data: bytes) -> None:
    started = time.process_time()
    with pytest.raises((InvalidImage, ImageTooLarge)):
        decode_image(data, filename="f", size=(32, 32), max_pixels=36_000_000)
    assert time.process_time() - started < 0.5  # Pillow took 1.4-3.2 s of CPU on each


def test_a_stray_byte_before_the_first_scan_does_not_hide_the_scans() -> None:
    progressive = encode(noisy_image(RED, (256, 256)), "JPEG", progressive=True)
    last = progressive.rindex(b"\xff\xda")
    repeated = progressive[:-2] + progressive[last:-2] * 300 + progressive[-2:]
    first = repeated.index(b"\xff\xda")
    with_stray = repeated[:first] + b"\x00" + repeated[first:]
    assert jpeg_scans(with_stray, MAX_JPEG_SCANS) > MAX_JPEG_SCANS

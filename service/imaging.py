"""Image decoding and preprocessing: an uploaded image file becomes the model's uint8 RGB input.

Two steps, so that memory is bounded by design: `open_image` reads only the header and estimates, from width,
height, mode and format, the most memory the decode can take (checked against a limit before a pixel is
decoded); `decode` then decodes and converts it. Large images are shrunk by whole factors right after decoding,
so conversions run on small copies. `Decoder` runs both on its own threads, within a memory budget shared by all
the decodes in progress.

Training (`training.data`) uses the same functions for folders of images, so a picture is prepared the same
way whether it is trained on or served.
"""

import asyncio
import contextlib
import io
import re
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from service.budget import MemoryBudget
from service.decoder_processes import DecoderProcess, start_forkserver
from service.errors import EmptyFile, ImageTooLarge, InvalidImage

T = TypeVar("T")

RESAMPLING_FILTER = Image.Resampling.BICUBIC
"""Pillow's bicubic filter; Pillow widens it when shrinking, so downscaling is antialiased."""

ALPHA_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited over white before the alpha channel is dropped."""

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""The formats clients send (JPEG includes MPO, the multi-picture JPEG many cameras write). Pillow reads dozens
more, each a parser an attacker could aim at; they are refused as not an image."""

_CHEAP_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP"})  # see CheckedImage.cheap


def configure_pillow() -> None:
    """Pillow's process-wide settings as these functions need them; the service (in its lifespan and in each
    decoder process) and training call it at start, before decoding anything."""
    # Every caller passes its own `max_pixels`, checked right after the header is read; Pillow's process-wide
    # limit would otherwise refuse large images first, with a message that hides the configured limit.
    Image.MAX_IMAGE_PIXELS = None
    # PNG text chunks are read with the header; Pillow's bound (64 MB of characters, up to 4 bytes each) is far
    # more than any real image carries. ICC profiles (iCCP) keep Pillow's 1 MB chunk limit.
    PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024


_HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})

# Bytes Pillow stores per pixel: one for single-byte modes, two for 16-bit, four for everything else (RGB is
# stored as RGBX).
_STORED_BYTES = MappingProxyType({"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2})
# Peak memory of the whole decode as a multiple of the decoded image, measured per mode and format over 6000x6000
# worst cases (tests/service/test_imaging_memory.py checks these bounds against the process's peak RSS).
_MODE_FACTOR = MappingProxyType(
    {"P": 5.5, "PA": 9.5, "I;16": 3.3, "I;16L": 3.3, "I;16B": 3.3, "I;16N": 3.3, "1": 3.0, "L": 2.5}
)
_DEFAULT_FACTOR = 2.2
_FORMAT_FACTOR = MappingProxyType({"WEBP": 4.5})  # libwebp decodes into its own RGBA buffer, which Pillow then copies
# A progressive JPEG keeps every DCT coefficient of the full-size image (2 bytes each) while decoding, whatever
# the draft scale; a baseline one streams.
_PROGRESSIVE_JPEG_BYTES_PER_SAMPLE = 2.2
_FIXED_OVERHEAD = 1 << 20


@dataclass
class CheckedImage:
    """An upload whose header was read and checked against the limits: what `decode` needs, and what decoding it
    will cost. Nothing of the parsed header is kept meanwhile (only the file), so a request waiting for memory
    holds no more than its body."""

    content: bytes
    filename: str
    decode_bytes: int
    """The most memory decoding it may take, in bytes (an upper bound, from the header)."""
    pixels: int
    """Pixels it decodes to (a JPEG's at its reduced scale)."""
    cheap: bool
    """Its decoding work grows with its pixels only, in C: not a TIFF (strips), a progressive JPEG (scans), nor a
    BMP (whose RLE decoder is Python), which a small file can make cost many times more."""


def open_image(
    data: bytes, *, filename: str, size: tuple[int, int], max_pixels: int, max_decode_bytes: int
) -> CheckedImage:
    """Read the header of `data` and check it against the limits, without decoding a pixel; errors name
    `filename`. Parses hostile bytes: its time grows with the file's size.

    `size` = (height, width) is the model's input: a JPEG is set to decode at the smallest DCT scale still at
    least that large, and the estimate counts that scale."""
    with _checked(data, filename, size, max_pixels, max_decode_bytes, header_only=True) as (_, checked):
        return checked


def decode_small(
    data: bytes, *, filename: str, size: tuple[int, int], max_pixels: int, max_decode_bytes: int, max_now: int
) -> np.ndarray | CheckedImage:
    """`open_image`, then, if the image is cheap and has at most `max_now` pixels, its decoded array at once,
    from the same parse of its header; else the checked image, to decode later."""
    with _checked(data, filename, size, max_pixels, max_decode_bytes) as (image, checked):
        if checked.cheap and checked.pixels <= max_now:
            return _convert(image, size, filename)
        return checked


@contextlib.contextmanager
def _checked(data: bytes, filename: str, size: tuple[int, int], max_pixels: int, max_decode_bytes: int,
             header_only: bool = False) -> Iterator[tuple[Image.Image, CheckedImage]]:  # fmt: skip
    """The opened image (its header read) and what the check found; raises a client error over a limit."""
    if not data:
        raise EmptyFile(f"{filename!r} is empty (0 bytes)")
    _check_gif_frame(data, filename, max_pixels)
    try:
        image = _open(data, header_only=header_only)
    except UnidentifiedImageError as error:
        formats = ", ".join(ACCEPTED_FORMATS)
        raise InvalidImage(f"{filename!r} is not an image in a format this service accepts ({formats})") from error
    except Exception as error:  # any fault of a parser on hostile bytes is the file's, never the server's
        raise InvalidImage(f"{filename!r} could not be read: {_describe(error)}") from error
    with image:
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise ImageTooLarge(
                f"{filename!r} is {image.width}x{image.height} = {pixels} pixels; the limit is {max_pixels}"
            )
        if isinstance(image, ImageFile.ImageFile) and image.tile and image.tile[0].codec_name == "bmp_rle":
            if pixels > MAX_RLE_PIXELS:
                raise ImageTooLarge(
                    f"{filename!r} is a run-length encoded BMP of {pixels} pixels; at most {MAX_RLE_PIXELS} are "
                    "accepted (it decodes in Python, a step per pixel): send it uncompressed, or as PNG"
                )
            if len(data) > 2 * pixels + 65536:  # its codes can do no work beyond this (codes that draw nothing)
                raise InvalidImage(f"{filename!r} is a run-length encoded BMP of more codes than its pixels need")
        declared = (image.width, image.height)
        try:
            image.draft("RGB", (max(size), max(size)))
            # Decoding reads from a copy of the file's bytes, and some decoders (WebP's) make one more.
            estimate = decode_bytes(image, declared) + 2 * len(data)
        except Exception as error:
            raise InvalidImage(f"{filename!r} could not be read: {_describe(error)}") from error
        if estimate > max_decode_bytes:
            raise ImageTooLarge(
                f"{filename!r} ({image.format} {image.mode} {declared[0]}x{declared[1]}) would take up to "
                f"{estimate / 2**20:.0f} MiB to decode; the limit is {max_decode_bytes / 2**20:.0f} MiB"
            )
        if image.format in {"JPEG", "MPO"} and jpeg_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
            raise InvalidImage(
                f"{filename!r} is a JPEG of more than {MAX_JPEG_SCANS} scans, the most accepted (each scan of a "
                "progressive JPEG is a pass over the whole image)"
            )
        cheap = image.format in _CHEAP_FORMATS and not image.info.get("progressive")
        yield image, CheckedImage(data, filename, estimate, image.width * image.height, cheap)


MAX_JPEG_SCANS = 100
"""Most scans a JPEG may have (all its frames together, for an MPO). libjpeg's and mozjpeg's progressive scripts
write about ten; each scan, even one of 60 bytes, makes the decoder pass over every block of the full-size image
(22 ms at 36 megapixels), so a 90 KB file of 1,500 repeated scans held a decoding thread for 34 s."""

# A marker after a scan's entropy-coded data: 0xFF then anything but a stuffed zero, a restart marker or fill.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_scans(data: bytes, limit: int) -> int:
    """The number of scans in a JPEG's marker structure (counting stops past `limit`). Segments are skipped by
    their lengths, so an EXIF thumbnail's scan is not counted; a structure it cannot follow ends the count (the
    decoder then judges the file)."""
    scans, position = 0, 2  # after the start-of-image marker
    while position + 4 <= len(data) and scans <= limit:
        if data[position] != 0xFF:  # a stray byte, which the decoder skips too
            position = data.find(b"\xff", position)
            if position < 0:
                break
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker == 0xD9:  # end of image: an MPO's next picture follows
            position = data.find(b"\xff\xd8", position + 2)
            if position < 0:
                break
            position += 2
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
        else:
            end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
            if marker != 0xDA:
                position = end
                continue
            scans += 1
            following = _MARKER_AFTER_SCAN.search(data, end)
            if following is None:
                break
            position = following.start()
    return scans


HEADER_WINDOW = 2 * 1024 * 1024
"""Most bytes a JPEG, PNG or GIF header (everything before the image data: EXIF, ICC profile, text, comments) may
take. Pillow keeps an object for each marker, chunk or extension it reads there, so without this a 10 MB file of
millions of empty markers takes seconds and hundreds of MB before a pixel is decoded."""

_WINDOWED_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8")  # JPEG (and MPO), PNG, GIF


def _open(content: bytes, *, header_only: bool = False) -> Image.Image:
    """Pillow's lazy open (the header only), of the accepted formats, after our own checks of what Pillow would
    otherwise parse without a bound. With `header_only`, a JPEG, PNG or GIF is opened from its first
    HEADER_WINDOW bytes only (enough for the header; not for decoding)."""
    _check_tiff_directories(content)
    _check_jpeg_segments(content)
    _check_png_chunks(content)
    if header_only and len(content) > HEADER_WINDOW and content.startswith(_WINDOWED_MAGIC):
        try:
            return Image.open(io.BytesIO(content[:HEADER_WINDOW]), formats=ACCEPTED_FORMATS)
        except Exception as error:  # the magic says JPEG, PNG or GIF: the header is too long, or corrupt
            raise ValueError(
                f"no image data within its first {HEADER_WINDOW} bytes (a header that long is refused), or corrupt"
            ) from error
    return Image.open(io.BytesIO(content), formats=ACCEPTED_FORMATS)


MAX_GIF_BLOCKS = 16_384
"""Most extension sub-blocks a GIF may have before its first frame (an XMP packet of 100 KB is 400)."""


def _check_gif_frame(content: bytes, filename: str, max_pixels: int) -> None:
    """Refuse a GIF whose first frame declares more than `max_pixels`, before Pillow opens it: Pillow fills a
    frame's disposal area while opening (a 37-byte file declaring a 65535x65535 frame took 4 GB), and only its own
    process-wide limit, which the service leaves to `max_pixels`, would stop it.

    Walks the blocks exactly as Pillow's GIF reader does (GifImageFile._seek), quirks included: a byte that starts
    no block is skipped, and after an extension whose first sub-block is empty one more run of sub-blocks is read;
    any other walk would find another frame than Pillow does."""
    if not content.startswith(b"GIF8") or len(content) < 13:
        return
    screen_width, screen_height = struct.unpack_from("<HH", content, 6)
    position = 13
    if content[10] & 0x80:  # a global colour table follows the logical screen descriptor
        position += 3 << ((content[10] & 0x07) + 1)

    walked = 0

    def sub_block(at: int) -> tuple[bytes | None, int]:  # Pillow's GifImageFile.data()
        nonlocal walked
        walked += 1
        if walked > MAX_GIF_BLOCKS:  # Pillow keeps each of a comment's (1M of them: 1.4 s and 126 MB)
            raise InvalidImage(f"{filename!r} is a GIF of more than {MAX_GIF_BLOCKS} blocks before its first frame")
        if at < len(content) and content[at]:
            return content[at + 1 : at + 1 + content[at]], at + 1 + content[at]
        return None, at + 1

    while position < len(content):
        kind = content[position]
        position += 1
        if kind == 0x3B:  # the trailer: no frame
            return
        if kind == 0x21:  # an extension: its label, then sub-blocks
            if position >= len(content):
                return
            label = content[position]
            block, position = sub_block(position + 1)
            if label == 0xFE:  # a comment: its sub-blocks up to the first empty one
                while block:
                    block, position = sub_block(position)
                continue
            if label == 0xFF and block is not None and block.startswith(b"NETSCAPE2.0"):
                block, position = sub_block(position)
            while True:
                block, position = sub_block(position)
                if not block:
                    break
        elif kind == 0x2C:  # the first frame's image descriptor
            if position + 8 > len(content):
                return
            left, top, width, height = struct.unpack_from("<HHHH", content, position)
            extent = max(left + width, screen_width) * max(top + height, screen_height)
            if max(width * height, extent) > max_pixels:
                raise ImageTooLarge(
                    f"{filename!r} is a GIF whose first frame is {width}x{height} at ({left}, {top}) in a "
                    f"{screen_width}x{screen_height} screen; the limit is {max_pixels} pixels"
                )
            return


MAX_JPEG_SEGMENTS = 1024
"""Most marker segments a JPEG may have before its first scan. Pillow reads each in Python (a 2 MB file of empty
APP markers took 3.6 s of CPU, twice per upload: header check and decode); real files have a few dozen (EXIF, ICC
profile in 64 KB pieces, tables)."""


MAX_JPEG_JUNK_BYTES = 4096
"""Most bytes between a JPEG's segments that are not a marker: Pillow skips them one Python step at a time."""


def _check_jpeg_segments(content: bytes) -> None:
    """Refuse a JPEG with more than MAX_JPEG_SEGMENTS segments, or MAX_JPEG_JUNK_BYTES stray bytes, before its first
    scan: walked as Pillow's JPEG reader walks it (stray bytes and FF00 skipped, FFFF a fill byte)."""
    if not content.startswith(b"\xff\xd8"):
        return
    segments = junk = 0
    position = 2
    while position + 1 < len(content):
        if content[position] != 0xFF:  # Pillow skips a stray byte
            junk += 1
            position += 1
        else:
            marker = content[position + 1]
            if marker == 0xDA:  # the first scan: Pillow's part ends here
                return
            if marker in (0xFF, 0x00):  # a fill byte; a stuffed zero Pillow skips
                junk += marker == 0x00
                position += 1 if marker == 0xFF else 2
            else:
                segments += 1
                standalone = marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7  # markers without a length
                position += 2 if standalone else 2 + int.from_bytes(content[position + 2 : position + 4], "big")
        if segments > MAX_JPEG_SEGMENTS:
            raise ValueError(f"more than {MAX_JPEG_SEGMENTS} marker segments before the image data")
        if junk > MAX_JPEG_JUNK_BYTES:
            raise ValueError(f"more than {MAX_JPEG_JUNK_BYTES} stray bytes between its marker segments")


MAX_PNG_CHUNKS = 16_384
"""Most chunks a PNG may have. Pillow reads each in Python and keeps every private one (10 MiB of empty private
chunks after the image data: 3.9 s of CPU and +113 MB); a 10 MiB PNG written in 8 KiB IDAT chunks has 1,300."""


def _check_png_chunks(content: bytes) -> None:
    """Refuse a PNG of more than MAX_PNG_CHUNKS chunks, counted from their lengths (the walk stops at the limit)."""
    if not content.startswith(b"\x89PNG\r\n\x1a\n"):
        return
    position = 8
    for _ in range(MAX_PNG_CHUNKS):
        if position + 8 > len(content) or content[position + 4 : position + 8] == b"IEND":
            return
        position += 12 + int.from_bytes(content[position : position + 4], "big")
    if position + 8 <= len(content):
        raise ValueError(f"more than {MAX_PNG_CHUNKS} chunks")


MAX_RLE_PIXELS = 1024 * 1024
"""Most pixels of a run-length encoded BMP: Pillow decodes those in Python, a step per pixel in the worst case (a
1 KB RLE8 file of 36,000,000 x 1 pixels took 4 s of CPU; 640x480 0.12 s, 2048x2048 0.8 s). Real ones are icons and
scans of old software, up to 1024x768. The decoder process's CPU limit bounds it too; this refuses the cheap
amplification at once."""


MAX_TIFF_VALUES = 65_536
"""Most strips or tiles a TIFF may have, and most numbers any one tag may hold: Pillow builds an object for each
when it reads the header (a 1 MB file of one-byte strip offsets took 300 MB and seconds). A 36-megapixel image in
8 KB strips has about 13,000."""

MAX_TIFF_ENTRIES = 4096
"""Most tags one TIFF directory may have (real files have a few dozen)."""

_TIFF_BLOCK_TAGS = frozenset({273, 324})  # StripOffsets, TileOffsets: one Pillow object per value, whatever their type
_TIFF_SUB_DIRECTORIES = frozenset({34665, 34853})  # Exif and GPS, which Pillow reads when it finishes loading
_TIFF_BYTES_TYPES = frozenset({1, 2, 6, 7})  # BYTE, ASCII, SBYTE, UNDEFINED: kept as bytes, not one object per value


def _check_tiff_directories(content: bytes) -> None:
    """Refuse a TIFF (classic or BigTIFF) whose first directory, or its Exif or GPS directory, has more than
    MAX_TIFF_ENTRIES tags, more than MAX_TIFF_VALUES strips or tiles, or a tag of more than MAX_TIFF_VALUES
    numbers: from the counts alone, before Pillow reads them."""
    order = {b"II": "<", b"MM": ">"}.get(content[:2])
    if order is None or len(content) < 16:
        return
    version = struct.unpack_from(order + "H", content, 2)[0]
    if version == 42:  # classic: 4-byte offsets, 2-byte entry count, 12-byte entries
        layout = ("I", "H", 12, "HHI")
        first = struct.unpack_from(order + "I", content, 4)[0]
    elif version == 43:  # BigTIFF: 8-byte offsets, 8-byte entry count, 20-byte entries
        layout = ("Q", "Q", 20, "HHQ")
        first = struct.unpack_from(order + "Q", content, 8)[0]
    else:
        return
    offset_format, count_format, entry_size, entry_format = layout
    pending, seen = [first], set()
    while pending:
        directory = pending.pop()
        if directory in seen or directory + struct.calcsize(count_format) > len(content):
            continue  # Pillow reports a directory outside the file
        seen.add(directory)
        entries = struct.unpack_from(order + count_format, content, directory)[0]
        if entries > MAX_TIFF_ENTRIES:
            raise ValueError(f"a TIFF directory of {entries} tags; at most {MAX_TIFF_ENTRIES} are accepted")
        start = directory + struct.calcsize(count_format)
        for index in range(min(entries, (len(content) - start) // entry_size)):
            position = start + index * entry_size
            tag, kind, count = struct.unpack_from(order + entry_format, content, position)
            if count > MAX_TIFF_VALUES and (tag in _TIFF_BLOCK_TAGS or kind not in _TIFF_BYTES_TYPES):
                raise ValueError(f"a TIFF tag ({tag}) of {count} values; at most {MAX_TIFF_VALUES} are accepted")
            if tag in _TIFF_SUB_DIRECTORIES and len(seen) < 4:
                value_at = position + entry_size - struct.calcsize(offset_format)
                pending.append(struct.unpack_from(order + offset_format, content, value_at)[0])


def decode_bytes(image: Image.Image, declared: tuple[int, int]) -> int:
    """An upper bound of the memory that decoding and converting `image` takes, from its header alone.

    `image.size` is the size it will decode at (a JPEG's draft scale); `declared` the size in its header."""
    width, height = image.size
    decoded = width * height * _STORED_BYTES.get(image.mode, 4)
    factor = max(_MODE_FACTOR.get(image.mode, _DEFAULT_FACTOR), _FORMAT_FACTOR.get(image.format or "", 0))
    total = decoded * factor + _FIXED_OVERHEAD
    if image.format in {"JPEG", "MPO"} and image.info.get("progressive"):
        total += declared[0] * declared[1] * len(image.getbands()) * _PROGRESSIVE_JPEG_BYTES_PER_SAMPLE
    return int(total)


def decode(checked: CheckedImage, size: tuple[int, int]) -> np.ndarray:
    """Decode a checked image into a `size` = (height, width) RGB uint8 array, or raise InvalidImage."""
    try:
        image = _open(checked.content)
        image.draft("RGB", (max(size), max(size)))
    except Exception as error:  # it was read once already: only a decoder's fault on hostile bytes lands here
        raise InvalidImage(f"{checked.filename!r} could not be decoded: {_describe(error)}") from error
    with image:
        return _convert(image, size, checked.filename)


def _convert(image: Image.Image, size: tuple[int, int], filename: str) -> np.ndarray:
    """Decode an opened image (its draft set) into a `size` = (height, width) RGB uint8 array."""
    height, width = size
    try:
        image.load()
        # Read before shrinking: the shrunk copy has no EXIF. A damaged EXIF block is the file's fault too.
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        image = _shrink(image, (width, height))
        rgb = _to_rgb(image)
        rgb = _orient(rgb, orientation)
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), RESAMPLING_FILTER)
        return np.asarray(rgb, dtype=np.uint8)
    except Exception as error:  # truncated or corrupt data, or a decoder's fault on hostile bytes
        raise InvalidImage(f"{filename!r} could not be decoded: {_describe(error)}") from error


def decode_image(
    data: bytes, *, filename: str, size: tuple[int, int], max_pixels: int, max_decode_bytes: int | None = None
) -> np.ndarray:
    """`open_image` then `decode`: `data` as a `size` = (height, width) RGB uint8 array, or a client error."""
    checked = open_image(
        data, filename=filename, size=size, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes or 2**63
    )
    return decode(checked, size)


EXIF_ORIENTATION = 0x0112
# The transposition that puts each EXIF orientation upright (as ImageOps.exif_transpose does).
_UPRIGHT = MappingProxyType(
    {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }
)


def _orient(image: Image.Image, orientation: object) -> Image.Image:
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _shrink(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Reduce by the largest whole factor that keeps the image at least `target` (box filter: antialiased), so
    that conversions and the final resize work on a small copy. Palette and 16-bit modes are converted first."""
    # Each side by its own factor (a thin image shrinks too); either side may end up the width after EXIF orientation.
    factors = (max(1, image.width // max(target)), max(1, image.height // max(target)))
    if factors == (1, 1):
        return image
    if image.mode == "P":
        image = _palette_to_rgb(image)
    elif image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode in _HIGH_BIT_DEPTH_MODES:
        image = _eight_bit(image)
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode in {"RGBA", "LA"}:
        # Premultiplied, so fully transparent pixels do not bleed their colour into the average.
        return image.convert(image.mode[:-1] + "a").reduce(factors).convert(image.mode)
    return image.reduce(factors)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image scaled down to 8 bits (`>> 8`, not clipped)."""
    values = np.array(image)
    np.right_shift(values, 8, out=values)
    return Image.fromarray(values.astype(np.uint8), mode="L")


def _palette_to_rgb(image: Image.Image) -> Image.Image:
    """A palette image as RGB, transparent entries composited over white in the palette itself: the same pixels
    as converting through RGBA, without a full-size RGBA copy."""
    if "transparency" not in image.info:
        return image.convert("RGB")
    entries = Image.frombytes("P", (256, 1), bytes(range(256)))
    mode = image.palette.mode if image.palette is not None else "RGB"
    entries.putpalette(image.getpalette(mode) or [], mode)
    entries.info["transparency"] = image.info["transparency"]
    flattened = _to_rgb(entries.convert("RGBA"))
    image.info.pop("transparency")
    image.putpalette(flattened.tobytes(), "RGB")
    return image.convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: high bit depths scaled down, transparency composited over white."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        image = _eight_bit(image)
    if image.mode == "I":
        grey = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        grey = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P":
        return _palette_to_rgb(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


INLINE_FILE_BYTES = 8 * 1024
"""A request whose files come to at most this many bytes has its headers read on the event loop: parsing a header
takes time in proportion to the file's size (up to about 0.5 ms per KiB for a file made of empty markers, chunks or
blocks), and for small files less than handing it to a thread would."""

INLINE_PIXELS = 128 * 128
"""...and is decoded there too when it has at most this many pixels in all, of cheap images (well under a
millisecond of work). Anything larger is decoded on the decoding threads, in one hand-over per request."""


class Decoder:
    """Decodes the images of a request, within a memory budget for all decodes in progress at once.

    Small requests (see INLINE_FILE_BYTES and INLINE_PIXELS) are checked and decoded on the event loop, where a
    hand-over would cost more than the work; their memory is a few kilobytes, not worth reserving. Every other
    request goes to a decoder process (`service.decoder_processes`), one at a time each, so that its work can be
    stopped the moment the request ends, and has a CPU limit: the process reads the headers, the request reserves
    the estimated bytes (waiting for room while the budget has none), then the process decodes. The files' copy in
    the process is reserved from its hand-over to its end."""

    def __init__(self, *, memory_bytes: int, processes: int, cpu_seconds: float) -> None:
        self.budget = MemoryBudget(memory_bytes)
        context = start_forkserver()
        self._processes = [DecoderProcess(context, cpu_seconds) for _ in range(processes)]
        self._idle: asyncio.Queue[DecoderProcess] = asyncio.Queue()
        for process in self._processes:
            self._idle.put_nowait(process)
        # One thread per process, to wait on it without blocking the event loop.
        self._executor = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="decode")

    async def prepare(
        self, files: list[tuple[str, bytes]], *, size: tuple[int, int], max_pixels: int, max_decode_bytes: int
    ) -> np.ndarray:
        """The (name, bytes) files as one (N, height, width, 3) uint8 array, in order; a client error (415, 413,
        422) names the first bad one."""
        limits = {"size": size, "max_pixels": max_pixels, "max_decode_bytes": max_decode_bytes}
        if sum(len(data) for _, data in files) > INLINE_FILE_BYTES:
            return await self._in_process(files, limits)
        # Small files: headers read here, cheap small images decoded at once, the rest in a process.
        share = INLINE_PIXELS // len(files)
        results = [
            decode_small(data, filename=name, max_now=share, **limits)  # type: ignore[arg-type]  # the dict's values
            for name, data in files
        ]
        pending = [(result.filename, result.content) for result in results if isinstance(result, CheckedImage)]
        if pending:
            later = iter(await self._in_process(pending, limits))
            results = [next(later) if isinstance(result, CheckedImage) else result for result in results]
        return np.stack(results)  # type: ignore[arg-type]  # arrays only: every CheckedImage was replaced

    async def _in_process(self, files: list[tuple[str, bytes]], limits: dict[str, Any]) -> np.ndarray:
        """Check then decode `files` in a decoder process: their copy there is reserved from the hand-over, their
        estimate (which counts the copy) from the end of the check."""
        copied = sum(len(data) for _, data in files)
        names = [name for name, _ in files]
        process = await self._idle.get()
        holds_files = False
        try:
            await self._reserve(copied, "the request's files")
            reserved = copied
            try:
                estimates = await self._in_thread(lambda stop: process.check(files, limits, stop))
                holds_files = True
                self._check_fits(names, estimates)
                total = max(sum(estimates), copied)
                if not self.budget.try_acquire(total - copied):
                    # Wait holding nothing, so that two requests waiting for more cannot hold each other up; the
                    # process keeps the files meanwhile (at most one body per process).
                    self.budget.release(reserved)
                    reserved = 0
                    await self.budget.acquire(total)
                reserved = total
                holds_files = False  # whatever the decode's outcome, the process lets go of them
                return await self._in_thread(lambda stop: process.decode(limits["size"], stop))
            finally:
                self.budget.release(reserved)
        finally:
            if holds_files:  # checked but not decoded (refused, or ended while waiting for room): drop its copy
                process.kill()
            self._idle.put_nowait(process)

    async def _reserve(self, size: int, what: str) -> None:
        if size > self.budget.capacity:
            raise ImageTooLarge(
                f"{what} need {size / 2**20:.0f} MiB to decode; the limit for one request is "
                f"{self.budget.capacity / 2**20:.0f} MiB: send them in several requests"
            )
        await self.budget.acquire(size)

    async def _in_thread(self, work: Callable[[threading.Event], T]) -> T:
        """`work(stop)` on a thread that waits on a process; `stop` is set if this request ends first, and this
        returns only once the thread has finished (its process killed: within POLL_S), so that what the request
        reserved is given back only when nothing uses it."""
        stop = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(self._executor, work, stop)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            # Until the thread is done, even through another cancel (a timeout and a client gone at once): the
            # process and the reservation must not be handed on while it still uses them.
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.shield(future)
            raise

    def _check_fits(self, names: list[str], estimates: list[int]) -> None:
        """ImageTooLarge if the request's images could never fit the budget together."""
        total = sum(estimates)
        if total > self.budget.capacity:
            largest = max(range(len(names)), key=lambda index: estimates[index])
            raise ImageTooLarge(
                f"the request's {len(names)} images would take up to {total / 2**20:.0f} MiB to decode "
                f"({names[largest]!r} alone {estimates[largest] / 2**20:.0f} MiB); the limit for one request "
                f"is {self.budget.capacity / 2**20:.0f} MiB: send them in several requests"
            )

    def close(self) -> None:
        """Kill the decoder processes (their requests are over) and stop the threads."""
        for process in self._processes:
            with contextlib.suppress(Exception):
                process.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)

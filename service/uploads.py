"""Reading /predict's multipart/form-data body: the uploaded files, in memory, checked against the limits while the
body streams in. No FastAPI here: it is fed the body's chunks.

python-multipart's parser does the parsing (the same parser Starlette uses); what it does not do is spool each
file to a temporary file, hop to a thread per write, or wait for the whole body before refusing a request with
too many or too large files. The body's bytes are already counted against the memory budget for bodies
(`service.limits.BodyBudget`), so keeping the files in memory is bounded.
"""

import asyncio
import codecs
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import FileTooLarge, InvalidRequest, MalformedBody, TooManyImages

FIELD = "files"
"""The form field that carries the images; repeat it for several."""

MAX_OTHER_FIELDS = 16
"""Parts of other names are ignored, up to this many: each costs the parser's time, so not without end."""

MAX_FILENAME_CHARS = 255

INLINE_BODY_BYTES = 16 * 1024
"""The first bytes of a body are parsed on the event loop; the rest on a thread, chunk by chunk. The parser
steps through some inputs a byte at a time (padding after a boundary, near-matches of it: 2.7-6 MiB/s instead of
about 1 GiB/s), so a large crafted body would otherwise hold the event loop for seconds; on a thread it holds
only that thread, and the loop keeps answering (Python hands the lock between them every few milliseconds). At
16 KiB a crafted body holds the loop for at most about 6 ms (64 KiB: 20 ms, which four clients turned into a
93 ms /health p50); a small image's whole request still parses inline."""

_CHARSETS = frozenset({"utf-8", "ascii", "iso8859-1"})
"""The form charsets names are decoded in (Python's codec names); any other is read as Latin-1. A charset is the
client's choice, and some codecs cost far more than these (punycode: 8 ms for a 4 KB name)."""

MAX_FILENAME_BYTES = 4 * MAX_FILENAME_CHARS
"""A file name is cut to this many bytes before it is decoded (it is cut to MAX_FILENAME_CHARS after)."""

_REQUIRED = f"{FIELD}: one or more image files are required, as multipart/form-data parts named {FIELD!r}"


@dataclass
class Upload:
    """One uploaded file: its name (safe to echo and log) and its bytes."""

    filename: str
    data: bytes


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    content: bytes = b""


class _FormReader:
    """python-multipart's callbacks: collects the `files` parts, refusing as soon as a limit is passed."""

    def __init__(self, *, charset: str, max_files: int, max_file_bytes: int) -> None:
        self.charset = charset
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.files: list[_Part] = []
        self.others = 0
        self.ended = False
        self.part = _Part()
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.disposition = b""

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]  # the parser bounds each part's headers (8 of at most 4 KiB)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.part.name = _decode(options.get(b"name", b""), self.charset)
        if self.part.name != FIELD:
            self.others += 1
            if self.others > MAX_OTHER_FIELDS:
                raise InvalidRequest(f"the form has more than {MAX_OTHER_FIELDS} parts besides {FIELD!r}")
            return
        if b"filename" not in options:
            raise InvalidRequest(f"{FIELD}: expected an uploaded file, got a plain form field")
        self.files.append(self.part)
        if len(self.files) > self.max_files:
            raise TooManyImages(f"more than {self.max_files} files in one request; the limit is {self.max_files}")
        raw_name = options[b"filename"][:MAX_FILENAME_BYTES]
        self.part.filename = client_filename(_decode(raw_name, self.charset), len(self.files) - 1)

    def on_end(self) -> None:
        self.ended = True

    def on_part_end(self) -> None:
        if self.part.filename is not None:  # to bytes now, so that at most one file is held twice at a time
            self.part.content = bytes(self.part.data)
            self.part.data = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.filename is None:
            return  # another field's value: not kept
        self.part.data += data[start:end]
        if len(self.part.data) > self.max_file_bytes:
            raise FileTooLarge(
                f"{self.part.filename!r} is over {len(self.part.data)} bytes; the limit is {self.max_file_bytes}"
            )


async def read_uploads(
    content_type: str | None, chunks: AsyncIterator[bytes], *, max_files: int, max_file_bytes: int
) -> list[Upload]:
    """The files of a multipart/form-data body, in upload order; client errors name what was wrong."""
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise InvalidRequest(f"{_REQUIRED}; the body is {content_type or 'not declared'}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest(f"{_REQUIRED}; the Content-Type has no boundary")
    charset = _charset(options.get(b"charset", b"utf-8").decode("latin-1"))
    reader = _FormReader(charset=charset, max_files=max_files, max_file_bytes=max_file_bytes)
    callbacks = {
        "on_part_begin": reader.on_part_begin,
        "on_part_data": reader.on_part_data,
        "on_part_end": reader.on_part_end,
        "on_header_field": reader.on_header_field,
        "on_header_value": reader.on_header_value,
        "on_header_end": reader.on_header_end,
        "on_headers_finished": reader.on_headers_finished,
        "on_end": reader.on_end,
    }
    received = 0
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]  # its TypedDict lists every callback
        async for chunk in chunks:
            received += len(chunk)
            if received <= INLINE_BODY_BYTES:
                parser.write(chunk)
            else:  # see INLINE_BODY_BYTES
                await asyncio.to_thread(parser.write, chunk)
        parser.finalize()
    except FormParserError as error:
        raise MalformedBody(f"the multipart body could not be parsed: {error}") from None
    if received and not reader.ended:
        raise MalformedBody("the multipart body ended before its closing boundary")
    if not reader.files:
        raise InvalidRequest(_REQUIRED)
    return [Upload(part.filename or "", part.content) for part in reader.files]


def _charset(declared: str) -> str:
    """The codec to decode names in: the declared charset if it is one of _CHARSETS, else Latin-1."""
    try:
        name = codecs.lookup(declared[:40]).name
    except LookupError:
        return "latin-1"
    return name if name in _CHARSETS else "latin-1"


def _decode(raw: bytes, charset: str) -> str:
    """A header value as text: in the form's charset (UTF-8 unless it says), else Latin-1, as Starlette does."""
    try:
        return raw.decode(charset)
    except Exception:  # an unknown or unusable charset (the client's), or bytes not in it
        return raw.decode("latin-1")


def client_filename(raw: str | None, index: int) -> str:
    """The upload's file name, safe to echo and log: its last path component, without control or unassigned
    characters, at most 255 characters; `file<index>` when nothing is left."""
    name = re.split(r"[/\\]", raw or "")[-1]
    name = "".join(char for char in name if not unicodedata.category(char).startswith("C"))
    return name.strip()[:MAX_FILENAME_CHARS] or f"file{index}"

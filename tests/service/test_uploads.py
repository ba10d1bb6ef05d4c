"""Reading /predict's multipart body: files in order, limits refused while the body streams, form mistakes named."""

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from service.error_responses import http_status
from service.errors import FileTooLarge, InvalidRequest, MalformedBody, ServiceError, TooManyImages
from service.uploads import MAX_OTHER_FIELDS, read_uploads

TYPE = "multipart/form-data; boundary=xyz"


def part(name: str, data: bytes, filename: str | None = "a.png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--xyz\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode() + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--xyz--\r\n"


async def chunks(pieces: Iterable[bytes], consumed: list[int] | None = None) -> AsyncIterator[bytes]:
    for piece in pieces:
        if consumed is not None:
            consumed.append(len(piece))
        yield piece


def read(content_type: str | None, pieces: Iterable[bytes], **limits: int) -> list[tuple[str, bytes]]:
    options = {"max_files": 4, "max_file_bytes": 1000} | limits
    uploads = asyncio.run(read_uploads(content_type, chunks(pieces), **options))
    return [(upload.filename, upload.data) for upload in uploads]


def test_files_come_back_in_upload_order_whatever_the_chunking() -> None:
    whole = body(part("files", b"first", "one.png"), part("other", b"ignored", None), part("files", b"2nd", "b.jpg"))
    for size in (1, 7, len(whole)):
        pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
        assert read(TYPE, pieces) == [("one.png", b"first"), ("b.jpg", b"2nd")]


def test_file_names_are_made_safe_to_echo() -> None:
    whole = body(
        part("files", b"x", "../../etc/passwd"), part("files", b"y", "bad\x07name.png"), part("files", b"z", "")
    )
    assert [name for name, _ in read(TYPE, [whole])] == ["passwd", "badname.png", "file2"]


def endless(first: bytes, then: bytes) -> Iterable[bytes]:
    yield first
    while True:
        yield then


def test_too_many_files_are_refused_before_the_rest_of_the_body_arrives() -> None:
    consumed: list[int] = []
    pieces = endless(b"", part("files", b"x", "a.png"))
    with pytest.raises(TooManyImages, match="limit is 4"):
        asyncio.run(read_uploads(TYPE, chunks(pieces, consumed), max_files=4, max_file_bytes=1000))
    assert len(consumed) == 6  # the empty first chunk, then the fifth file's part: the stream was left there


def test_a_file_over_its_limit_is_refused_while_it_streams_in() -> None:
    consumed: list[int] = []
    pieces = endless(part("files", b"", "big.png")[:-2], b"x" * 100)
    with pytest.raises(FileTooLarge, match=r"'big\.png'"):
        asyncio.run(read_uploads(TYPE, chunks(pieces, consumed), max_files=4, max_file_bytes=1000))
    assert len(consumed) == 12


@pytest.mark.parametrize(
    ("content_type", "pieces", "error", "mention"),
    [
        (None, [b""], InvalidRequest, "files"),
        ("application/json", [b'{"files": []}'], InvalidRequest, "application/json"),
        ("multipart/form-data", [b""], InvalidRequest, "boundary"),
        (TYPE, [b""], InvalidRequest, "files"),
        (TYPE, [body()], InvalidRequest, "files"),
        (TYPE, [body(part("image", b"x"))], InvalidRequest, "files"),
        (TYPE, [body(part("files", b"hello", None))], InvalidRequest, "plain form field"),
        (TYPE, [body(*[part(f"f{i}", b"x", None) for i in range(MAX_OTHER_FIELDS + 1)])], InvalidRequest, "parts"),
        (TYPE, [b"--xyz\r\nX-Long: " + b"a" * 5000 + b"\r\n\r\nx\r\n--xyz--\r\n"], MalformedBody,
         "header size"),
        (TYPE, [b"--xyz\r\nno colon here\r\n\r\n"], MalformedBody, "could not be parsed"),
        (TYPE, [part("files", b"cut short", "a.png")], MalformedBody, "before its closing boundary"),
    ],
    ids=["no-body", "json", "no-boundary", "empty", "no-parts", "other-field-only", "field-not-file",
         "too-many-other-fields", "huge-part-header", "malformed", "no-closing-boundary"],
)  # fmt: skip
def test_form_mistakes_are_client_errors_naming_what_was_wrong(
    content_type: str | None, pieces: list[bytes], error: type[ServiceError], mention: str
) -> None:
    with pytest.raises(error, match=mention) as raised:
        read(content_type, pieces)
    assert 400 <= http_status(raised.value) < 500


@pytest.mark.parametrize("charset", ["undefined", "rot13", "hex", "x" * 300, "punycode", "utf-16", "cp1252"])
def test_a_charset_other_than_utf_8_ascii_or_latin_1_is_read_as_latin_1(charset: str) -> None:
    """Other codecs are the client's choice of cost (punycode: 8 ms for a 4 KB name) and of surprises."""
    whole = body(part("files", b"data", "cafe.png"))
    assert read(f"{TYPE}; charset={charset}", [whole]) == [("cafe.png", b"data")]


@pytest.mark.parametrize("charset", [None, "utf-8", "UTF8"])
def test_names_are_utf_8_by_default(charset: str | None) -> None:
    content_type = TYPE if charset is None else f"{TYPE}; charset={charset}"
    whole = body(part("files", b"data", "caf\u00e9.png"))
    assert read(content_type, [whole]) == [("caf\u00e9.png", b"data")]


def test_a_long_file_name_is_cut_before_it_is_decoded() -> None:
    whole = body(part("files", b"data", "a" * 4000 + ".png"))  # python-multipart caps a header at 8 KiB
    assert read(TYPE, [whole]) == [("a" * 255, b"data")]


def test_a_large_body_is_parsed_alike_past_the_part_read_on_the_event_loop() -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: most of it parsed on a thread
    whole = body(part("files", b"small", "a.png"), part("files", big, "big.bin"), part("files", b"last", "z.png"))
    pieces = [whole[i : i + 65536] for i in range(0, len(whole), 65536)]
    assert read(TYPE, pieces, max_file_bytes=len(big)) == [("a.png", b"small"), ("big.bin", big), ("z.png", b"last")]

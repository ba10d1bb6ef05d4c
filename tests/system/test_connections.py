"""What one connection can make the server hold, through the real server, beside issue 23's table
(test_attack_table.py): a head of many fields or a long URL, a malformed or never-ending head, a client that does
not read a large answer, trailers, an h2c upgrade: each is cut off or answered in JSON, costs the server little
memory, and does not hold up a normal request meanwhile."""

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import encode, noisy_image, read_response
from tests.helpers import image_files, metric, rss_mb, running_server_process, wait_for

LIMITS = {"head_timeout_s": "2", "write_timeout_s": "2", "max_connections": "200"}
PREDICT = image_files(("cat.png", encode(noisy_image((200, 120, 60)), "PNG")))


@pytest.fixture(scope="module")
def server(bundled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    log = tmp_path_factory.mktemp("connections") / "server.log"
    with running_server_process(bundled_model, log, **LIMITS) as (url, process):
        yield url, process.pid


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def exchange(url: str, request: bytes) -> bytes:
    """Send `request` in one write on a new connection; everything the server sends until it closes it."""
    with connect(url) as connection:
        connection.sendall(request)
        return read_all(connection)


def during(attack: Callable[[], object], url: str) -> tuple[object, float]:
    """Run `attack` on a thread; once it has had a moment, time a normal /predict. Returns the attack's result
    and the normal request's seconds."""
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(attack()))
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    answer = httpx.post(f"{url}/predict", files=PREDICT, timeout=10)
    normal_s = time.monotonic() - started
    thread.join(timeout=60)
    assert answer.status_code == 200, answer.text
    return outcome[0], normal_s


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % index for index in range(5000)) + b"\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["5000-headers", "100-KB-url"],
)
def test_an_oversized_request_head_gets_431_without_being_buffered(server: tuple[str, int], head: bytes) -> None:
    url, pid = server
    before = rss_mb(pid)

    def send() -> bytes:
        with connect(url) as connection:
            with contextlib.suppress(OSError):  # closed by the server before the whole head was sent
                connection.sendall(head)
            return read_all(connection)

    reply, normal_s = during(send, url)
    print(f"\n{len(head)} bytes of head: {bytes(reply)[:60]!r}; RSS {before:.0f} -> {rss_mb(pid):.0f} MB")
    assert bytes(reply).startswith(b"HTTP/1.1 431 ") and b"application/json" in bytes(reply)
    assert rss_mb(pid) - before < 100
    assert normal_s < 1


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED_UPLOAD = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip


@pytest.mark.parametrize(
    ("head", "status", "error"),
    [
        (b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400, b"bad_request"),
        (b"NOT-HTTP\r\n\r\n", 400, b"bad_request"),
        # refused after the head, in the request's own body: answered all the same (it had been closed unanswered)
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400, b"bad_request"),
        (CHUNKED_UPLOAD + b"zz\r\nabc\r\n", 400, b"bad_request"),
    ],
    ids=["nul-in-header", "not-http", "unknown-transfer-coding", "bad-chunk-size"],
)
def test_a_malformed_request_gets_a_json_400(server: tuple[str, int], head: bytes, status: int, error: bytes) -> None:
    reply = exchange(server[0], head)
    assert reply.startswith(b"HTTP/1.1 %d " % status) and b'"error":"' + error + b'"' in reply


def send_trailers_over_the_limit(url: str) -> bytes:
    """A chunked upload whose trailers pass the limit once the app is waiting for its body; the reply."""
    with connect(url) as connection:
        connection.sendall(CHUNKED_UPLOAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += connection.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # the app is reading the body
        connection.sendall(b"0\r\nX-T: " + b"t" * 70_000 + b"\r\n")
        return read_all(connection)


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"request_head_too_large"),
        # padding the parser skips and never hands over
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad:" + b" " * 70_000 + b"a\r\n\r\n", b"request_head_too_large"),
        (b"\r\n" * 35_000 + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"request_head_too_large"),
        (b"GET" + b" " * 70_000 + b"/health HTTP/1.1\r\nHost: x\r\n\r\n", b"request_head_too_large"),
        (CHUNKED_UPLOAD + b"0\r\nX-T: " + b"t" * 70_000 + b"\r\n\r\n", b"request_trailers_too_large"),
    ],
    ids=["head", "head-padded-value", "blank-lines-first", "spaces-in-request-line", "trailers"],
)
def test_70_kb_of_head_or_trailers_in_one_write_is_over_the_64_kb_limit(
    server: tuple[str, int], request_: bytes, error: bytes
) -> None:
    # a whole request in one read had been parsed before its size was checked (and then it was complete): served
    reply = exchange(server[0], request_)
    assert reply.startswith(b"HTTP/1.1 431 ") and b'"error":"' + error + b'"' in reply, reply[:200]


def head_of(size: int) -> bytes:
    start = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Fill: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("write_size", [None, 1024], ids=["one-write", "1-KB-writes"])
def test_the_head_limit_is_64_kb_on_the_wire(server: tuple[str, int], write_size: int | None) -> None:
    def status(request: bytes) -> bytes:
        with connect(server[0]) as connection:
            with contextlib.suppress(OSError):  # closed by the server before the whole head was sent
                for start in range(0, len(request), write_size or len(request)):
                    connection.sendall(request[start : start + (write_size or len(request))])
            return read_all(connection)[:12]

    assert (status(head_of(65_536)), status(head_of(65_537))) == (b"HTTP/1.1 200", b"HTTP/1.1 431")


@pytest.mark.parametrize(
    ("fields", "statuses"), [(35, [b"200", b"431"]), (29, [b"200", b"200"])], ids=["70-KB", "58-KB"]
)
def test_a_head_pipelined_behind_another_request_is_held_to_the_limit(
    server: tuple[str, int], fields: int, statuses: list[bytes]
) -> None:
    # begun in the middle of a read, it is not counted whole on the wire: what the parser keeps of it is
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: " % n + b"a" * 2000 + b"\r\n" for n in range(fields)
    )
    reply = exchange(server[0], HEALTH + head + b"Connection: close\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", reply) == statuses, reply[-300:]


def test_headers_and_trailers_have_a_budget_each(server: tuple[str, int]) -> None:
    fields = b"".join(b"X-%02d: " % index + b"a" * 1000 + b"\r\n" for index in range(40))
    upload = CHUNKED_UPLOAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n" + fields + b"\r\n")
    reply = exchange(server[0], upload + b"0\r\n" + fields + b"\r\n")  # 40 KB of each: served (no file: 422)
    assert reply.startswith(b"HTTP/1.1 422 "), reply[:200]


def test_trailers_over_the_limit_are_answered_431_while_the_app_waits_for_the_body(server: tuple[str, int]) -> None:
    reply = send_trailers_over_the_limit(server[0])
    assert reply.startswith(b"HTTP/1.1 431 ") and b'"error":"request_trailers_too_large"' in reply, reply[:200]


@pytest.mark.parametrize(
    ("send", "status"),
    [(send_trailers_over_the_limit, "431"), (lambda url: exchange(url, CHUNKED_UPLOAD + b"zz\r\nabc\r\n"), "400")],
    ids=["trailers-over-the-limit", "bad-chunk-size"],
)
def test_metrics_count_the_answer_a_body_refused_by_the_connection_got(
    server: tuple[str, int], send: Callable[[str], bytes], status: str
) -> None:
    # the app saw its client leave; it had been counted as such (499, a refusal "client_disconnected")
    url = server[0]

    def counts() -> tuple[float, ...]:
        # once nothing is in flight but this scrape, every earlier request is counted
        wait_for(lambda: metric(url, "classifier_http_requests_in_flight") == 1, "earlier requests recorded")
        requests = "classifier_http_requests_total"
        return (
            metric(url, requests, route="/predict", method="POST", status=status),
            metric(url, requests, route="/predict", method="POST", status="499"),
            metric(url, "classifier_refusals_total", reason="client_disconnected"),
        )

    before = counts()
    assert send(url).startswith(f"HTTP/1.1 {status} ".encode())
    assert counts() == (before[0] + 1, before[1], before[2])


def test_a_request_answered_early_gets_no_second_answer_when_its_body_turns_out_bad(server: tuple[str, int]) -> None:
    with connect(server[0]) as connection:
        connection.sendall(b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        status, _ = read_response(connection)  # 404, answered before the body
        connection.sendall(b"zz\r\nabc\r\n")  # a bad chunk size: the connection is closed, with no answer
        assert (status, read_all(connection)) == (404, b"")


@pytest.mark.parametrize(
    ("requests", "answered", "error"),
    [
        (HEALTH + b"NOT-HTTP\r\n\r\n", 1, b"bad_request"),
        (HEALTH * 2 + b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 2, b"bad_request"),
        (HEALTH + CHUNKED_UPLOAD + b"zz\r\nabc\r\n", 1, b"bad_request"),  # refused in its body, while queued
        (HEALTH * 12, 9, b"too_many_pipelined_requests"),  # the one in progress and 8 queued (LIMITS: the default)
    ],
    ids=["malformed-head", "nul-in-header", "bad-chunk-size", "over-the-pipeline-limit"],
)
def test_requests_pipelined_before_a_refused_one_are_answered_first(
    server: tuple[str, int], requests: bytes, answered: int, error: bytes
) -> None:
    # they had been lost: the connection was closed at once, with no answer at all
    reply = exchange(server[0], requests)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert statuses == [b"200"] * answered + [b"400"], reply[-300:]
    assert b'"error":"' + error + b'"' in reply.rpartition(b"HTTP/1.1 400 ")[2]  # the last answer is the refusal


def test_a_request_head_that_never_ends_is_answered_408_and_closed(server: tuple[str, int]) -> None:
    with connect(server[0]) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\n")
        for _ in range(3):  # a byte now and then does not extend the head's time
            time.sleep(0.5)
            connection.sendall(b"X")
        reply = read_all(connection)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"request_head_timeout" in reply


def test_a_client_that_does_not_read_its_answers_is_disconnected(server: tuple[str, int]) -> None:
    url, pid = server
    before = rss_mb(pid)
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = url.removeprefix("http://").split(":")
    connection.connect((host, int(port)))
    # Eight pipelined requests for a 1.5 MB file, never read: more than the sockets' buffers hold.
    request = b"GET /static-offline-docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n"
    connection.sendall(request * 8)
    size = len(httpx.get(f"{url}/static-offline-docs/swagger-ui-bundle.js", timeout=30).content)
    with connection:
        time.sleep(4)  # the write timeout is 2 s
        connection.settimeout(30)
        received = read_all(connection)  # what was already in the sockets' buffers, then the end
    print(f"\na client not reading: {len(received)} of {8 * size} bytes, then disconnected; RSS {before:.0f} -> "
          f"{rss_mb(pid):.0f} MB")  # fmt: skip
    assert len(received) < 8 * size
    assert rss_mb(pid) - before < 100


def test_bytes_after_an_answer_count_as_the_next_head_and_are_timed(server: tuple[str, int]) -> None:
    """A bare CRLF after an answer had cancelled the keep-alive timer and left the connection open for good."""
    with connect(server[0]) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        connection.sendall(b"\r\n")
        received = read_all(connection)  # the answer, then the close at the head timeout (2 s here)
    assert received.startswith(b"HTTP/1.1 200 ")


def test_chunked_trailers_are_bounded_like_a_head(server: tuple[str, int]) -> None:
    """httptools buffers a trailer's value before reporting it: 100 MB of it had cost 180 MB and 15 s of CPU."""
    url, pid = server
    before = rss_mb(pid)
    with connect(url) as connection:
        connection.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
        with contextlib.suppress(OSError):
            for _ in range(100):
                connection.sendall(b"a" * 1_000_000)
        reply = read_all(connection)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
    assert rss_mb(pid) - before < 50


H2C_OFFER = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
CLOSING_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_an_h2c_upgrade_offer_is_declined_and_the_request_served_over_http_1_1(server: tuple[str, int]) -> None:
    reply = exchange(server[0], b"GET /health HTTP/1.1\r\nHost: x\r\n" + H2C_OFFER + b"\r\n" + CLOSING_HEALTH)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1 200 ") == 2, reply  # the connection lives on


def test_offers_to_upgrade_pipelined_in_one_write_are_each_served(server: tuple[str, int]) -> None:
    offer = b"GET /health HTTP/1.1\r\nHost: x\r\n" + H2C_OFFER + b"\r\n"
    reply = exchange(server[0], offer + offer + CLOSING_HEALTH)
    assert reply.count(b"HTTP/1.1 200 OK") == 3, reply


def test_an_offer_on_a_closing_request_is_answered_whatever_follows_it(server: tuple[str, int]) -> None:
    # As without the offer: the answer comes, and the bytes after a `Connection: close` request are ignored.
    closing_offer = H2C_OFFER.replace(b"HTTP2-Settings\r\n", b"HTTP2-Settings, close\r\n", 1)
    reply = exchange(server[0], b"GET /health HTTP/1.1\r\nHost: x\r\n" + closing_offer + b"\r\n" + CLOSING_HEALTH)
    assert reply.count(b"HTTP/1.1 200 OK") == 1, reply


def upload(framing: str) -> tuple[bytes, bytes]:
    """A /predict upload of one image: its framing and content headers, and its body (whole or in chunks)."""
    image = encode(noisy_image((200, 120, 60)), "PNG")
    form = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="cat.png"\r\nContent-Type: image/png'
            b"\r\n\r\n" + image + b"\r\n--b--\r\n")  # fmt: skip
    headers = b"Content-Type: multipart/form-data; boundary=b\r\n"
    if framing == "chunked":
        return headers + b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(form), form)
    return headers + b"Content-Length: %d\r\n" % len(form), form


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("writes", ["one-write", "head-then-body"])
def test_an_upload_that_offers_an_upgrade_keeps_its_body(server: tuple[str, int], framing: str, writes: str) -> None:
    """`curl --http2` on plain HTTP, and Java's HTTP clients, offer HTTP/2 on an HTTP/1.1 request (`Upgrade: h2c`).
    httptools ends such a request at its head; the upload had reached the app with an empty body (a 422)."""
    headers, body = upload(framing)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\n" + H2C_OFFER + headers + b"\r\n"
    with connect(server[0]) as connection:
        if writes == "one-write":
            connection.sendall(head + body + CLOSING_HEALTH)
        else:
            connection.sendall(head)
            time.sleep(0.2)
            connection.sendall(body + CLOSING_HEALTH)
        reply = read_all(connection)
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"filename":"cat.png"' in reply, reply[:400]
    assert reply.count(b"HTTP/1.1 200 OK") == 2, "the next request on the connection is served too"


def test_a_websocket_upgrade_is_declined_with_a_json_answer(server: tuple[str, int]) -> None:
    reply = exchange(
        server[0],
        b"GET /predict HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + CLOSING_HEALTH,
    )
    assert reply.startswith(b"HTTP/1.1 405 "), reply[:200]  # /predict is POST only, as for any GET
    assert b'{"error":"method_not_allowed"' in reply and b"HTTP/1.1 200 OK" in reply


def test_a_body_still_arriving_after_its_answer_is_not_taken_for_the_next_head(server: tuple[str, int]) -> None:
    """A request answered before its body was read (404 for an unknown model): the rest of the body, sent after the
    answer, is read as the body it is, and the connection serves the next request (it had been counted as a head
    and refused with 431)."""
    body = b'{"inputs": []}' + b" " * 300_000
    with connect(server[0]) as connection:
        connection.sendall(b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        status, answer = read_response(connection)  # the whole answer, before the body is sent
        assert (status, answer["code"]) == (404, "not_found"), answer
        connection.sendall(body + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = read_all(connection)
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:200]


def test_refusals_by_the_connection_are_counted_by_error(server: tuple[str, int]) -> None:
    url = server[0]

    def count(error: str) -> float:
        return metric(url, "classifier_connection_refusals_total", error=error)

    before = count("request_head_too_large"), count("bad_request")
    exchange(url, head_of(70_000))
    exchange(url, b"NOT-HTTP\r\n\r\n")
    assert (count("request_head_too_large"), count("bad_request")) == (before[0] + 1, before[1] + 1)


def test_a_head_begun_in_the_read_of_the_request_before_it_times_out_with_408(server: tuple[str, int]) -> None:
    # its bytes had not been counted: the connection was taken for idle and closed without a word at the timeout
    reply = exchange(server[0], HEALTH + b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", reply) == [b"200", b"408"], reply[-300:]

"""The command-line client pointed at a hostile server (a small HTTP server in the test, answering what no real
service would): every answer below is one error line per file, exit status 1, and bounded memory."""

import csv
import io
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO

SAMPLE = next((REPO / "tests" / "data" / "cifar10-sample" / "cat").glob("*.jpg"))


def gzip_bomb(size: int = 10**9) -> bytes:
    """About 1 MB of gzip that inflates to `size` bytes of spaces (made a megabyte at a time)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b" " * 2**20
    return b"".join(packer.compress(block) for _ in range(size // len(block))) + packer.flush()


GZIP_BOMB = gzip_bomb()


def prediction(label: object, probability: object) -> bytes:
    return (
        b'{"predictions": [{"filename": "x", "label": "a", "probability": 0.5, "top_k": [{"label": %s, '
        b'"probability": %s}]}]}' % (label, probability)
    )


ANSWERS: dict[str, tuple[dict[str, str], bytes]] = {
    "gzip-bomb": ({"Content-Encoding": "gzip"}, GZIP_BOMB),
    "gzip-bomb-under-the-raw-limit": ({"Content-Encoding": "gzip"}, gzip_bomb(50 * 2**20)),
    "nan": ({}, prediction(b'"cat"', b"NaN")),
    "infinity": ({}, prediction(b'"cat"', b"1e999")),
    "probability-as-text": ({}, prediction(b'"cat"', b'"0.9"')),
    "wrong-shape": ({}, b'{"predictions": [{"top_k": "cat"}]}'),
    "too-many-predictions": ({}, b'{"predictions": [{}, {}, {}]}'),
    "not-json": ({}, b"<html>hello</html>"),
    "deep-nesting": ({}, b"[" * 100_000 + b"]" * 100_000),
    "brotli": ({"Content-Encoding": "br"}, b"\x00" * 100),
}
HUGE = "one-gigabyte"  # streamed: 1 GB declared and sent until the client stops reading
# Never a whole answer, each write well within httpx's per-read timeout: "100 Continue" forever, or a body a byte
# at a time. Both stop after a minute or when the client has gone.
ENDLESS = {
    "endless-continue": b"HTTP/1.1 100 Continue\r\n\r\n",
    "trickle": b" ",
}


class Hostile(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        case = self.path.strip("/").split("/")[0]
        if case in ENDLESS:
            if case == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n")
            try:
                for _ in range(300):
                    self.wfile.write(ENDLESS[case])
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if case == HUGE:
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b" " * 1_000_000)
            except OSError:
                pass
            return
        headers, body = ANSWERS[case]
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# The client as `python -m service.client` runs it, printing its own peak memory (VmHWM) as it exits.
MEASURED_CLIENT = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('peak_kb', [line.split()[1] for line in open('/proc/self/status') "
    "if line.startswith('VmHWM')][0], file=sys.stderr)); "
    "sys.argv[0] = 'service.client'; runpy.run_module('service.client', run_name='__main__')"
)


def run_client(url: str, *args: str) -> tuple[int, str, str, float]:
    """The client in its own process: exit status, stdout, stderr and its peak memory in MB."""
    command = [sys.executable, "-c", MEASURED_CLIENT, url, str(SAMPLE), "--no-progress", "--retries", "0", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    peak_kb = int(result.stderr.rsplit("peak_kb ", 1)[1])
    return result.returncode, result.stdout, result.stderr, peak_kb / 1024


@pytest.mark.parametrize("case", [*ANSWERS, HUGE])
def test_each_hostile_answer_is_one_error_line_per_file_in_bounded_memory(hostile: str, case: str) -> None:
    status, out, err, peak_mb = run_client(f"{hostile}/{case}", "--format", "jsonl")
    print(f"\n{case}: {out.strip()[:160]} (the client's peak memory: {peak_mb:.0f} MB)")
    assert status == 1, err
    assert "Traceback" not in err
    (line,) = out.splitlines()
    assert '"error": ' in line and '"error": null' not in line
    assert peak_mb < 300


@pytest.mark.parametrize("case", ENDLESS)
def test_an_answer_that_never_ends_is_given_up_at_the_timeout(hostile: str, case: str) -> None:
    """httpx's timeouts are per read: without the client's own deadline, both had held it for the minute."""
    started = time.monotonic()
    status, out, err, _ = run_client(f"{hostile}/{case}", "--timeout", "2")
    elapsed = time.monotonic() - started
    print(f"\n{case}: exit {status} after {elapsed:.1f} s: {out.strip()[:160]}")
    assert status == 1, err
    assert "no whole answer within --timeout 2 s" in out
    assert elapsed < 30  # the deadline is 2 s; the rest is the client starting up on a busy machine


def test_labels_are_neutralised_in_every_format(hostile: str) -> None:
    """A label holding a terminal escape and a spreadsheet formula: shown as `?` in the table, escaped in CSV."""

    class Labels(Hostile):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = prediction(b'"=HYPERLINK(\\"http://x\\")\\u001b[2J"', b"0.9")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Labels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status, table, _, _ = run_client(url)
        _, rows, _, _ = run_client(url, "--format", "csv")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 0
    assert "\x1b" not in table and "=HYPERLINK" in table  # shown, but the escape is a `?`
    header, row = list(csv.reader(io.StringIO(rows)))
    assert header[1] == "label"
    assert row[1].startswith("'=HYPERLINK") and "\x1b" not in row[1]

"""Command-line client: classify image files, globs or whole folders against a running server.

    python -m service.client http://127.0.0.1:8000 photos/ 'more/*.png' --batch 8 --concurrency 4 --format csv

Each request carries `--batch` images; `--concurrency` requests are in flight at once. A 503 (overloaded, draining)
is retried after the server's Retry-After. The service fails a whole request for one bad file, so a request
refused for its contents (4xx) is retried one file at a time, and each bad file is reported with its own reason.
The exit status is 0 when every file was classified, 1 when any failed, 2 for a usage error.

The server's answers are not trusted: an answer is read up to a size limit, before and after decompression (a
gzip bomb costs no more than that), anything but a classifier's answer is an error of the files it was for, and
what is printed is neutralised (control characters in every format; spreadsheet formulas in CSV)."""

import argparse
import contextlib
import csv
import glob
import json
import math
import os
import re
import socket
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx2 as httpx
from tqdm import tqdm

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
"""What a folder is searched for (named files and globs are sent whatever their suffix)."""


@dataclass
class Result:
    """One file's outcome: its top labels, or why it failed."""

    path: str
    top_k: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return self.top_k[0]["label"] if self.top_k else ""

    @property
    def probability(self) -> float | None:
        return self.top_k[0]["probability"] if self.top_k else None


def find_files(arguments: list[str]) -> list[Path]:
    """Files, glob patterns and folders (searched recursively for images), in order, each file once."""
    found: dict[Path, None] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(argument):
            matches = sorted(Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file())
        else:
            matches = [path]
        found.update(dict.fromkeys(matches))
    return list(found)


RETRY_STATUSES = frozenset({503, 429})
"""Refusals to retry after the server's Retry-After: overloaded or draining, and rate limits in front of it."""

PER_FILE_STATUSES = frozenset({413, 415, 422})
"""Refusals of a request for one of its files (the service fails a whole request for one bad file): the request
is then retried file by file, so that each bad file gets its own reason and the rest are classified."""


class Unavailable(Exception):
    """The server could not be reached, or kept refusing, through every retry."""


class BadAnswer(Exception):
    """An answer too large, or not readable as the service's JSON."""


BAD_ANSWER = "bad_answer"

ANSWER_BYTES_FIXED = 64 * 1024
ANSWER_BYTES_PER_FILE = 16 * 1024
"""An answer may take at most FIXED + PER_FILE x files bytes, compressed or not: the service's is about 300 bytes
per file at --top-k 3."""


def read_answer(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed `response`, at most `limit` bytes before and after decompression (gzip or deflate;
    any other encoding is refused), else BadAnswer."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadAnswer(f"an answer of {declared} bytes, over the client's limit of {limit}")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
        raise BadAnswer(f"an answer in the {encoding!r} encoding, which the client does not read")
    inflate = None if encoding in ("identity", "") else zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib
    received, answer = 0, bytearray()
    for chunk in _raw_chunks(response):
        received += len(chunk)
        if received > limit:
            raise BadAnswer(f"an answer over the client's limit of {limit} bytes")
        if inflate is None:
            answer += chunk
            continue
        try:
            answer += inflate.decompress(chunk, limit + 1 - len(answer))
        except zlib.error as error:
            raise BadAnswer(f"an answer that does not decompress: {error}") from None
        if len(answer) > limit or inflate.unconsumed_tail:
            raise BadAnswer(f"an answer that decompresses to over the client's limit of {limit} bytes")
    return bytes(answer)


class Deadline:
    """Closes a request's connection once `seconds` have passed, whatever the server is doing: httpx's timeouts
    are per read, so a server that trickles its answer (or sends "100 Continue" forever) would hold the client for
    good. The connection is caught through httpx's `trace` extension as it opens."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._streams: list[Any] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's trace callback: keeps the connection's network stream."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self._streams.append(info["return_value"])

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        for stream in self._streams:
            with contextlib.suppress(Exception):
                stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)


def _raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body as it arrives, not decoded; a response made whole in memory (httpx's MockTransport) at once."""
    try:
        yield from response.iter_raw()
    except httpx.StreamConsumed:
        yield response.content


def _top_k(prediction: Any) -> list[dict[str, Any]] | None:
    """A prediction's top labels if it is shaped as the service answers (labels as text, probabilities finite
    within 0-1), else None."""
    top_k = prediction.get("top_k") if isinstance(prediction, dict) else None
    if not isinstance(top_k, list) or not top_k:
        return None
    for entry in top_k:
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
            return None
        probability = entry.get("probability")
        if not isinstance(probability, int | float) or isinstance(probability, bool) or not math.isfinite(probability):
            return None
        if not 0 <= probability <= 1:
            return None
    return top_k


class Classifier:
    """Sends files to `url`/predict, retrying 503s and 429s after Retry-After. Once one request has given up on an
    unavailable server, the requests still to come give up at once rather than each waiting through its retries."""

    def __init__(self, url: str, *, top_k: int, headers: dict[str, str], retries: int, timeout_s: float,
                 max_file_bytes: int) -> None:  # fmt: skip
        self.url = url.rstrip("/") + "/predict"
        self.top_k = top_k
        self.retries = retries
        self.max_file_bytes = max_file_bytes
        self.timeout_s = timeout_s
        # A new connection per request, so that the deadline below can always close the request's own.
        self.client = httpx.Client(headers=headers, timeout=timeout_s, limits=httpx.Limits(max_keepalive_connections=0))
        self.gave_up: str | None = None

    def classify(self, paths: list[Path]) -> list[Result]:
        """Each file's result, in order; never raises for a file's or the server's sake."""
        results: dict[Path, Result] = {}
        files: list[tuple[Path, bytes]] = []
        for path in paths:
            try:
                size = path.stat().st_size
                if size > self.max_file_bytes:
                    raise ValueError(f"{size} bytes, over --max-file-bytes {self.max_file_bytes}: not sent")
                files.append((path, path.read_bytes()))
            except (OSError, ValueError) as error:
                results[path] = Result(_shown(path), error=f"cannot send: {error}")
        if files:
            for path, result in zip([p for p, _ in files], self._send(files), strict=True):
                results[path] = result
        return [results[path] for path in paths]

    def _send(self, files: list[tuple[Path, bytes]]) -> list[Result]:
        if self.gave_up:
            return [Result(_shown(path), error=f"not sent: {self.gave_up}") for path, _ in files]
        try:
            status, body = self._post(files)
        except Unavailable as error:
            self.gave_up = str(error)
            return [Result(_shown(path), error=str(error)) for path, _ in files]
        if isinstance(body, dict) and body.get("error") == BAD_ANSWER:
            return [Result(_shown(path), error=_reason(status, body)) for path, _ in files]
        if status == 200:
            predictions = body.get("predictions") if isinstance(body, dict) else None
            if isinstance(predictions, list) and len(predictions) == len(files):
                ranked = [_top_k(prediction) for prediction in predictions]
                return [
                    Result(_shown(path), top_k=top_k)
                    if top_k is not None
                    else Result(_shown(path), error="200, but not a classifier's answer for this file")
                    for (path, _), top_k in zip(files, ranked, strict=True)
                ]
            return [Result(_shown(path), error="200, but not the answer of a classifier") for path, _ in files]
        if len(files) > 1 and status in PER_FILE_STATUSES:
            return [result for one in files for result in self._send([one])]
        return [Result(_shown(path), error=_reason(status, body)) for path, _ in files]

    def _post(self, files: list[tuple[Path, bytes]]) -> tuple[int, Any]:
        form = [("files", (_wire_name(path), data)) for path, data in files]
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            limit = ANSWER_BYTES_FIXED + ANSWER_BYTES_PER_FILE * len(files)
            deadline = Deadline(self.timeout_s)
            try:
                with (
                    deadline,
                    self.client.stream(
                        "POST", self.url, params={"top_k": self.top_k}, files=form, extensions={"trace": deadline.trace}
                    ) as response,
                ):
                    text = read_answer(response, limit)
            except httpx.TransportError as error:
                if last:
                    reason = (
                        f"the server gave no whole answer within --timeout {self.timeout_s:g} s"
                        if deadline.expired
                        else f"the server was unreachable: {type(error).__name__}: {error}"
                    )
                    raise Unavailable(reason) from None
                time.sleep(1)
                continue
            except BadAnswer as error:
                return response.status_code, {"error": BAD_ANSWER, "detail": str(error)}
            try:
                body = json.loads(text, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                body = {"error": "http_error", "detail": f"not JSON: {text[:120]!r}"}
            if response.status_code not in RETRY_STATUSES:
                return response.status_code, body
            if last:
                raise Unavailable(f"the server kept refusing: {_reason(response.status_code, body)}")
            time.sleep(_retry_after(response.headers.get("Retry-After")))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.client.close()


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number the service sends")


def _wire_name(path: Path) -> str:
    """The file's name as sent: valid UTF-8 even when the file system's is not."""
    return _shown(Path(path.name))


def _shown(path: Path) -> str:
    """A path as text that can be printed and sent: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value or 1)
    except ValueError:
        return 1.0
    return min(max(seconds, 0.0), 60.0) if math.isfinite(seconds) else 1.0


def _reason(status: int, body: Any) -> str:
    if isinstance(body, dict):
        return f"{status} {str(body.get('error', ''))[:200]}: {str(body.get('detail', ''))[:1000]}".strip()
    return f"{status}"


def batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """`text` with control characters (newlines, terminal escapes) shown as `?`: names and server messages are
    not ours to let steer the terminal."""
    return _CONTROL.sub("?", text)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """A CSV cell that a spreadsheet shows as text: printable, and a leading formula character escaped with `'`
    (OWASP's advice against CSV injection)."""
    text = _printable(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


class Output:
    """Writes results as they come: a table, JSON lines or CSV."""

    def __init__(self, output_format: str, stream: TextIO, width: int) -> None:
        self.format = output_format
        self.stream = stream
        self.width = width
        if output_format == "csv":
            self.csv = csv.writer(stream)
            self.csv.writerow(["file", "label", "probability", "top_k", "error"])
        elif output_format == "table":
            stream.write(f"{'file':<{width}}  {'label':<12} {'prob':>6}  next\n")

    def write(self, results: list[Result]) -> None:
        for result in results:
            if self.format == "jsonl":
                record = {"file": result.path, "label": result.label or None, "probability": result.probability,
                          "top_k": result.top_k, "error": result.error}  # fmt: skip
                self.stream.write(json.dumps(record) + "\n")
            elif self.format == "csv":
                others = " ".join(f"{_printable(k['label'])}:{k['probability']:.4f}" for k in result.top_k)
                probability = f"{result.probability:.4f}" if result.probability is not None else ""
                cells = [result.path, result.label, probability, others, result.error or ""]
                self.csv.writerow([_cell(cell) for cell in cells])
            elif result.error:
                self.stream.write(f"{_printable(result.path):<{self.width}}  FAILED  {_printable(result.error)}\n")
            else:
                others = ", ".join(f"{_printable(k['label'])} {k['probability']:.2f}" for k in result.top_k[1:])
                self.stream.write(
                    f"{_printable(result.path):<{self.width}}  {_printable(result.label):<12} "
                    f"{result.probability:6.3f}  {others}\n"
                )
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("paths", nargs="+", help="image files, glob patterns (quoted) or folders")
    parser.add_argument("--top-k", type=int, default=3, help="labels per image (default 3)")
    parser.add_argument("--api-key", default=os.environ.get("CLASSIFIER_API_KEY"),
                        help="the API key, if the server needs one (default: $CLASSIFIER_API_KEY)")  # fmt: skip
    parser.add_argument("--api-key-header", default="X-API-Key", help="the header it goes in (default X-API-Key)")
    parser.add_argument("--batch", type=int, default=8, help="images per request (default 8)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--format", choices=["table", "jsonl", "csv"], default="table", dest="output_format")
    parser.add_argument("--retries", type=int, default=5, help="retries of a 503/429 or unreachable server (5)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request (default 60)")
    parser.add_argument("--max-file-bytes", type=int, default=10 * 1024 * 1024,
                        help="larger files are reported, not sent (default 10 MiB, the server's)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no tty)")
    args = parser.parse_args(argv)
    for name in ("top_k", "batch", "concurrency", "max_file_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.retries < 0 or args.timeout <= 0:
        parser.error("--retries must be at least 0 and --timeout more than 0")
    try:
        url = httpx.URL(args.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("not an http(s) URL")
        _ = url.port
    except Exception as error:
        parser.error(f"{args.url!r} is not a server URL such as http://127.0.0.1:8000 ({error})")
    paths = find_files(args.paths)
    for pattern in args.paths:
        if glob.has_magic(pattern) and not glob.glob(pattern, recursive=True):
            print(f"warning: {pattern!r} matches no file", file=sys.stderr)
    if not paths:
        parser.error("no image files found")
    headers = {args.api_key_header: args.api_key} if args.api_key else {}
    classifier = Classifier(args.url, top_k=args.top_k, headers=headers, retries=args.retries,
                            timeout_s=args.timeout, max_file_bytes=args.max_file_bytes)  # fmt: skip
    output = Output(args.output_format, sys.stdout, max(len("file"), *(len(_printable(_shown(p))) for p in paths)))
    progress = tqdm(total=len(paths), unit="image", disable=args.no_progress or not sys.stderr.isatty())
    failed = done = 0
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    try:
        for batch_results in pool.map(classifier.classify, batches(paths, args.batch)):
            output.write(batch_results)
            done += len(batch_results)
            failed += sum(1 for result in batch_results if result.error)
            progress.update(len(batch_results))
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        progress.close()
        print(f"interrupted: {done} of {len(paths)} files done, {failed} failed", file=sys.stderr)
        os._exit(130)  # requests still in flight are abandoned, not waited for
    finally:
        pool.shutdown(wait=True)
        progress.close()
        classifier.close()
    if failed:
        print(f"{failed} of {done} files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line client: classify image files, globs or whole folders against a running server.

    python -m service.client http://127.0.0.1:8000 photos/ 'more/*.png' --batch 8 --concurrency 4 --format csv

Each request carries `--batch` images; `--concurrency` requests are in flight at once. A 503 (overloaded, draining)
is retried after the server's Retry-After. The service fails a whole request for one bad file, so a request
refused for its contents (4xx) is retried one file at a time, and each bad file is reported with its own reason.
The exit status is 0 when every file was classified, 1 when any failed, 2 for a usage error."""

import argparse
import csv
import glob
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx2 as httpx
from tqdm import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
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


class Classifier:
    """Sends files to `url`/predict, retrying 503s after Retry-After."""

    def __init__(self, url: str, *, top_k: int, headers: dict[str, str], retries: int, timeout_s: float) -> None:
        self.url = url.rstrip("/") + "/predict"
        self.top_k = top_k
        self.retries = retries
        self.client = httpx.Client(headers=headers, timeout=timeout_s)

    def classify(self, paths: list[Path]) -> list[Result]:
        """Each file's result; a request refused for one file's sake is retried file by file."""
        unreadable = [Result(str(p), error=f"cannot read: {p} is not a file") for p in paths if not p.is_file()]
        readable = [p for p in paths if p.is_file()]
        if not readable:
            return unreadable
        status, body = self._post(readable)
        if status == 200:
            results = [
                Result(str(p), top_k=pred["top_k"]) for p, pred in zip(readable, body["predictions"], strict=True)
            ]
        elif len(readable) > 1 and 400 <= status < 500 and status not in (401, 403):
            results = [result for path in readable for result in self.classify([path])]
        else:
            results = [Result(str(p), error=_reason(status, body)) for p in readable]
        return unreadable + results

    def _post(self, paths: list[Path]) -> tuple[int, Any]:
        for attempt in range(self.retries + 1):
            try:
                files = [("files", (path.name, path.read_bytes())) for path in paths]
                response = self.client.post(self.url, params={"top_k": self.top_k}, files=files)
            except httpx.TransportError as error:
                if attempt == self.retries:
                    return 0, {"error": "unreachable", "detail": f"{type(error).__name__}: {error}"}
                time.sleep(1)
                continue
            try:
                body = response.json()
            except ValueError:
                body = {"error": "http_error", "detail": response.text[:200]}
            if response.status_code != 503 or attempt == self.retries:
                return response.status_code, body
            time.sleep(_retry_after(response.headers.get("Retry-After")))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.client.close()


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 0.0), 60.0)
    except ValueError:
        return 1.0


def _reason(status: int, body: Any) -> str:
    if isinstance(body, dict):
        return f"{status} {body.get('error', '')}: {body.get('detail', '')}".strip()
    return f"{status}"


def batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def write(results: list[Result], output_format: str, stream: TextIO) -> None:
    """The results as a table, JSON lines or CSV."""
    if output_format == "jsonl":
        for result in results:
            record = {"file": result.path, "label": result.label or None, "probability": result.probability,
                      "top_k": result.top_k, "error": result.error}  # fmt: skip
            stream.write(json.dumps(record) + "\n")
    elif output_format == "csv":
        writer = csv.writer(stream)
        writer.writerow(["file", "label", "probability", "top_k", "error"])
        for result in results:
            others = " ".join(f"{k['label']}:{k['probability']:.4f}" for k in result.top_k)
            probability = f"{result.probability:.4f}" if result.probability is not None else ""
            writer.writerow([result.path, result.label, probability, others, result.error or ""])
    else:
        width = max([len("file"), *(len(r.path) for r in results)])
        stream.write(f"{'file':<{width}}  {'label':<12} {'prob':>6}  next\n")
        for result in results:
            if result.error:
                stream.write(f"{result.path:<{width}}  FAILED  {result.error}\n")
                continue
            others = ", ".join(f"{k['label']} {k['probability']:.2f}" for k in result.top_k[1:])
            stream.write(f"{result.path:<{width}}  {result.label:<12} {result.probability:6.3f}  {others}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("paths", nargs="+", help="image files, glob patterns (quoted) or folders")
    parser.add_argument("--top-k", type=int, default=3, help="labels per image (default 3)")
    parser.add_argument("--api-key", help="the API key, if the server needs one")
    parser.add_argument("--api-key-header", default="X-API-Key", help="the header it goes in (default X-API-Key)")
    parser.add_argument("--batch", type=int, default=8, help="images per request (default 8)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--format", choices=["table", "jsonl", "csv"], default="table", dest="output_format")
    parser.add_argument("--retries", type=int, default=5, help="retries of a 503 or unreachable server (default 5)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request (default 60)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no tty)")
    args = parser.parse_args(argv)
    for name in ("top_k", "batch", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    paths = find_files(args.paths)
    if not paths:
        parser.error("no image files found")
    headers = {args.api_key_header: args.api_key} if args.api_key else {}
    classifier = Classifier(args.url, top_k=args.top_k, headers=headers, retries=args.retries, timeout_s=args.timeout)
    progress = tqdm(total=len(paths), unit="image", disable=args.no_progress or not sys.stderr.isatty())
    results: list[Result] = []
    try:
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            for batch_results in pool.map(classifier.classify, batches(paths, args.batch)):
                results += batch_results
                progress.update(len(batch_results))
    finally:
        progress.close()
        classifier.close()
    write(results, args.output_format, sys.stdout)
    failed = [result for result in results if result.error]
    if failed:
        print(f"{len(failed)} of {len(results)} files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

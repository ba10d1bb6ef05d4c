"""Serving benchmark: the real server on 127.0.0.1 under `hey`, against the ceilings and the baselines.

    python -m benchmarks.serving [--quick]        (or: make bench)

Runs, each bounded in requests and time:
- side by side with the servers a user would write first (benchmarks/baselines, run with uvicorn's defaults),
  each pair up at once and loaded in alternating rounds (figures are medians of the rounds), at concurrency 64
  and 1, one image per request:
  - (b) HTTP ceiling: this service with inference replaced by a constant answer, against a plain FastAPI
    multipart route with no model;
  - this service against a plain FastAPI + ONNX Runtime server (`def` endpoint, one `session.run` per request),
    with the light model (the source article's network) and with the bundled model;
- the bundled model: 32 images per request at concurrency 4, and an overload run at about 4x capacity, open loop
  (refusals and their latency, memory before, during and after);
- (a) model ceiling: decode + ONNX Runtime in-process at the best batch size, no HTTP;
- (c) batching off; (e) two worker processes;
- (d) the article's way: Keras `model.predict` per request (benchmarks/keras_server.py).
Writes benchmarks/results/serving.md, serving.json and serving.png.
"""

import argparse
import csv
import functools
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tests.helpers import free_port, image_files, multipart, rss_mb, server_process  # shared with the tests
from training.machine import cpu_name

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SAMPLE = REPO / "tests" / "data" / "cifar10-sample"
BOUNDARY = "benchmarkboundary7MA4YWxkTrZu0gW"


@dataclass
class Run:
    """One load-generator run and what it measured."""

    name: str
    mode: str
    concurrency: int
    images_per_request: int
    requests: int = 0
    ok: int = 0
    refused: int = 0
    other: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    refused_p99_ms: float | None = None
    refused_max_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def multipart_body(images: list[bytes]) -> bytes:
    """A /predict body with each image as a `files` part, with the fixed boundary that `PREDICT` declares."""
    files = image_files(*((f"{index}.jpg", data) for index, data in enumerate(images)), content_type="image/jpeg")
    return multipart(files, boundary=BOUNDARY)[0]


def v2_bodies(image: bytes, log_dir: Path) -> dict[str, tuple[Path, "Endpoint"]]:
    """Open Inference Protocol bodies for one image: UINT8 pixels and BYTES of a PNG, as binary tensor data (the
    official clients' default), the output asked for in binary too."""
    from PIL import Image

    decoded = Image.open(io.BytesIO(image)).convert("RGB")
    pixels = np.asarray(decoded, dtype=np.uint8)
    png = io.BytesIO()
    decoded.save(png, "PNG")
    bodies = {}
    for name, datatype, shape, data in (
        ("uint8", "UINT8", [1, *pixels.shape], pixels.tobytes()),
        ("bytes-png", "BYTES", [1], len(png.getvalue()).to_bytes(4, "little") + png.getvalue()),
    ):
        head = json.dumps({
            "inputs": [{"name": "image", "shape": shape, "datatype": datatype,
                        "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }).encode()  # fmt: skip
        path = log_dir / f"v2-{name}.body"
        path.write_bytes(head + data)
        headers = (f"Inference-Header-Content-Length: {len(head)}",)
        bodies[name] = (path, Endpoint(V2_INFER, "application/octet-stream", headers))
    return bodies


V2_INFER = "/v2/models/cifar10-resnet9/infer"


def sample_images(count: int) -> list[bytes]:
    """Real CIFAR-10 JPEGs from the test fixture, cycled to `count`."""
    files = sorted(SAMPLE.rglob("*.jpg"))
    return [files[i % len(files)].read_bytes() for i in range(count)]


@contextmanager
def server(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[tuple[str, int]]:
    """Start a server process; yield (url, pid) once ready; stop it."""
    with server_process(command, os.environ | env, port, log, ready_within_s=120) as (url, process):
        yield url, process.pid


@contextmanager
def service(model: Path, log_dir: Path, **settings: str) -> Iterator[tuple[str, int]]:
    """`python -m service` with CLASSIFIER_* settings."""
    port = free_port()
    env = {"CLASSIFIER_MODEL_PATH": str(model), "CLASSIFIER_PORT": str(port), "CLASSIFIER_LOG_LEVEL": "warning"}
    env |= {f"CLASSIFIER_{key.upper()}": value for key, value in settings.items()}
    label = "-".join(f"{k}={v}" for k, v in settings.items()) or "default"
    with server([sys.executable, "-m", "service"], env, port, log_dir / f"server-{label}.log") as running:
        yield running


@dataclass(frozen=True)
class Endpoint:
    """Where and how a body is posted."""

    path: str = "/predict"
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}"
    headers: tuple[str, ...] = ()


PREDICT = Endpoint()


def hey(url: str, body: Path, *, concurrency: int, requests: int | None = None, seconds: float | None = None,
        rate_per_worker: float | None = None, timeout_s: int = 20, endpoint: Endpoint = PREDICT,
        ) -> list[tuple[float, int]]:  # fmt: skip
    """Run hey against POST {url}/predict (or `endpoint`); (latency seconds, status) per request."""
    rows = hey_rows(url, body, concurrency=concurrency, requests=requests, seconds=seconds,
                    rate_per_worker=rate_per_worker, timeout_s=timeout_s, endpoint=endpoint)  # fmt: skip
    return [(latency, status) for latency, status, _ in rows]


def hey_rows(url: str, body: Path, *, concurrency: int, requests: int | None = None, seconds: float | None = None,
             rate_per_worker: float | None = None, timeout_s: int = 20, endpoint: Endpoint = PREDICT,
             ) -> list[tuple[float, int, float]]:  # fmt: skip
    """Run hey against POST {url}/predict (or `endpoint`); (latency s, status, start offset s) per request."""
    command = ["hey", "-m", "POST", "-c", str(concurrency), "-t", str(timeout_s), "-o", "csv",
               "-T", endpoint.content_type, "-D", str(body)]  # fmt: skip
    for header in endpoint.headers:
        command += ["-H", header]
    command += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]
    if rate_per_worker:
        command += ["-q", f"{rate_per_worker:.2f}"]
    limit = (seconds or 600) + 120
    output = subprocess.run(
        [*command, f"{url}{endpoint.path}"], capture_output=True, text=True, timeout=limit, check=True
    ).stdout
    rows = csv.DictReader(io.StringIO(output))
    return [(float(row["response-time"]), int(row["status-code"]), float(row["offset"])) for row in rows]


def summarise(run: Run, samples: list[tuple[float, int]], seconds: float) -> Run:
    """Fill `run` from per-request samples."""
    accepted = sorted(latency * 1000 for latency, status in samples if status == 200)
    refused = sorted(latency * 1000 for latency, status in samples if status == 503)
    run.requests = len(samples)
    run.ok, run.refused = len(accepted), len(refused)
    run.other = run.requests - run.ok - run.refused
    run.seconds = round(seconds, 2)
    run.images_per_s = round(run.ok * run.images_per_request / seconds, 1)
    if accepted:
        run.p50_ms, run.p95_ms, run.p99_ms = (round(float(np.percentile(accepted, q)), 2) for q in (50, 95, 99))
    if refused:
        run.refused_p99_ms = round(float(np.percentile(refused, 99)), 2)
        run.refused_max_ms = round(refused[-1], 2)
    return run


def load(url: str, body: Path, run: Run, endpoint: Endpoint = PREDICT, **options: float) -> Run:
    """hey against `url`, summarised into `run`; prints a line."""
    started = time.monotonic()
    samples = hey(url, body, concurrency=run.concurrency, endpoint=endpoint, **options)  # type: ignore[arg-type]
    summarise(run, samples, time.monotonic() - started)
    print(
        f"{run.name:<34} c={run.concurrency:<4} {run.images_per_s:>8.1f} img/s  p50 {run.p50_ms:7.2f}  "
        f"p99 {run.p99_ms:7.2f} ms  ok={run.ok} refused={run.refused} other={run.other}",
        flush=True,
    )
    return run


def model_ceiling(model_path: Path, images: list[bytes], seconds: float) -> tuple[Run, dict[int, float]]:
    """(a) decode + ONNX Runtime in one process at several batch sizes, no HTTP; the best is the ceiling."""
    from service.imaging import decode_image
    from service.inference import OnnxModel

    model = OnnxModel(model_path, providers=("CPUExecutionProvider",))
    size = (model.info.height, model.info.width)
    per_size: dict[int, float] = {}
    for batch_size in (1, 8, 16, 32, 64):
        model.warm_up([batch_size])
        done, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            batch = [images[(done + i) % len(images)] for i in range(batch_size)]
            arrays = np.stack([decode_image(data, filename="x", size=size, max_pixels=10**8) for data in batch])
            model.predict(arrays)
            done += batch_size
        per_size[batch_size] = round(done / (time.monotonic() - started), 1)
    best = max(per_size, key=lambda key: per_size[key])
    run = Run("(a) model ceiling, in-process", "ceiling", 0, best, images_per_s=per_size[best])
    print(f"(a) model ceiling: {per_size} img/s by batch size; best {best}", flush=True)
    return run, per_size


def single_image_latency(model_path: Path, image: bytes, count: int = 2000) -> dict[str, float]:
    """Batch-1 decode and ONNX Runtime times in-process, one thread and default threads (medians, ms)."""
    from service.imaging import decode_image
    from service.inference import OnnxModel

    figures: dict[str, float] = {}
    array = decode_image(image, filename="x", size=(32, 32), max_pixels=10**8)[None]
    for threads in (1, 0):
        model = OnnxModel(model_path, providers=("CPUExecutionProvider",), intra_op_threads=threads)
        model.warm_up([1] * 20)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            model.predict(array)
            times.append(time.perf_counter() - started)
        figures[f"ort_batch1_{'1thread' if threads == 1 else 'default_threads'}_ms"] = round(
            statistics.median(times) * 1000, 3
        )
    times = []
    for _ in range(count):
        started = time.perf_counter()
        decode_image(image, filename="x", size=(32, 32), max_pixels=10**8)
        times.append(time.perf_counter() - started)
    figures["decode_ms"] = round(statistics.median(times) * 1000, 3)
    return figures


def write_results(runs: list[Run], context: dict[str, object]) -> None:
    """benchmarks/results/serving.{json,md,png}."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps({"context": context, "runs": [asdict(r) for r in runs]}, indent=2))
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {context['machine']}. Model: `{context['model']}`. Load generator: hey, on the same machine.",
        f"Run: {context['when']}; command: `{context['command']}`.",
        "",
        "| run | mode | concurrency | images/request | images/s | p50 ms | p95 ms | p99 ms | ok | 503 | 503 p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        refused_p99 = "" if r.refused_p99_ms is None else f"{r.refused_p99_ms:.2f}"
        lines.append(
            f"| {r.name} | {r.mode} | {r.concurrency or '-'} | {r.images_per_request} | {r.images_per_s:.1f} | "
            f"{r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.ok} | {r.refused} | {refused_p99} |"
        )
    lines += ["", "## Targets", ""] + [f"- {line}" for line in context["targets"]]  # type: ignore[operator]
    lines += ["", "## Other figures", ""] + [f"- {k}: {v}" for k, v in context["figures"].items()]  # type: ignore[union-attr]
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")
    plot(runs)


def plot(runs: list[Run]) -> None:
    """Throughput and p99 against concurrency, one line per mode (1 image per request)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in ("batched bundled model", "plain onnx bundled model", "batched light model", "plain onnx light model",
                 "constant answer", "plain route"):  # fmt: skip
        points = sorted(
            (r.concurrency, r) for r in runs if r.mode == mode and r.images_per_request == 1 and r.refused == 0
        )
        if not points:
            continue
        left.plot([c for c, _ in points], [r.images_per_s for _, r in points], marker="o", label=mode)
        right.plot([c for c, _ in points], [r.p99_ms for _, r in points], marker="o", label=mode)
    for r in runs:
        if r.mode == "ceiling":
            left.axhline(r.images_per_s, linestyle="--", color="grey", label="model ceiling (in-process)")
    for axes, title in ((left, "throughput, 1 image/request (images/s)"), (right, "p99 latency (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("concurrency")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    left.set_yscale("log")
    right.set_yscale("log")
    figure.tight_layout()
    figure.savefig(RESULTS / "serving.png", dpi=100)
    plt.close(figure)


def baseline(module: str, log_dir: Path, model: Path | None = None) -> AbstractContextManager[tuple[str, int]]:
    """A baseline server from benchmarks/baselines, run as its user would: `uvicorn module:app`, uvicorn's
    defaults (access log on, one process)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", f"benchmarks.baselines.{module}:app", "--port", str(port)]
    env = {"BASELINE_MODEL": str(model)} if model else {}
    label = f"{module}-{model.stem}" if model else module
    return server(command, env, port, log_dir / f"baseline-{label}.log")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare(servers: dict[str, tuple[str, tuple[str, int]]], body: Path, concurrency: int, *, rounds: int,
            seconds: float) -> list[Run]:  # fmt: skip
    """The servers {name: (mode, (url, pid))}, all up at once, loaded in turn for `rounds` rounds of `seconds`
    each, so that every server sees the same moments of this shared machine; each figure is the median of its
    rounds. Also reports the server's CPU time per request."""
    rows: dict[str, list[Run]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, (mode, (url, pid)) in servers.items():
            before = cpu_seconds(pid)
            run = load(url, body, Run(name, mode, concurrency, 1), seconds=seconds)
            run.extra = {"cpu_us_per_request": round(1e6 * (cpu_seconds(pid) - before) / max(run.requests, 1))}
            rows[name].append(run)
    medians = []
    for name, (mode, _) in servers.items():
        runs = rows[name]
        median = functools.partial(_median, runs)
        merged = Run(name, mode, concurrency, 1, requests=sum(r.requests for r in runs),
                     ok=sum(r.ok for r in runs), refused=sum(r.refused for r in runs),
                     other=sum(r.other for r in runs), seconds=round(sum(r.seconds for r in runs), 2),
                     images_per_s=round(median("images_per_s"), 1), p50_ms=round(median("p50_ms"), 2),
                     p95_ms=round(median("p95_ms"), 2), p99_ms=round(median("p99_ms"), 2),
                     extra={"rounds": rounds, "cpu_us_per_request": statistics.median(
                         r.extra["cpu_us_per_request"] for r in runs)})  # fmt: skip
        print(f"  median of {rounds}: {name:<40} c={concurrency:<3} {merged.images_per_s:8.1f} req/s  "
              f"p50 {merged.p50_ms:6.2f}  p99 {merged.p99_ms:7.2f} ms  "
              f"server CPU {merged.extra['cpu_us_per_request']:.0f} us/request", flush=True)  # fmt: skip
        medians.append(merged)
    return medians


def _median(runs: list[Run], attribute: str) -> float:
    return float(statistics.median(getattr(run, attribute) for run in runs))


def overload_run(url: str, pid: int, body: Path, capacity_rps: float, seconds: float) -> Run:
    """Open loop at about 4x capacity: 256 workers, each rate-limited, so refused clients do not retry at once;
    resident memory sampled during, and measured again once the load is over."""
    before = rss_mb(pid)
    peak = [before]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            peak.append(rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = 256
    overload = load(url, body, Run("overload (~4x capacity), 1 image/request", "batched", workers, 1),
                    seconds=seconds, rate_per_worker=4 * capacity_rps / workers)  # fmt: skip
    sampling.set()
    sampler.join()
    time.sleep(2)
    overload.extra = {
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(max(peak), 1),
        "rss_after_mb": round(rss_mb(pid), 1),
        "offered_rps": round(overload.requests / overload.seconds, 1),
        "capacity_rps": capacity_rps,
    }
    return overload


def main() -> None:
    """Run every scenario and write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", default=str(REPO / "models" / "default.onnx"))
    parser.add_argument("--light-model", default=str(REPO / "benchmarks" / "models" / "light.onnx"))
    parser.add_argument("--keras-model", default=str(REPO / "models" / "default.keras"))
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison (figures are their medians)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (figures are rough)")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed: apt-get install -y hey")
    scale = 0.25 if args.quick else 1.0
    rounds = 1 if args.quick else args.rounds
    model, light = Path(args.model), Path(args.light_model)
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    one = logs / "one-image.body"
    one.write_bytes(multipart_body(sample_images(1)))
    thirty_two = logs / "32-images.body"
    thirty_two.write_bytes(multipart_body(sample_images(32)))
    seconds = max(5 * scale, 2)
    n = lambda count: max(int(count * scale), 64)  # noqa: E731

    runs: list[Run] = []
    ceiling, per_size = model_ceiling(model, sample_images(64), seconds=3 * scale + 1)
    runs.append(ceiling)
    figures = single_image_latency(model, sample_images(1)[0])
    print(f"in-process figures: {figures}", flush=True)

    print("HTTP ceiling: the plain FastAPI route (no model) against this service answering a constant", flush=True)
    with baseline("plain_route", logs) as plain, service(model, logs, benchmark_constant_answer="true") as ours:
        group = {"plain FastAPI route, no model": ("plain route", plain), "(b) HTTP ceiling": ("constant answer", ours)}
        for concurrency in (64, 1):
            runs += compare(group, one, concurrency, rounds=rounds, seconds=seconds)
    for label, path in (("light model", light), ("bundled model", model)):
        print(f"{label}: the plain FastAPI + ONNX Runtime server against this service", flush=True)
        with baseline("plain_onnx", logs, path) as plain, service(path, logs) as ours:
            group = {f"plain FastAPI + ONNX Runtime, {label}": (f"plain onnx {label}", plain),
                     f"this service, {label}": (f"batched {label}", ours)}  # fmt: skip
            for concurrency in (64, 1):
                runs += compare(group, one, concurrency, rounds=rounds, seconds=seconds)

    with service(model, logs) as (url, pid):
        runs.append(load(url, one, Run("1 image/request", "batched", 8, 1), seconds=seconds))
        runs.append(load(url, thirty_two, Run("32 images/request", "batched", 4, 32), requests=n(600)))
        capacity = next(r for r in runs if r.mode == "batched bundled model" and r.concurrency == 64).images_per_s
        first = overload_run(url, pid, one, capacity, seconds=max(10 * scale, 4))
        again = overload_run(url, pid, one, capacity, seconds=max(10 * scale, 4))
        again.name = "overload again (memory after a second round)"
        runs += [first, again]
    print("Open Inference Protocol (v2) beside /predict, the bundled model, one image per request", flush=True)
    v2 = v2_bodies(sample_images(1)[0], logs)
    with service(model, logs) as (url, _):
        for concurrency in (1, 64):
            runs.append(load(url, one, Run("/predict, JPEG upload", "predict", concurrency, 1), seconds=seconds))
            body, endpoint = v2["uint8"]
            runs.append(load(url, body, Run("v2 infer, UINT8 binary tensor", "v2 uint8", concurrency, 1), endpoint,
                             seconds=seconds))  # fmt: skip
        body, endpoint = v2["bytes-png"]
        runs.append(load(url, body, Run("v2 infer, BYTES of a PNG", "v2 bytes png", 64, 1), endpoint, seconds=seconds))
    with baseline("plain_route", logs) as (url, pid):  # the floor: the same offered load, answered by doing nothing
        floor = overload_run(url, pid, one, capacity, seconds=max(10 * scale, 4))
        floor.name, floor.mode = "plain FastAPI route at the same offered load", "plain route"
        runs.append(floor)
    with service(model, logs, workers="2") as (url, _):
        runs.append(load(url, one, Run("(e) 2 workers", "2 workers", 64, 1), seconds=seconds))
        runs.append(load(url, thirty_two, Run("(e) 2 workers", "2 workers", 4, 32), requests=n(600)))
    with service(model, logs, batching="false") as (url, _):
        runs.append(load(url, one, Run("(c) batching off", "batching off", 64, 1), seconds=seconds))
    keras_model = Path(args.keras_model)
    if keras_model.is_file():
        port = free_port()
        command = [sys.executable, "-m", "benchmarks.keras_server", str(keras_model), str(port)]
        with server(command, {}, port, logs / "keras-server.log") as (url, _):
            runs.append(load(url, one, Run("(d) Keras model.predict", "keras predict", 1, 1), requests=100))
    else:
        print(f"(d) skipped: {keras_model} not found", flush=True)

    targets = judge(runs)
    for line in targets:
        print(line)
    context = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "model": str(model.relative_to(REPO) if model.is_relative_to(REPO) else model),
        "light_model": str(light.relative_to(REPO) if light.is_relative_to(REPO) else light),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.serving" + (" --quick" if args.quick else ""),
        "targets": targets,
        "figures": figures | {f"model ceiling at batch {k} (img/s)": v for k, v in per_size.items()},
    }  # fmt: skip
    write_results(runs, context)
    print(f"results written to {RESULTS}")


def judge(runs: list[Run]) -> list[str]:
    """Issue 13's targets, each with its measured figure and a verdict."""

    def find(mode: str, concurrency: int, per_request: int = 1) -> Run:
        return next(
            r for r in runs if r.mode == mode and r.concurrency == concurrency and r.images_per_request == per_request
        )

    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    ceiling = next(r for r in runs if r.mode == "ceiling").images_per_s
    plain, ours = find("plain route", 64), find("constant answer", 64)
    lines = [
        f"HTTP ceiling at c=64: {ours.images_per_s:.0f} req/s = {ours.images_per_s / plain.images_per_s:.0%} of the "
        f"plain FastAPI route's {plain.images_per_s:.0f} (target >= 50%): "
        f"{verdict(ours.images_per_s >= 0.5 * plain.images_per_s)}; server CPU per request "
        f"{ours.extra['cpu_us_per_request']:.0f} vs {plain.extra['cpu_us_per_request']:.0f} us"
    ]
    for label, speedup in (("light model", 2.0), ("bundled model", 1.15)):
        plain64, ours64 = find(f"plain onnx {label}", 64), find(f"batched {label}", 64)
        plain1, ours1 = find(f"plain onnx {label}", 1), find(f"batched {label}", 1)
        ratio = ours64.images_per_s / plain64.images_per_s
        line = (
            f"{label}, 1 image/request: c=64 {ours64.images_per_s:.0f} vs plain {plain64.images_per_s:.0f} req/s = "
            f"{ratio:.2f}x (target >= {speedup}x): {verdict(ratio >= speedup)}; c=1 p50 {ours1.p50_ms:.2f} vs plain "
            f"{plain1.p50_ms:.2f} ms (target <=): {verdict(ours1.p50_ms <= plain1.p50_ms)}"
        )
        if label == "bundled model":
            line += f"; c=1 p99 {ours1.p99_ms:.2f} ms (target <= 5 ms): {verdict(ours1.p99_ms <= 5)}"
        lines.append(line)
    big = find("batched", 4, 32).images_per_s
    lines.append(
        f"bundled model, 32 images/request at c=4: {big:.0f} img/s = {big / ceiling:.0%} of the in-process model "
        f"ceiling {ceiling:.0f} (target >= 95%): {verdict(big >= 0.95 * ceiling)}"
    )
    overload = next(r for r in runs if r.name.startswith("overload (~4x"))
    again = next(r for r in runs if r.name.startswith("overload again"))
    floor = next(r for r in runs if r.name.startswith("plain FastAPI route at the same offered load"))
    memory, later = overload.extra, again.extra
    flat = later.get("rss_after_mb", 0) <= memory.get("rss_after_mb", 0) * 1.02
    lines.append(
        f"overload (c={overload.concurrency}, offered {memory.get('offered_rps', 0):.0f} req/s vs capacity "
        f"{memory.get('capacity_rps', 0):.0f}): {overload.ok} answered, {overload.refused} refused, other statuses "
        f"{overload.other + again.other} (target 0): {verdict(overload.other + again.other == 0)}; 503 p99 "
        f"{overload.refused_p99_ms} ms (target <= 20 ms): "
        f"{verdict(overload.refused_p99_ms is not None and overload.refused_p99_ms <= 20)} (the plain FastAPI route, "
        f"answering at once, at the same offered load: p99 {floor.p99_ms:.1f} ms); RSS {memory.get('rss_before_mb')} "
        f"-> peak {memory.get('rss_peak_mb')} -> {memory.get('rss_after_mb')} MB, after a second round "
        f"{later.get('rss_after_mb')} MB (target: no growth between rounds, 2%): {verdict(flat)}"
    )
    return lines


if __name__ == "__main__":
    main()

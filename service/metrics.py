"""Prometheus metrics, exposed at /metrics; correct across several uvicorn workers (multiprocess mode)."""

import functools
import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Milliseconds to seconds: a lone request takes a few ms, a loaded one 100s of ms, a stuck one seconds.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
ModelLabels = tuple[str, str, str, str]
"""A model's labels in classifier_model_info: name, version, digest, provider."""


class Metrics:
    """Every metric of one app, in its own registry (so tests can build several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._model_series: list[ModelLabels] = []
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)
        latency = functools.partial(Histogram, buckets=LATENCY_BUCKETS, registry=self.registry)
        count = functools.partial(Histogram, buckets=COUNT_BUCKETS, registry=self.registry)

        self.requests = counter(
            "classifier_http_requests", "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
        )  # fmt: skip
        self.request_duration = latency(
            "classifier_http_request_duration_seconds", "Time from request start to the end of the response.", ["route"]
        )
        self.images_per_request = count("classifier_images_per_request", "Images in each accepted /predict request.")
        self.batch_size = count("classifier_batch_size", "Images in each model call.")
        self.queue_depth = gauge("classifier_queue_depth", "Images waiting for a batch.", multiprocess_mode="livesum")
        self.queue_wait = latency(
            "classifier_queue_wait_seconds", "Time each image waited between queueing and its batch starting."
        )
        self.inference_duration = latency(
            "classifier_inference_duration_seconds", "Time of each model call (one batch)."
        )
        self.refusals = counter(
            "classifier_refusals", "Requests refused or cut short, by reason "
            "(overloaded, queue_full, timeout, upload_stalled, shutting_down, client_disconnected).",
            ["reason"],
        )  # fmt: skip
        self.connection_refusals = counter(
            "classifier_connection_refusals", "Requests (or connections) refused by the connection, below the app, "
            "by error (request_head_too_large, request_head_timeout, too_many_headers, bad_request, "
            "request_trailers_too_large, too_many_pipelined_requests, too_many_connections).",
            ["error"],
        )  # fmt: skip
        self.inference_failures = counter(
            "classifier_inference_failures", "Model calls that raised (each fails its batch's requests with 500)."
        )
        self.requests_in_flight = gauge(
            "classifier_http_requests_in_flight", "HTTP requests received and not yet answered (uploads included).",
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.model_info = gauge(
            "classifier_model_info", "The served model (1) and the one before it (0), labelled with name, version, "
            "the file's digest and provider.",
            ["name", "version", "digest", "provider"], multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_loads = counter(
            "classifier_model_loads", "New models loaded into the running service (SIGHUP or the repository API), "
            "by result (swapped, refused).",
            ["result"],
        )  # fmt: skip

    def served(self, new: "ModelLabels", old: "ModelLabels | None") -> None:
        """A model is now served: its series 1, the one before it 0, any older one removed (bounded labels)."""
        for labels in self._model_series:
            if labels not in (new, old):
                self.model_info.remove(*labels)
        self._model_series = [labels for labels in (old, new) if labels is not None]
        if old is not None:
            self.model_info.labels(*old).set(0)
        self.model_info.labels(*new).set(1)

    def observe_batch(self, size: int, queue_waits: list[float], inference_s: float) -> None:
        """One model call: its size, each image's wait, and its duration."""
        self.batch_size.observe(size)
        self.inference_duration.observe(inference_s)
        for wait in queue_waits:
            self.queue_wait.observe(wait)

    def observe_queue_depth(self, depth: int) -> None:
        """The queue's length after it changed."""
        self.queue_depth.set(depth)

    def observe_failure(self) -> None:
        """A model call that raised."""
        self.inference_failures.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format for a scrape: this process's registry, or every worker's in multiprocess mode."""
        if folder := os.environ.get(MULTIPROCESS_ENV):
            forget_dead_processes(folder)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db")


def forget_process(pid: int) -> None:
    """Remove a worker's live gauges (queue depth, model info) from the shared metrics, once it has exited."""
    if os.environ.get(MULTIPROCESS_ENV):
        multiprocess.mark_process_dead(pid)


def remove_metric_files(folder: Path) -> None:
    """Remove the multiprocess metric files (`*.db`) from `folder`, and nothing else."""
    for path in folder.glob("*.db"):
        path.unlink(missing_ok=True)


def forget_dead_processes(folder: str) -> None:
    """Forget the live gauges of workers that are gone without saying so (killed, as by the OOM killer)."""
    pids = {int(match[1]) for name in os.listdir(folder) if (match := _LIVE_GAUGE_FILE.fullmatch(name))}
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

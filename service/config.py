"""Settings, read from `CLASSIFIER_*` environment variables (and a `.env` file if present)."""

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CLASSIFIER_"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "default.onnx"
AUTO_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class Settings(BaseSettings):
    """Every knob of the service; docs/settings.md lists them, generated from here (docs/generate.py)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    model_path: Path = DEFAULT_MODEL_PATH
    """The ONNX model to serve; labels and input size are read from its metadata."""

    model_name: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.-]*$")
    """The name the model is served under (in answers and in /v2/models/<name> paths); default the name in its
    metadata. KServe's runtime sets it to the InferenceService's name."""

    model_control: Literal["none", "explicit"] = "none"
    """"explicit" turns on the Open Inference Protocol's model repository API (POST /v2/repository/index and
    /v2/repository/models/<name>/load and /unload, as Triton's --model-control-mode=explicit), which loads another
    model file of the repository into the running service; one worker only. SIGHUP reloads the configured model
    either way."""

    model_repository: Path | None = None
    """The folder whose <name>.onnx files the repository API lists and loads; default the configured model's."""

    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 in containers)."""

    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port to listen on."""

    workers: int = Field(default=1, ge=1)
    """Server processes (uvicorn workers), each with its own model session and batcher; on Kubernetes prefer 1
    and more replicas."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest request body in bytes, enforced while it streams in (413 beyond, before it is all read)."""

    body_memory_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    """Most request-body bytes that all requests in progress may hold at once, in one process (held in memory until
    the request ends); a request whose body would go over is refused with 503 and Retry-After."""

    body_idle_timeout_s: float = Field(default=10.0, ge=0)
    """An upload that makes no progress for this long is cut off with 408 (its bytes given back); 0 turns this
    off."""

    request_timeout_s: float = Field(default=30.0, ge=0)
    """A request taking longer, reading a slowly trickled upload included, is answered 504; 0 turns this off."""

    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line and headers) in bytes; a larger one gets 431 and its connection is
    closed, with no more than this (and one read) buffered."""

    max_headers: int = Field(default=100, ge=1)
    """Most headers one request may have (431 beyond)."""

    head_timeout_s: float = Field(default=10.0, ge=0)
    """A request head must arrive whole within this long of the connection opening or of the previous answer on it
    (408, then closed; a connection that sent nothing is just closed); 0 turns this off."""

    keep_alive_timeout_s: float = Field(default=5.0, ge=0)
    """An idle keep-alive connection is closed after this long."""

    max_pipelined_requests: int = Field(default=8, ge=1)
    """Most requests a client may send ahead of their answers on one connection; more gets those answers, a 400 and
    the close."""

    write_timeout_s: float = Field(default=30.0, ge=0)
    """A client that does not read its answer for this long has its connection closed; 0 turns this off."""

    max_connections: int = Field(default=4096, ge=1)
    """Most connections open at once per process; one more is answered 503 and closed before it is read. Keep it
    below the process's file descriptor limit."""

    shutdown_delay_s: float = Field(default=0.0, ge=0)
    """On SIGTERM, how long to go on accepting new requests while readiness answers 503, before refusing them:
    time for a load balancer that polls readiness to take this replica out (docker compose's HAProxy does; on
    Kubernetes the preStop sleep does this job, so leave it 0 there)."""

    drain_timeout_s: float = Field(default=20.0, ge=0)
    """On SIGTERM, how long to wait for requests in flight before stopping (keep it below the orchestrator's
    grace period, 30 s on Kubernetes)."""

    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    """API keys, comma-separated; empty (the default) turns authentication off."""

    api_key_header: str = "X-API-Key"
    """The request header that carries the API key."""

    api_key_open_paths: Annotated[tuple[str, ...], NoDecode] = (
        "/health",
        "/ready",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/",
        "/web/",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/static-offline-docs/",
    )
    """Paths that never need the API key, comma-separated; one ending in "/" (other than "/") opens every path under
    it; setting it replaces the defaults. The web page and the API docs hold no data: they ask for the key and send
    it with their requests."""

    max_images_per_request: int = Field(default=64, ge=1)
    """Most files one /predict request may carry (413 beyond)."""

    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """Largest single uploaded file in bytes (413 beyond)."""

    max_image_pixels: int = Field(default=36_000_000, ge=1)
    """Largest width x height an image may declare, checked before decoding (413 beyond: decompression bombs)."""

    max_decode_bytes: int = Field(default=320 * 1024 * 1024, ge=1)
    """Most memory one image may take to decode, estimated from its header (width x height x bytes per pixel of
    its mode, times what its format and conversion need) before a pixel is decoded (413 beyond)."""

    decode_memory_bytes: int = Field(default=384 * 1024 * 1024, ge=1)
    """Memory budget of all decodes in progress at once in one process; a request whose images do not fit waits
    until earlier decodes finish, one whose images could never fit is refused (413)."""

    decode_cpu_limit_s: float = Field(default=2.0, gt=0)
    """CPU time one request's images may take to check and decode (in a decoder process, which is killed past it:
    413), whatever their format. The kernel counts it in whole seconds, so the limit in effect is up to a second
    more. Small requests decoded on the event loop cost well under a millisecond and are not counted."""

    top_k: int = Field(default=3, ge=1)
    """How many labels, with probabilities, each prediction lists (capped at the number of classes)."""

    max_concurrent_requests: int = Field(default=64, ge=1)
    """Most /predict requests in progress at once; more are refused at once with 503 and Retry-After."""

    batching: bool = True
    """Merge images from concurrent requests into one model call; off, each request runs alone."""

    max_batch_size: int = Field(default=32, ge=1)
    """Most images in one model call; a request with more is split across batches."""

    max_delay_ms: float = Field(default=2.0, ge=0)
    """Longest a batch waits for more images, from its first queued image (only while more are being decoded)."""

    queue_capacity: int = Field(default=256, ge=1)
    """Most images waiting for a batch; a request that does not fit is refused at once with 503 and Retry-After."""

    queue_timeout_ms: float = Field(default=5000, ge=0)
    """An image still queued this long after it arrived fails its request with 504; 0 waits forever."""

    benchmark_constant_answer: bool = False
    """Benchmark only: skip ONNX Runtime and answer a constant (uniform) prediction, to measure the HTTP ceiling."""

    intra_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime threads inside one operator; 0 lets ONNX Runtime choose (one per core)."""

    inter_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime threads across operators; 0 lets ONNX Runtime choose."""

    intra_op_spinning: bool = False
    """Let ONNX Runtime's threads busy-wait between runs. Off by measurement: on a small CPU the spinning steals
    time from decoding and HTTP (32-image requests 20% faster, single-image p99 lower with it off)."""

    providers: Annotated[tuple[str, ...], NoDecode] = AUTO_PROVIDERS
    """Execution providers in order of preference, comma-separated; those not available here are skipped."""

    require_gpu: bool = False
    """Exit at startup if CUDA is not the provider in use, instead of logging a fallback to CPU."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the service and uvicorn."""

    log_format: Literal["auto", "json", "text"] = "auto"
    """Log lines as one JSON object each, or as key=value text; "auto" writes text to a terminal and JSON anywhere
    else (a file, a pipe, a container's log)."""

    @model_validator(mode="after")
    def _limits_fit_budgets(self) -> "Settings":
        if self.max_body_bytes > self.body_memory_bytes:
            raise ValueError(
                f"{ENV_PREFIX}MAX_BODY_BYTES ({self.max_body_bytes}) must not exceed {ENV_PREFIX}BODY_MEMORY_BYTES "
                f"({self.body_memory_bytes}): such a request could never be received"
            )
        if self.model_control == "explicit" and self.workers > 1:
            raise ValueError(
                f"{ENV_PREFIX}MODEL_CONTROL=explicit serves one worker (a load reaches the worker that receives it): "
                f"set {ENV_PREFIX}WORKERS=1 and run more replicas, or swap every worker's model with SIGHUP"
            )
        if self.max_decode_bytes > self.decode_memory_bytes:
            raise ValueError(
                f"{ENV_PREFIX}MAX_DECODE_BYTES ({self.max_decode_bytes}) must not exceed "
                f"{ENV_PREFIX}DECODE_MEMORY_BYTES ({self.decode_memory_bytes}): such an image could never be decoded"
            )
        return self

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if not value:
            raise ValueError("at least one execution provider is needed")
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import onnxruntime  # here, not at the top: the settings are read by tools that need no model

        known = onnxruntime.get_all_providers()
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown execution providers {unknown}; known: {', '.join(known)}")
        return value

    @field_validator("api_keys", "api_key_open_paths", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class SettingsError(Exception):
    """Invalid settings, with a message that names each offending environment variable."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's errors into a one-line message naming each variable, what it must be,
    and its default."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = [_problem(item) for item in error.errors()]
        raise SettingsError("; ".join(problems)) from None


def _problem(item: ErrorDetails) -> str:
    """One invalid setting: `CLASSIFIER_NAME='value' is invalid: it must be ...; fix it, or unset it (default ...)`."""
    if not item["loc"]:  # a check across settings names its variables itself
        return f"invalid settings: {item['msg'].removeprefix('Value error, ')}"
    name = "_".join(map(str, item["loc"]))
    requirement = re.sub(r"^\w+ should\b", "it must", item["msg"].removeprefix("Value error, "))
    field = Settings.model_fields.get(name)
    default = "" if field is None or field.default is None else f" (default {_as_set(field.default)})"
    value = item.get("input")
    return f"{ENV_PREFIX}{name.upper()}={value!r} is invalid: {requirement}; fix it, or unset it{default}"


def _as_set(value: object) -> str:
    """A default as it would be written in the environment."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)

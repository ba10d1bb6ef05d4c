"""The ONNX Runtime model: loading, provider choice, metadata, and running a batch. No FastAPI here."""

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import InferenceFailed, ModelLoadError, ProviderUnavailable

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ModelInfo:
    """What the service knows about its model, from the ONNX graph and its metadata."""

    path: Path
    name: str
    version: str
    digest: str
    """The first 12 hex digits of the file's SHA-256: which file answered, when name and version say too little."""
    labels: tuple[str, ...]
    input_name: str
    output_name: str
    height: int
    width: int
    providers: tuple[str, ...]
    eval_accuracy: float | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        """The execution provider that runs first (the one doing the work)."""
        return self.providers[0]


class OnnxModel:
    """An ONNX Runtime session over an image classifier that takes uint8 NHWC RGB and returns probabilities."""

    def __init__(
        self,
        path: Path,
        *,
        providers: tuple[str, ...] = (CUDA, CPU),
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        intra_op_spinning: bool = False,
        require_gpu: bool = False,
    ) -> None:
        path = Path(path)
        data = _read_model_file(path)  # once: the session and the digest come from the same bytes
        chosen = choose_providers(providers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not intra_op_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(data, sess_options=options, providers=list(chosen))
        except Exception as error:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
            raise ModelLoadError(f"model file {path} could not be loaded by ONNX Runtime: {error}") from error
        in_use = tuple(self._session.get_providers())
        if require_gpu and CUDA not in in_use:
            raise ProviderUnavailable(
                f"a GPU is required (require_gpu) but ONNX Runtime is using {list(in_use)}; "
                f"available here: {ort.get_available_providers()}"
            )
        if CUDA in chosen and CUDA not in in_use:
            log.warning("event=provider_fallback requested=%s in_use=%s", list(chosen), list(in_use))
        self.info = _read_info(path, hashlib.sha256(data).hexdigest()[:12], self._session, in_use)
        del data
        log.info(
            "event=model_loaded path=%s name=%s version=%s digest=%s providers=%s labels=%d input=%dx%d",
            path,
            self.info.name,
            self.info.version,
            self.info.digest,
            ",".join(in_use),
            len(self.info.labels),
            self.info.height,
            self.info.width,
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for a uint8 batch (N, height, width, 3)."""
        try:
            (probabilities,) = self._session.run([self.info.output_name], {self.info.input_name: images})
        except Exception as error:  # a fault of the model or runtime, never of the client
            raise InferenceFailed(f"inference failed on a batch of {len(images)}: {error}") from error
        return np.asarray(probabilities)

    def close(self) -> None:
        """Release the session (its weights and buffers); the model cannot predict after."""
        self._session = None  # closed: predict raises InferenceFailed from here on

    def warm_up(self, batch_sizes: Iterable[int] = (1,)) -> None:
        """Run blank batches of each size, so no request pays for ONNX Runtime's lazy set-up of a shape."""
        for size in batch_sizes:
            self.predict(np.zeros((size, self.info.height, self.info.width, 3), dtype=np.uint8))


MAX_MODEL_BYTES = 1 << 30
"""The largest model file read (1 GiB): an image classifier of this service's kind is a few MB, and ONNX's own
limit for a file without external data is 2 GB."""


def _read_model_file(path: Path) -> bytes:
    """The file's bytes, or ModelLoadError for a missing or unreadable file, one that is not a regular file (a FIFO
    or a device would block or never end) or one over MAX_MODEL_BYTES."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, and is refused below
    except FileNotFoundError:
        raise ModelLoadError(f"model file {path} does not exist") from None
    except OSError as error:
        raise ModelLoadError(f"model file {path} could not be read: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ModelLoadError(f"model file {path} is not a regular file")
        if status.st_size > MAX_MODEL_BYTES:
            raise ModelLoadError(f"model file {path} is {status.st_size} bytes; at most {MAX_MODEL_BYTES} are read")
        os.set_blocking(descriptor, True)
        data = file.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:  # it grew after it was looked at
        raise ModelLoadError(f"model file {path} is over {MAX_MODEL_BYTES} bytes; at most that many are read")
    return data


def choose_providers(requested: tuple[str, ...]) -> tuple[str, ...]:
    """Keep the requested providers that this ONNX Runtime build offers, in order; CPU is the last resort."""
    known = set(ort.get_all_providers())
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ModelLoadError(f"unknown execution providers {unknown}; known: {sorted(known)}")
    available = ort.get_available_providers()
    chosen = tuple(name for name in requested if name in available)
    skipped = [name for name in requested if name not in available]
    if skipped:
        # Not built into this ONNX Runtime (the CPU package, installed on purpose): said, not warned. A GPU build
        # whose CUDA then fails to load is warned of where the session is opened (event=provider_fallback).
        log.info("event=providers_not_in_this_build skipped=%s available=%s", skipped, available)
    return chosen or (CPU,)


def _read_info(path: Path, digest: str, session: ort.InferenceSession, providers: tuple[str, ...]) -> ModelInfo:
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    try:
        labels = tuple(json.loads(metadata["class_names"]))
    except (KeyError, ValueError, TypeError) as error:
        raise ModelLoadError(f"model file {path} has no valid 'class_names' metadata: {error}") from error
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadError(f"model file {path} must have one input, has {len(inputs)}")
    model_input = inputs[0]
    shape = model_input.shape
    if model_input.type != "tensor(uint8)" or len(shape) != 4 or shape[3] != 3:
        raise ModelLoadError(
            f"model file {path} must take uint8 images (N, height, width, 3); its input "
            f"{model_input.name!r} is {model_input.type} {shape}"
        )
    height, width = shape[1], shape[2]
    if not isinstance(height, int) or not isinstance(width, int):
        raise ModelLoadError(f"model file {path} has no fixed input height and width: {shape}")
    classes = outputs[0].shape[-1]
    if isinstance(classes, int) and classes != len(labels):
        raise ModelLoadError(f"model file {path} outputs {classes} classes but its metadata names {len(labels)}")
    accuracy = metadata.get("eval_accuracy", "")
    return ModelInfo(
        path=path,
        name=metadata.get("model_name", path.stem),
        version=metadata.get("model_version", "unknown"),
        digest=digest,
        labels=labels,
        input_name=model_input.name,
        output_name=outputs[0].name,
        height=height,
        width=width,
        providers=providers,
        eval_accuracy=float(accuracy) if accuracy else None,
        metadata=metadata,
    )


def ranked(probabilities: np.ndarray, k: int) -> np.ndarray:
    """For each row, the indices of its `k` most probable classes, most probable first (ties: lower index)."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[list[tuple[str, float]]]:
    """For each row, the `k` most probable labels with their probabilities, most probable first."""
    order = ranked(probabilities, min(k, len(labels)))
    return [
        [(labels[index], float(row[index])) for index in ranks] for row, ranks in zip(probabilities, order, strict=True)
    ]

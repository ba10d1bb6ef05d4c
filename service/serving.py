"""The served model, and how a new one takes its place without a request refused or failed.

A new model file is loaded and checked off the request path (in a thread): ONNX Runtime opens it, its input is the
served model's size, it has labels, it runs at every warm-up batch size and on the sample images shipped with the
service. Only then does it get a pipeline of its own (its own batcher) and become the one new requests take. A
request keeps the pipeline it took until it is answered, so no request mixes two models, and the old pipeline is
retired once its last request is done: its batcher stopped, its session closed and its memory given back. A model
that fails a check is refused with one log line, a metric and an error to the caller; the old one keeps serving.
At most one load runs at a time: another is refused while it does."""

import asyncio
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.config import Settings
from service.errors import (
    LoadInProgress,
    ModelLoadError,
    ModelRefused,
    NotReady,
    ProviderUnavailable,
    ServiceError,
    ShuttingDown,
)
from service.imaging import decode_image
from service.inference import ModelInfo, OnnxModel
from service.lifecycle import DrainState
from service.limits import Admission
from service.pipeline import Pipeline

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).parent / "samples"
"""Ten CIFAR-10 test images, one per class, named by their label: every new model must classify them."""
WARM_UP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def warm_up_sizes(max_batch_size: int) -> list[int]:
    """Batch sizes run once before a model serves: powers of two below the largest batch, and the largest."""
    return [*(size for size in WARM_UP_SIZES if size < max_batch_size), max_batch_size]


CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_checked(path: Path, settings: Settings, size: tuple[int, int] | None = None) -> OnnxModel:
    """Open the model at `path` as `settings` say; with the served input `size` (a swap), check it can take the
    served model's place: that size, and the sample images. ModelLoadError (or ProviderUnavailable) naming what is
    wrong otherwise. Runs in a thread: nothing here is on the request path."""
    model = OnnxModel(
        path,
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        intra_op_spinning=settings.intra_op_spinning,
        require_gpu=settings.require_gpu,
    )
    try:
        info = model.info
        if size is not None and (info.height, info.width) != size:
            raise ModelLoadError(
                f"{path} takes {info.height}x{info.width} images; the service serves {size[0]}x{size[1]} (clients "
                "send that size): restart the service to change the input size"
            )
        try:
            model.warm_up(warm_up_sizes(settings.max_batch_size))
        except ServiceError as error:
            raise ModelLoadError(f"{path} failed its warm-up: {error.detail}") from None
        if size is not None:  # a swap; at start the model is checked as it always was
            _classify_samples(model)
        if settings.model_name:
            model.info = dataclasses.replace(info, name=settings.model_name)
        return model
    except BaseException:
        model.close()
        raise


def _classify_samples(model: OnnxModel) -> None:
    """Run the model on the shipped sample images: every row must be probabilities, and a model of CIFAR-10's
    labels must get at least half of them right (a broken export gets about one in ten)."""
    files = sorted(SAMPLES.glob("*.jpg"))
    size = (model.info.height, model.info.width)
    images = np.stack(
        [decode_image(path.read_bytes(), filename=path.name, size=size, max_pixels=2**20) for path in files]
    )
    try:
        probabilities = model.predict(images)
    except ServiceError as error:
        raise ModelLoadError(f"{model.info.path} failed on the sample images: {error.detail}") from None
    if probabilities.shape != (len(files), len(model.info.labels)) or not np.isfinite(probabilities).all():
        raise ModelLoadError(f"{model.info.path} gave no valid answer for the sample images: {probabilities.shape}")
    if (probabilities < -1e-6).any() or not np.allclose(probabilities.sum(axis=1), 1, atol=1e-3):
        raise ModelLoadError(f"{model.info.path} does not answer probabilities (rows must be >= 0 and sum to 1)")
    if tuple(model.info.labels) == CIFAR10_LABELS:
        right = sum(
            model.info.labels[row.argmax()] == path.stem for row, path in zip(probabilities, files, strict=True)
        )
        if right < len(files) / 2:
            raise ModelLoadError(
                f"{model.info.path} classifies {right} of the {len(files)} sample images right: a CIFAR-10 model gets "
                "most of them (an export that lost its preprocessing gets about one)"
            )


def release_memory() -> None:
    """Give freed memory back to the system (glibc keeps it in its arenas otherwise): after a session closes."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        ctypes.CDLL(libc).malloc_trim(0)


@dataclass(eq=False, kw_only=True)
class Serving:
    """The app's serving state: the pipeline new requests take (None until a model is loaded, and after an
    unload), whether warm-up passed, the drain state; and the swap of one model for another. `settings` and
    `make_pipeline` are set once the app starts (its lifespan)."""

    drain: DrainState
    admission: Admission
    settings: Settings | None = None
    make_pipeline: Callable[[OnnxModel], Pipeline] | None = None
    on_swap: Callable[[ModelInfo, ModelInfo | None], None] = lambda new, old: None
    on_refused: Callable[[], None] = lambda: None
    retire_timeout_s: float = 30.0
    pipeline: Pipeline | None = None
    ready: bool = False
    source: Path | None = None
    """The file the served model was loaded from."""
    loaded_as: str | None = None
    """The name the served model was loaded under in its repository (its file's stem)."""
    loading: Path | None = None
    size: tuple[int, int] | None = None
    """The input size the service serves (height, width): the first model's, kept through swaps and unloads."""
    on_unload: Callable[[ModelInfo], None] = lambda old: None
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def model(self) -> OnnxModel | None:
        return self.pipeline.model if self.pipeline else None

    def serving_pipeline(self) -> Pipeline:
        """The pipeline a request starts with now, or NotReady (503) while there is none."""
        if not self.ready or self.pipeline is None:
            raise NotReady("the model is not loaded yet")
        return self.pipeline

    def answers_to(self, name: str) -> bool:
        """Whether `name` is the served model's: its own name, or the repository name it was loaded under."""
        info = self.pipeline.info if self.pipeline else None
        return info is not None and name in (info.name, self.loaded_as)

    @property
    def serving(self) -> bool:
        """Loaded, warmed up, inference running and not draining: what readiness reports."""
        running = self.pipeline is not None and self.pipeline.batcher.running
        return self.ready and running and not self.drain.draining

    async def swap(self, path: Path, *, loaded_as: str | None = None) -> ModelInfo:
        """Load the model at `path` off the request path, check it, and make it the one new requests take; the old
        one finishes what it has and is released. ModelRefused (the old one still serving) or LoadInProgress."""
        if self.loading is not None:
            raise LoadInProgress(f"a model is being loaded ({self.loading.name}); try again once it is done")
        if self.drain.draining:
            raise ShuttingDown("the server is shutting down: no model is loaded now")
        if self.settings is None or self.make_pipeline is None or self.size is None:
            raise ModelRefused("this app was built without model loading")
        self.loading = path
        try:
            model = await asyncio.to_thread(load_checked, path, self.settings, self.size)
        except (ModelLoadError, ProviderUnavailable) as error:
            log.error("event=model_refused path=%s reason=%s", path, error)
            self.on_refused()
            raise ModelRefused(f"the model was not loaded: {error}; {self._still()}") from None
        finally:
            self.loading = None
        old = self.pipeline
        self.pipeline = self.make_pipeline(model)
        self.source, self.loaded_as = path, loaded_as
        self.ready = True
        info = self.pipeline.info
        log.info(
            "event=model_swapped name=%s version=%s digest=%s previous=%s",
            info.name, info.version, info.digest, old.info.digest if old else None,
        )  # fmt: skip
        self.on_swap(info, old.info if old else None)
        if old is not None:
            self._retire(old)
        return info

    def unload(self) -> ModelInfo | None:
        """Stop serving the model (readiness then says 503 until a model is loaded); the model finishes what it has
        and is released. Returns what was served, if anything."""
        old, self.pipeline, self.ready = self.pipeline, None, False
        self.source = self.loaded_as = None
        if old is not None:
            log.info(
                "event=model_unloaded name=%s version=%s digest=%s", old.info.name, old.info.version, old.info.digest
            )
            self.on_unload(old.info)
            self._retire(old)
        return old.info if old else None

    async def close(self, timeout_s: float) -> None:
        """At shutdown: the served pipeline and any still retiring finish their requests (within `timeout_s`)."""
        self.ready = False
        if self.pipeline is not None:
            await self.pipeline.batcher.stop(timeout=timeout_s)
            self.pipeline.model.close()
            self.pipeline = None
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=timeout_s)

    def _still(self) -> str:
        info = self.pipeline.info if self.pipeline else None
        return f"still serving {info.name} {info.version} ({info.digest})" if info else "no model is served"

    def _retire(self, old: Pipeline) -> None:
        task = asyncio.get_running_loop().create_task(self._retired(old), name="retire-model")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retired(self, old: Pipeline) -> None:
        """Once the old pipeline's last request is answered: stop its batcher, close its session, free memory."""
        try:
            await asyncio.wait_for(old.users.idle(), self.retire_timeout_s)
        except TimeoutError:
            log.warning("event=model_retired_with_requests users=%d", old.users.count)
        await old.batcher.stop(timeout=self.retire_timeout_s)
        old.model.close()
        del old
        await asyncio.to_thread(release_memory)

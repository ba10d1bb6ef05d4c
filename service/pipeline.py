"""The classification pipeline that every front end calls: `/predict`'s uploaded files and the Open Inference
Protocol's tensors alike. Images in (encoded files, or pixels already the model's size), probabilities and
timings out; on the way, admission control, the queue's capacity check, decoding within the memory budget,
batching, and cancellation when the client goes. No HTTP here: it raises the domain errors of `service.errors`,
which each front end renders its own way."""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from service.batching import Batcher, RequestTiming
from service.errors import ClientDisconnected, InvalidRequest, TooManyImages
from service.imaging import Decoder
from service.inference import ModelInfo, OnnxModel
from service.limits import Admission

ClientGone = Callable[[], Awaitable[None]]
"""Returns once the client has gone (its connection closed): the pipeline then drops the request's images."""


@dataclass(frozen=True)
class ImageLimits:
    """Per-request limits on images, from the settings."""

    max_images: int
    max_pixels: int
    max_decode_bytes: int


@dataclass
class Classified:
    """A request's answer: one row of probabilities per image, in order, where its time went, and the model that
    gave it (one model for the whole request)."""

    probabilities: np.ndarray
    timing: RequestTiming
    model: ModelInfo


class Users:
    """How many requests are classifying through a pipeline; `idle()` returns once none is."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def one(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """Classify a request's images through one model's batcher. One per served model: a new model gets a pipeline
    of its own (service.serving), and a request keeps the one it started with."""

    model: OnnxModel
    batcher: Batcher
    decoder: Decoder
    admission: Admission
    limits: ImageLimits
    users: Users = field(default_factory=Users)

    @property
    def info(self) -> ModelInfo:
        """The served model's description."""
        return self.model.info

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input (height, width)."""
        return self.model.info.height, self.model.info.width

    def check_count(self, count: int) -> None:
        """Raise InvalidRequest for no images, TooManyImages for more than a request may carry."""
        if count < 1:
            raise InvalidRequest("the request has no images")
        if count > self.limits.max_images:
            raise TooManyImages(f"{count} images in one request; the limit is {self.limits.max_images}")

    async def classify_files(self, files: list[tuple[str, bytes]], client_gone: ClientGone) -> Classified:
        """Decode each (filename, encoded image) as `service.imaging` does and classify it. `files` is emptied
        once decoded, so that the encoded bytes are not held while the model runs."""
        self.check_count(len(files))
        # The body has been read: only now does the request take an admission slot, so slow uploads hold none.
        with self.users.one(), self.admission.slot():
            self.batcher.check_capacity(len(files))  # refuse an overload before spending time on decoding
            return await _unless_gone(client_gone, self._decode_and_run(files))

    async def classify_pixels(self, images: np.ndarray, client_gone: ClientGone) -> Classified:
        """Classify `images`, uint8 [N, height, width, 3] at the model's input size (checked by the caller)."""
        self.check_count(len(images))
        with self.users.one(), self.admission.slot():
            self.batcher.check_capacity(len(images))
            return await _unless_gone(client_gone, self._run(images))

    async def _decode_and_run(self, files: list[tuple[str, bytes]]) -> Classified:
        with self.batcher.expecting():
            images = await self.decoder.prepare(
                files,
                size=self.input_size,
                max_pixels=self.limits.max_pixels,
                max_decode_bytes=self.limits.max_decode_bytes,
            )
        files.clear()  # decoded: the encoded bytes need not wait for the model
        return await self._run(images)

    async def _run(self, images: np.ndarray) -> Classified:
        timing = RequestTiming()
        return Classified(await self.batcher.enqueue(images, timing), timing, self.info)


async def _unless_gone(client_gone: ClientGone, work: Coroutine[None, None, Classified]) -> Classified:
    """Await `work`, but cancel it if the client goes first: its decoding stops (its decoder process killed) and
    its images leave the queue. The work runs as its own task and another watches the client; whatever ends the
    wait, this returns only once the work has ended (cancelling a task waits for it), and nothing keeps running."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone())
    watcher.add_done_callback(lambda _: task.cancel())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and watcher.exception() is None:
            raise ClientDisconnected("the client disconnected before its answer was ready") from None
        raise
    finally:
        watcher.cancel()

"""Decoder processes: where the images of a request too large for the event loop are checked and decoded, so that
the work of a request that has ended can be stopped. A decoder in C (libjpeg, zlib, libwebp, libtiff) cannot be
interrupted on a thread; a process can be killed.

A process serves one request at a time under two limits the kernel enforces: CPU seconds (RLIMIT_CPU, set afresh
for each request) and address space while decoding (RLIMIT_AS: what it holds, plus its images' decode estimate and
a margin). When its request ends first (its timeout, its client gone), the thread waiting on it kills it within
`POLL_S`; a limit passed ends it too. A new one is then forked from the forkserver, which has the imaging modules
loaded already: milliseconds, not the 0.3 s of a fresh interpreter. A decoder that crashes on a file takes its
process with it, not the server.

Only JSON and raw bytes cross the pipe, both ways: no pickle from a process that parses hostile files. pebble's
ProcessPool was the alternative; it stops a cancelled task with SIGTERM and a grace period, polled every 100 ms,
and has no CPU limit.
"""

import json
import math
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from types import MappingProxyType
from typing import Any

import numpy as np

from service.errors import EmptyFile, ImageTooLarge, InvalidImage, ServiceError

POLL_S = 0.02
"""How often a thread waiting on a process looks whether its request has ended: about the most a request's work
goes on after it ends (the kill itself takes under a millisecond)."""

MEMORY_MARGIN_BYTES = 64 * 1024 * 1024
"""Address space a process may take while decoding beyond what it holds and its images' decode estimate (Python's
and Pillow's own small allocations)."""

_ERRORS: Mapping[str, type[ServiceError]] = MappingProxyType(
    {cls.__name__: cls for cls in (EmptyFile, ImageTooLarge, InvalidImage)}
)


class Stopped(Exception):
    """The request ended while its process was working for it; the process was killed."""


def start_forkserver() -> ForkServerContext:
    """The forkserver that decoder processes are forked from, with the imaging modules imported once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["service.decoder_processes", "service.imaging"])
    return context


class DecoderProcess:
    """One decoder process and its pipe, used by one thread at a time: `check` a request's files, then `decode`
    them. One killed because its request ended is replaced at once; one that died, or was killed from outside
    (`kill`), at the next `check`."""

    def __init__(self, context: ForkServerContext, cpu_seconds: float) -> None:
        self.cpu_seconds = cpu_seconds
        self._context = context
        self._current = context.RawValue("i", -1)  # the file it is on: named in the error if a limit kills it
        self._names: list[str] = []
        self._start()

    def check(self, files: list[tuple[str, bytes]], limits: dict[str, Any], stop: threading.Event) -> list[int]:
        """Read and check the (name, bytes) files' headers in the process (which keeps them for `decode`); their
        decode estimates in bytes, or the client error of the first bad one."""
        if not self._process.is_alive():
            self._start()
        self._names = [name for name, _ in files]
        self._send({"operation": "check", "cpu_seconds": self.cpu_seconds, "names": self._names, "limits": limits})
        try:
            for _, data in files:
                self._pipe.send_bytes(data)
        except OSError:
            raise self._death() from None
        estimates: list[int] = self._reply(stop)["decode_bytes"]
        return estimates

    def decode(self, size: tuple[int, int], stop: threading.Event) -> np.ndarray:
        """The checked files as one (N, height, width, 3) uint8 array."""
        self._send({"operation": "decode", "size": size})
        shape = self._reply(stop)["shape"]
        try:
            pixels = self._pipe.recv_bytes()
        except (EOFError, OSError):
            raise self._death() from None
        return np.frombuffer(pixels, dtype=np.uint8).reshape(shape)

    def kill(self) -> None:
        """End the process now and reap it; the next `check` starts a new one."""
        self._process.kill()
        self._process.join()
        self._pipe.close()

    def _start(self) -> None:
        self._pipe, child_end = self._context.Pipe()
        self._process: BaseProcess = self._context.Process(
            target=serve, args=(child_end, self._current), name="decoder", daemon=True
        )
        self._process.start()
        child_end.close()

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._pipe.send_bytes(json.dumps(message).encode())
        except OSError:
            raise self._death() from None

    def _reply(self, stop: threading.Event) -> dict[str, Any]:
        while not wait([self._pipe, self._process.sentinel], timeout=POLL_S):
            if stop.is_set():
                self.kill()
                self._start()  # now, so that the next request does not wait for it
                raise Stopped
        try:
            reply: dict[str, Any] = json.loads(self._pipe.recv_bytes())
        except (EOFError, OSError):
            raise self._death() from None
        if "error" in reply:
            raise _ERRORS[reply["error"]](reply["detail"])
        return reply

    def _death(self) -> ServiceError:
        """The client error for the file the process was on when it died (a limit, or its decoder's crash)."""
        self._process.join()
        self._pipe.close()
        index = self._current.value
        name = repr(self._names[index]) if 0 <= index < len(self._names) else "one of the request's files"
        code = self._process.exitcode
        if code == -signal.SIGXCPU:
            return ImageTooLarge(
                f"{name} took more CPU time to check and decode than a request may use (about {self.cpu_seconds:g} "
                "s): send it smaller, or in a plainer encoding"
            )
        return InvalidImage(f"{name} could not be decoded: the decoder failed on it (exit {code})")


# In the process.


def serve(pipe: Connection, current: Any) -> None:
    """A decoder process's loop: one request's messages at a time, until the pipe closes."""
    from service import imaging  # imported in the forkserver already

    imaging.configure_pillow()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server decides
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a limit or a crash leaves no core file
    checked: list[imaging.CheckedImage] = []
    names: list[str] = []
    while True:
        try:
            message = json.loads(pipe.recv_bytes())
            files = [pipe.recv_bytes() for _ in message.get("names", ())]
        except (EOFError, OSError):
            return
        try:
            if message["operation"] == "check":
                _limit_cpu(message["cpu_seconds"])
                limits = message["limits"] | {"size": tuple(message["limits"]["size"])}
                checked, names = [], message["names"]
                for index, (name, data) in enumerate(zip(names, files, strict=True)):
                    current.value = index
                    checked.append(imaging.open_image(data, filename=name, **limits))
                del files
                pipe.send_bytes(json.dumps({"decode_bytes": [image.decode_bytes for image in checked]}).encode())
            else:
                size = tuple(message["size"])
                _limit_memory(max(image.decode_bytes for image in checked))
                arrays = []
                for index, image in enumerate(checked):
                    current.value = index
                    arrays.append(imaging.decode(image, size))
                checked = []
                pixels = np.stack(arrays)
                del arrays
                pipe.send_bytes(json.dumps({"shape": pixels.shape}).encode())
                pipe.send_bytes(pixels.data.cast("B"))
        except (ServiceError, MemoryError) as error:
            name = names[current.value] if 0 <= current.value < len(names) else "a file"
            reply = (
                {"error": type(error).__name__, "detail": str(error)}
                if isinstance(error, ServiceError)
                else {"error": "ImageTooLarge", "detail": f"{name!r} took more memory to decode than its header showed"}
            )
            checked = []
            pipe.send_bytes(json.dumps(reply).encode())
        finally:
            current.value = -1
            _limit_memory(None)


def _limit_cpu(seconds: float) -> None:
    """Let this request use `seconds` more of CPU (in whole seconds, the kernel's unit), then SIGXCPU ends it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used + seconds), resource.RLIM_INFINITY))


def _limit_memory(decode_bytes: int | None) -> None:
    """Let the address space grow by `decode_bytes` and a margin from what it is now; None lifts the limit."""
    if decode_bytes is None:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + decode_bytes + MEMORY_MARGIN_BYTES, resource.RLIM_INFINITY))

"""Checks made before uvicorn starts: the model file and the port. A mistake there is said in one line with what to
do about it (`python -m service` exits 2), not found later as a traceback from the app's startup."""

import errno
import socket
import stat
from pathlib import Path

import onnxruntime as ort

from service.config import ENV_PREFIX

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
ZIP_START, HDF5_START = b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"  # a .keras file is a zip archive; a .h5 file is HDF5
ONNX_START = b"\x08"
"""How an ONNX file begins as every exporter writes it: the model's first field, its IR version (field 1, a varint),
which ONNX Runtime requires. A file that begins otherwise is still given to ONNX Runtime before it is refused."""
EXPORT = "python -m training export"


class StartupMistake(Exception):
    """A mistake in how the server was started, found before serving: one line saying what is wrong and what to do."""


def check_model_file(path: Path) -> None:
    """Refuse a model path that cannot be an ONNX model: missing, a folder, unreadable, empty, a Keras model, or a
    file that ONNX Runtime cannot read. A file that looks like ONNX is left for the app's startup to load."""
    setting = f"{ENV_PREFIX}MODEL_PATH={path}"
    unreadable = f"{setting} cannot be read ({{}}); let the user running the server read it"
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        where = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        beside = path.with_suffix(".onnx")
        hint = f"did you mean {beside}?" if beside != path and beside.is_file() else _serve_an_onnx_file()
        raise StartupMistake(f"{setting} does not exist{where}; {hint}") from None
    except OSError as error:  # a folder on the way that may not be searched, say
        raise StartupMistake(unreadable.format(error.strerror)) from None
    if stat.S_ISDIR(mode):
        raise StartupMistake(f"{setting} is a folder, not a model file; {_folder_hint(path)}")
    if not stat.S_ISREG(mode):
        raise StartupMistake(f"{setting} is not a regular file; {_serve_an_onnx_file()}")
    try:
        with path.open("rb") as file:
            start = file.read(len(HDF5_START))
    except OSError as error:
        raise StartupMistake(unreadable.format(error.strerror)) from None
    if path.suffix.lower() in KERAS_SUFFIXES or start.startswith((ZIP_START, HDF5_START)):
        what = "is a Keras model" if path.suffix.lower() in KERAS_SUFFIXES else "looks like a Keras model, not ONNX"
        raise StartupMistake(f"{setting} {what}, and the service serves ONNX models; {_keras_hint(path)}")
    if not start:
        raise StartupMistake(f"{setting} is empty; {_serve_an_onnx_file()}")
    if not start.startswith(ONNX_START) and (reason := _onnx_runtime_refusal(path)):
        raise StartupMistake(f"{setting} is not an ONNX model ({reason}); {_serve_an_onnx_file()}")


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """The server's sockets, bound and listening before the model loads, on every address `host` stands for, as
    asyncio's create_server binds them (empty: every interface, IPv4 and IPv6): a port that another server holds
    is said at once, and none can take it while the model loads. A connection made meanwhile waits in the backlog
    for the server to start answering."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise StartupMistake(_bind_problem(host, port, OSError(errno.EADDRNOTAVAIL, str(error)))) from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # beside the IPv4 socket, as asyncio does
        try:
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError as error:
            for opened in sockets:
                opened.close()
            raise StartupMistake(_bind_problem(host, port, error)) from None
        sock.set_inheritable(True)  # the workers, when there are several, serve on these sockets
    return sockets


BACKLOG = 2048
"""uvicorn's default backlog."""


def _bind_problem(host: str, port: int, error: OSError) -> str:
    other_port = f"{ENV_PREFIX}PORT={port + 1 if port < 65535 else 8000}"
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {ENV_PREFIX}HOST={host} ({error.strerror}); set it to an address of this machine: "
            "127.0.0.1 for this machine only, 0.0.0.0 for every network"
        )
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (is the server already running?); stop what is using it, "
            f"or pick another port: {other_port}"
        )
    if error.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (below 1024 needs privileges); pick another port: {other_port}"
    return f"cannot listen on {host} port {port} ({error.strerror}); check {ENV_PREFIX}HOST and {ENV_PREFIX}PORT"


def _serve_an_onnx_file() -> str:
    return (
        f"set {ENV_PREFIX}MODEL_PATH to an .onnx file (`{EXPORT}` writes one), or unset it to serve the bundled model"
    )


def _folder_hint(folder: Path) -> str:
    models = sorted(folder.glob("*.onnx"))
    if len(models) == 1:
        return f"serve the model in it: {ENV_PREFIX}MODEL_PATH={models[0]}"
    if models:
        return f"set {ENV_PREFIX}MODEL_PATH to one of the .onnx files in it: {', '.join(map(str, models[:5]))}"
    if (folder / "run.json").is_file():
        return f"it is a training run: export it with `{EXPORT} --run-dir {folder} --output {folder / 'model.onnx'}`"
    return _serve_an_onnx_file()


def _keras_hint(path: Path) -> str:
    exported = path.with_suffix(".onnx")
    if exported.is_file():
        return f"its ONNX export is beside it: {ENV_PREFIX}MODEL_PATH={exported}"
    run = path.parent
    model = "" if path.name == "model.keras" else f" --model {path}"
    if (run / "run.json").is_file():
        return f"export it to ONNX with `{EXPORT} --run-dir {run}{model} --output {exported}`, and serve that"
    return (
        f"export it to ONNX with `{EXPORT} --run-dir RUN_DIR --model {path} --output {exported}` "
        "(RUN_DIR: the training run it came from), and serve that"
    )


def _onnx_runtime_refusal(path: Path) -> str | None:
    """ONNX Runtime's reason for refusing to load `path` (on the CPU, unoptimised), or None if it loads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # its reason is in the exception; nothing on stderr besides
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
        return " ".join(str(error).split())
    return None

"""`python -m service`: read the settings, then serve with uvicorn (one process, or a supervisor and workers)."""

import logging
import os
import reprlib
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Any

import uvicorn

from service.app import create_app, worker_app
from service.config import ENV_PREFIX, Settings, SettingsError, load_settings
from service.connections import ConnectionLimits
from service.lifecycle import DrainingServer, DrainState, WorkerApp, WorkerSupervisor
from service.logs import configure_logging
from service.metrics import MULTIPROCESS_ENV, forget_process, remove_metric_files
from service.preflight import StartupMistake, check_model_file, listening_sockets

log = logging.getLogger("service.main")

# After draining, uvicorn's own graceful shutdown only has to close idle connections.
UVICORN_GRACE_S = 2


USAGE = f"""\
Serve an ONNX image classifier over HTTP. It takes no arguments: every setting is an environment variable
(or a line of a .env file in the current folder), for example

  {ENV_PREFIX}MODEL_PATH=runs/pets/pets.onnx {ENV_PREFIX}PORT=9000 python -m service
  {ENV_PREFIX}HOST=0.0.0.0 {ENV_PREFIX}WORKERS=2 {ENV_PREFIX}API_KEYS=key1,key2 python -m service

docs/settings.md (in the source repository) lists them all, with their defaults. An invalid one stops the
start with one line naming it."""


# Flags a user may try, as other servers spell them, and the setting each means.
FLAG_ALIASES = MappingProxyType({"model": "model_path", "bind": "host", "log": "log_level", "api_key": "api_keys"})


def setting_named(argument: str) -> str | None:
    """The setting an argument names, as a flag (`--port`, `--model-path=x`) or as a variable (`CLASSIFIER_PORT=1`)."""
    name = argument.lstrip("-").partition("=")[0].replace("-", "_").lower().removeprefix(ENV_PREFIX.lower())
    name = FLAG_ALIASES.get(name, name)
    return name if name in Settings.model_fields else None


def check_arguments(arguments: list[str]) -> None:
    """`--help` prints the usage; any argument is a mistake (a flag would otherwise be ignored silently, and the
    server would start on the defaults): a flag that names a setting says which variable to set instead."""
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE)
        raise SystemExit(0)
    if not arguments:
        return
    named = [setting for argument in arguments if (setting := setting_named(argument))]
    hint = f"; set {ENV_PREFIX}{named[0].upper()} in the environment instead" if named else ""
    print(
        f"error: python -m service takes no arguments (got {reprlib.repr(arguments[0])}){hint}: settings are "
        "environment variables (python -m service --help; docs/settings.md in the source repository)",
        file=sys.stderr,
    )
    raise SystemExit(2)


def main() -> None:
    """Start the server. A mistake found before serving (an argument, an invalid setting, a model path that holds
    no ONNX model, a port in use) exits with status 2 and one line saying what is wrong and what to do."""
    check_arguments(sys.argv[1:])
    # SIGHUP reloads the model once the app runs; before that (and after), it must not end the process
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = load_settings()
        check_model_file(settings.model_path)
        listeners = listening_sockets(settings.host, settings.port)
    except (SettingsError, StartupMistake) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("event=listening url=http://%s:%d", host, settings.port)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # configure_logging's, in this process and (by service.app.worker_app) in each worker
        "access_log": False,  # the service logs one structured line per request itself
        "timeout_graceful_shutdown": UVICORN_GRACE_S,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }
    if settings.workers == 1:
        drain = DrainState()
        config = connection_limits(settings).apply(uvicorn.Config(create_app(settings, drain), **options))
        server = DrainingServer(config, drain_timeout_s=settings.drain_timeout_s, drain=drain)
        server.run(sockets=listeners)
        if not server.started:
            raise SystemExit(3)  # the model did not load: the reason is logged
        if drain.failure is not None:
            raise SystemExit(1)  # a fatal fault: the reason is logged; let the orchestrator restart us
        return
    serve_workers(settings, options, listeners)


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The HTTP server's per-connection limits, from the settings."""
    return ConnectionLimits(
        max_head_bytes=settings.max_head_bytes,
        max_headers=settings.max_headers,
        head_timeout_s=settings.head_timeout_s,
        max_pipelined=settings.max_pipelined_requests,
        write_timeout_s=settings.write_timeout_s,
        max_connections=settings.max_connections,
    )


def serve_workers(settings: Settings, options: dict[str, Any], listeners: list[socket.socket]) -> None:
    """Several workers, each building its app from the settings. Metrics are shared through files in a folder
    made for this run and removed at exit; in a folder given as PROMETHEUS_MULTIPROC_DIR, only the metric files
    are removed, before (an earlier run's would be counted again) and after."""
    given = os.environ.get(MULTIPROCESS_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="classifier-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_metric_files(folder)
    try:
        # The app is made in each worker, with its drain state (DrainingWorker passes it to worker_app).
        config = uvicorn.Config("service.app:worker_app", factory=True, workers=settings.workers, **options)
        connection_limits(settings).apply(config)
        log.info("event=workers_starting workers=%d metrics_dir=%s", settings.workers, folder)
        supervisor = WorkerSupervisor(
            config, listeners, WorkerApp(worker_app, settings.drain_timeout_s), on_worker_died=forget_process
        )
        supervisor.run()
        if supervisor.startup_failed:
            raise SystemExit(3)  # as with one worker: the reason is logged
    finally:
        remove_metric_files(folder)
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

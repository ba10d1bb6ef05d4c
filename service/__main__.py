"""`python -m service`: read the settings, then serve with uvicorn (one process, or a supervisor and workers)."""

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import uvicorn

from service.app import create_app
from service.config import Settings, SettingsError, load_settings
from service.connections import ConnectionLimits
from service.lifecycle import DRAIN, DrainingServer, WorkerSupervisor
from service.logs import logging_config
from service.metrics import MULTIPROCESS_ENV, forget_process, remove_metric_files

log = logging.getLogger("service.main")

# After draining, uvicorn's own graceful shutdown only has to close idle connections.
UVICORN_GRACE_S = 2


def main() -> None:
    """Start the server; invalid settings exit with status 2 and a message naming the variables."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    options = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": logging_config(settings.log_level, settings.log_format),  # applied in every worker too
        "access_log": False,  # the service logs one structured line per request itself
        "timeout_graceful_shutdown": UVICORN_GRACE_S,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }
    if settings.workers == 1:
        config = connection_limits(settings).apply(uvicorn.Config(create_app(settings), **options))
        server = DrainingServer(config, drain_timeout_s=settings.drain_timeout_s)
        server.run()
        if not server.started:
            raise SystemExit(3)  # the model did not load: the reason is logged
        if DRAIN.failure is not None:
            raise SystemExit(1)  # a fatal fault: the reason is logged; let the orchestrator restart us
        return
    serve_workers(settings, options)


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


def serve_workers(settings: Settings, options: dict[str, object]) -> None:
    """Several workers, each building its app from the settings. Metrics are shared through files in a folder
    made for this run and removed at exit; in a folder given as PROMETHEUS_MULTIPROC_DIR, only the metric files
    are removed, before (an earlier run's would be counted again) and after."""
    given = os.environ.get(MULTIPROCESS_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="classifier-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_metric_files(folder)
    try:
        config = uvicorn.Config("service.app:create_app", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]
        connection_limits(settings).apply(config)
        log.info("event=workers_starting workers=%d metrics_dir=%s", settings.workers, folder)
        supervisor = WorkerSupervisor(
            config, [config.bind_socket()], drain_timeout_s=settings.drain_timeout_s, on_worker_died=forget_process
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

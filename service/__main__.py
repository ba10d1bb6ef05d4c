"""`python -m service`: read the settings, then serve with uvicorn."""

import os
import sys
import tempfile

import uvicorn

from service.app import create_app
from service.config import SettingsError, load_settings
from service.lifecycle import DrainingServer
from service.logs import logging_config
from service.metrics import MULTIPROCESS_ENV

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
    }
    if settings.workers == 1:
        server = DrainingServer(
            uvicorn.Config(create_app(settings), **options), drain_timeout_s=settings.drain_timeout_s
        )
        server.run()
        if not server.started:
            raise SystemExit(3)  # the model did not load: the reason is logged
        return
    # Several workers: each re-reads the settings and builds its app; metrics are shared through files.
    os.environ.setdefault(MULTIPROCESS_ENV, tempfile.mkdtemp(prefix="classifier-metrics-"))
    uvicorn.run("service.app:create_app", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

"""`python -m service`: read the settings, then serve with uvicorn."""

import copy
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.config import SettingsError, load_settings


def logging_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up plus our own loggers, one key=value line per event."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["service"] = {"format": "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"}
    config["handlers"]["service"] = {
        "class": "logging.StreamHandler",
        "formatter": "service",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["service"] = {"handlers": ["service"], "level": level.upper(), "propagate": False}
    return config


def main() -> None:
    """Start the server; invalid settings exit with status 2 and a message naming the variables."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    # One worker runs the app built here; several need an import path, and each worker re-reads the settings.
    app: FastAPI | str = create_app(settings) if settings.workers == 1 else "service.app:create_app"
    uvicorn.run(
        app,
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=logging_config(settings.log_level),  # applied in every worker process too
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()

"""Logging set-up for the server process and each uvicorn worker: key=value text or one JSON object per line."""

import copy
import logging
from typing import Any, Literal

import uvicorn.config

LogFormat = Literal["json", "text"]

_TEXT_FORMAT = "%(asctime)s level=%(levelname)s pid=%(process)d logger=%(name)s %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"


def lean_records() -> None:
    """Skip what no log line of ours shows: the caller's file and line, thread and multiprocessing names. These
    are the logging HOWTO's "Optimization" switches; each record is written per request, on the event loop."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """uvicorn's logging config, with our loggers added and uvicorn's own lines in the same format."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",  # half the time of the json module's, per request
            "fmt": _JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        }
    else:
        formatter = {"format": _TEXT_FORMAT}
    config["formatters"]["service"] = formatter
    config["handlers"]["service"] = {
        "class": "logging.StreamHandler",
        "formatter": "service",
        "stream": "ext://sys.stderr",
    }
    config["handlers"]["default"]["formatter"] = "service"
    config["loggers"]["service"] = {"handlers": ["service"], "level": level.upper(), "propagate": False}
    config["loggers"]["uvicorn"]["level"] = level.upper()
    # python-multipart logs a plain-text warning for each malformed body it meets: any client could write one per
    # request, without a request id. The client gets the error in its answer; the log keeps only errors.
    config["loggers"]["python_multipart"] = {"handlers": ["service"], "level": "ERROR", "propagate": False}
    return config

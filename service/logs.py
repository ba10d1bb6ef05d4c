"""Logging set-up for the server process and each uvicorn worker: key=value text or one JSON object per line."""

import copy
import logging
import logging.config
import sys
from typing import Any, Literal, TextIO

import pythonjsonlogger.core
import uvicorn.config

LogFormat = Literal["json", "text"]

_TEXT_FORMAT = "%(asctime)s level=%(levelname)s pid=%(process)d logger=%(name)s %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"
# uvicorn puts a copy of some messages with terminal colour codes on the record (`color_message`) for its own
# coloured formatter; a JSON line would carry it as a field of escape codes.
_NOT_FIELDS = (*pythonjsonlogger.core.RESERVED_ATTRS, "color_message")


def configure_logging(level: str, log_format: Literal["auto", "json", "text"]) -> None:
    """The process's logging, set once at its start (by `python -m service`, and in each worker; never by create_app):
    our format for our lines and uvicorn's, on stderr, and lean records."""
    logging.config.dictConfig(logging_config(level, chosen_format(log_format, sys.stderr)))
    lean_records()


def chosen_format(log_format: Literal["auto", "json", "text"], stream: TextIO) -> LogFormat:
    """The format the setting asks for; "auto" is text for a person at a terminal, JSON for anything else."""
    if log_format == "auto":
        return "text" if stream.isatty() else "json"
    return log_format


def lean_records() -> None:
    """Skip what no log line of ours shows: the caller's file and line, thread and multiprocessing names. These
    are the logging HOWTO's "Optimization" switches; each record is written per request, on the event loop."""
    logging._srcfile = None
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
            "reserved_attrs": _NOT_FIELDS,
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
    # The service logs one structured line per request itself (service.access): uvicorn's access lines are off here,
    # whatever uvicorn's own access_log option, and its coloured formatters are not used.
    del config["formatters"]["default"], config["formatters"]["access"], config["handlers"]["access"]
    config["loggers"]["uvicorn.access"] = {"handlers": [], "propagate": False}
    # python-multipart logs a plain-text warning for each malformed body it meets: any client could write one per
    # request, without a request id. The client gets the error in its answer; the log keeps only errors.
    config["loggers"]["python_multipart"] = {"handlers": ["service"], "level": "ERROR", "propagate": False}
    return config

"""`python -m service`: read the settings, then serve with uvicorn."""

import logging
import sys

import uvicorn

from service.app import create_app
from service.config import SettingsError, load_settings


def main() -> None:
    """Start the server; invalid settings exit with status 2 and a message naming the variables."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()

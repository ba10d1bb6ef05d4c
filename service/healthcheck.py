"""`python -m service.healthcheck`: exit 0 if this machine's server answers readiness, 1 otherwise.

For container HEALTHCHECKs (the slim image has no curl): reads the same CLASSIFIER_PORT as the server."""

import sys
import urllib.error
import urllib.request

from service.config import load_settings

TIMEOUT_S = 3


def main() -> int:
    """Probe http://127.0.0.1:PORT/ready."""
    url = f"http://127.0.0.1:{load_settings().port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            ready = response.status == 200
    except (urllib.error.URLError, OSError) as error:
        print(f"not ready: {url}: {error}", file=sys.stderr)
        return 1
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())

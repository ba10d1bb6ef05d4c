"""TensorFlow, imported once per process without the start-up lines that its log level does not reach.

TensorFlow's C++ code logs a few lines while it is imported, before it has read TF_CPP_MIN_LOG_LEVEL: "oneDNN custom
operations are on ..." (twice: two of its extension modules each carry a copy of that code) after absl's "All log
messages before absl::InitializeLog() ..." notice. `import_tensorflow` applies the level to those lines too, so the
training commands (which set it to 2) print none of them; warnings and errors at or above the level still show."""

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

_ABSL_LINE = re.compile(rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")  # severity, MMDD, time, thread, file:line
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITIES = b"IWEF"


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, with the lines it logs on its first import filtered by TF_CPP_MIN_LOG_LEVEL."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with _stderr_filtered(_min_log_level()):
        import tensorflow
    return tensorflow


def shown(line: bytes, min_level: int) -> bool:
    """Whether TensorFlow's `line` passes TF_CPP_MIN_LOG_LEVEL `min_level` (0 info and up, 1 warnings and up, 2
    errors, 3 fatal only); lines that are not absl's (Python's warnings, say) always do."""
    if (found := _ABSL_LINE.match(line)) is not None:
        return _SEVERITIES.index(found[1]) >= min_level
    return min_level == 0 or not line.startswith(_ABSL_NOTICE)


def _min_log_level() -> int:
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    return int(level) if level.isdigit() else 0


@contextlib.contextmanager
def _stderr_filtered(min_level: int) -> Iterator[None]:
    """Collect what is written to file descriptor 2 meanwhile (C++ writes there directly), then write back the lines
    that `shown` keeps."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as collected:
        os.dup2(collected.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            collected.seek(0)
            kept = b"".join(line for line in collected.read().splitlines(keepends=True) if shown(line, min_level))
            if kept:
                os.write(2, kept)

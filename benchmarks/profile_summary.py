"""Summarize a py-spy raw profile (`py-spy record --format raw`): % of all samples per function, inclusive (the
function or anything it called) and self (the function itself), as in benchmarks/results/profiles/*.summary.txt.

    python -m benchmarks.profile_summary PROFILE.txt [TOP]
"""

import collections
import sys
from pathlib import Path


def function(frame: str) -> str:
    """`name (file:line)` -> `name (file)`, with site-packages and the standard library's prefix dropped."""
    name, _, location = frame.partition(" (")
    path = location.rsplit(":", 1)[0].rstrip(")")
    for prefix in ("site-packages/", "python3.11/"):
        path = path.split(prefix)[-1]
    return f"{name} ({path})"


def summarize(text: str, top: int) -> list[str]:
    """The summary's lines."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        functions = [function(frame) for frame in stack.split(";")]
        for name in set(functions):
            inclusive[name] += samples
        own[functions[-1]] += samples
    lines = [f"samples {total}", "", "top inclusive:"]
    lines += [f"{100 * n / total:5.1f}% {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "top self:"] + [f"{100 * n / total:5.1f}% {name}" for name, n in own.most_common(top // 2)]
    return lines


def main() -> None:
    """Print the summary of the profile named on the command line."""
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 80
    print("\n".join(summarize(Path(sys.argv[1]).read_text(), top)))


if __name__ == "__main__":
    main()

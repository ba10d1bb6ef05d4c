"""One image at batch 1 on one ONNX Runtime CPU thread, for several model files measured side by side.

    python -m benchmarks.model_latency models/default.onnx OTHER.onnx [--rounds 15] [--seconds 1]

The files are measured in alternating rounds (each round: every file for `--seconds`, in turn), so a slower or
faster stretch of this shared machine falls on all of them alike. Prints, per file, the median of the rounds'
median milliseconds per image, with the fastest and slowest round, and each file's ratio to the first.
"""

import argparse
import functools
import statistics
from pathlib import Path

import numpy as np

from service.inference import CPU, OnnxModel
from training.card import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files; the first is the reference")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds (default 15)")
    parser.add_argument("--seconds", type=float, default=1.0, help="each file's time per round (default 1 s)")
    args = parser.parse_args()

    models = [OnnxModel(path, providers=(CPU,), intra_op_threads=1, inter_op_threads=1) for path in args.models]
    rng = np.random.default_rng(0)
    rounds: list[list[float]] = [[] for _ in models]
    for model in models:  # warm-up
        image = rng.integers(0, 256, (1, model.info.height, model.info.width, 3), np.uint8)
        median_seconds(functools.partial(model.predict, image), 0.5)
    for _ in range(args.rounds):
        for model, times in zip(models, rounds, strict=True):
            image = rng.integers(0, 256, (1, model.info.height, model.info.width, 3), np.uint8)
            times.append(median_seconds(functools.partial(model.predict, image), args.seconds, at_least=20) * 1000)
    reference = statistics.median(rounds[0])
    print(f"batch 1, 1 thread, {args.rounds} alternating rounds of {args.seconds:g} s each; ms per image")
    for path, model, times in zip(args.models, models, rounds, strict=True):
        median = statistics.median(times)
        print(
            f"{path}  {model.info.name} {model.info.version}: median {median:.3f} ms "
            f"(rounds {min(times):.3f}-{max(times):.3f}), {median / reference:.2f}x the first, "
            f"{path.stat().st_size / 1e6:.2f} MB"
        )


if __name__ == "__main__":
    main()

"""Soak: constant moderate load on the real server for a long time; throughput, p99 and memory over time.

    python -m benchmarks.soak [--minutes 10] [--rate 200] [--attack]        (make soak: with --attack)

With --attack, hostile clients (benchmarks/attacks.py: issue 23's table, one attack after another) run beside
the normal traffic all along. Writes benchmarks/results/soak.md, soak.json and soak.png (soak-attack.* with
--attack). Passes when no normal request failed, their p99 stayed under 100 ms with --attack, and resident memory
(the server's and its decoder processes') grew by less than 10% between the end of the first minute (warm) and the
end of the run.
"""

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.attacks import Attacker
from benchmarks.serving import REPO, RESULTS, cpu_name, hey_rows, multipart_body, sample_images, service
from tests.helpers import tree_rss_mb as rss_mb

WINDOW_S = 30
CONCURRENCY = 8


def main() -> None:
    """Run the soak and write its results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", default=str(REPO / "models" / "default.onnx"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second offered (1 image each)")
    parser.add_argument("--attack", action="store_true", help="hostile clients beside the normal traffic")
    args = parser.parse_args()
    attacker = None
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    body = logs / "soak-one-image.body"
    body.write_bytes(multipart_body(sample_images(1)))
    seconds = args.minutes * 60
    memory: list[tuple[float, float]] = []
    with service(Path(args.model), logs) as (url, pid):
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.wait(5):
                memory.append((time.monotonic() - started, rss_mb(pid)))

        sampler = threading.Thread(target=sample)
        sampler.start()
        memory.append((0.0, rss_mb(pid)))
        if args.attack:
            attacker = Attacker(int(url.rsplit(":", 1)[1]))
            attacker.start()
        rows = hey_rows(url, body, concurrency=CONCURRENCY, seconds=seconds, rate_per_worker=args.rate / CONCURRENCY)
        stop.set()
        sampler.join()
        if attacker:
            attacker.stop()
        memory.append((time.monotonic() - started, rss_mb(pid)))

    windows = []
    for start in np.arange(0, seconds, WINDOW_S):
        inside = [(latency, status) for latency, status, offset in rows if start <= offset < start + WINDOW_S]
        ok = [latency * 1000 for latency, status in inside if status == 200]
        windows.append({
            "start_s": float(start),
            "requests_per_s": round(len(ok) / WINDOW_S, 1),
            "p99_ms": round(float(np.percentile(ok, 99)), 2) if ok else None,
        })  # fmt: skip
    errors = sum(status != 200 for _, status, _ in rows)
    warm = next(rss for at, rss in memory if at >= 60) if seconds > 60 else memory[0][1]
    final = memory[-1][1]
    growth = (final - warm) / warm
    all_ok = sorted(latency * 1000 for latency, status, _ in rows if status == 200)
    summary = {
        "machine": f"{cpu_name()}, load generator on the same machine",
        "model": str(Path(args.model).relative_to(REPO)),
        "minutes": args.minutes,
        "offered_rps": args.rate,
        "requests": len(rows),
        "errors": errors,
        "throughput_rps": round(len(all_ok) / seconds, 1),
        "p50_ms": round(float(np.percentile(all_ok, 50)), 2),
        "p99_ms": round(float(np.percentile(all_ok, 99)), 2),
        "rss_start_mb": round(memory[0][1], 1),
        "rss_warm_mb": round(warm, 1),
        "rss_end_mb": round(final, 1),
        "rss_growth_after_warm_up": round(growth, 4),
        "attacks": (
            {f"{name}: {result}": count for (name, result), count in sorted(attacker.outcomes.items())}
            if attacker
            else None
        ),
        "passed": errors == 0 and growth < 0.10 and (not attacker or float(np.percentile(all_ok, 99)) < 100),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "soak-attack" if attacker else "soak"
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"summary": summary, "windows": windows, "memory": memory}, indent=2)
    )
    lines = [f"# Soak{' beside hostile clients' if attacker else ''}", ""]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(windows, memory, RESULTS / f"{name}.png")
    print(json.dumps(summary, indent=2))
    if not summary["passed"]:
        raise SystemExit("soak failed: errors or memory growth")


def plot(windows: list[dict[str, float | None]], memory: list[tuple[float, float]], path: Path) -> None:
    """Throughput, p99 and resident memory over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    minutes = [float(w["start_s"] or 0) / 60 for w in windows]
    axes[0].plot(minutes, [w["requests_per_s"] for w in windows], marker=".")
    axes[0].set_ylabel("requests/s")
    axes[1].plot(minutes, [w["p99_ms"] for w in windows], marker=".", color="tab:red")
    axes[1].set_ylabel("p99 ms")
    axes[2].plot([at / 60 for at, _ in memory], [rss for _, rss in memory], color="tab:green")
    axes[2].set_ylabel("RSS MB")
    axes[2].set_xlabel("minutes")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Soak: throughput and p99 per {WINDOW_S} s window, resident memory every 5 s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()

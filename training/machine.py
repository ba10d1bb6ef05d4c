"""The machine a run trained on, as measured: CPU model, CPU count and GPUs (for the run record and the card)."""

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name, from /proc/cpuinfo (the architecture where that is missing)."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(gpus: list[str]) -> str:
    """One line: the CPU, how many CPUs this process may use, and the GPUs (`gpus`, by name) or "no GPU"."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()}, {cpus} CPUs, " + (", ".join(gpus) if gpus else "no GPU")

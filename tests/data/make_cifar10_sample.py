"""Regenerate tests/data/cifar10-sample/: 30 real images per class, a seeded random draw from the validation split
that training holds out of the shared CIFAR-10 JPEG folder (seed 0, fraction 0.1), copied byte for byte.

A random draw, not the first images of each class: the low-numbered files are harder (the stage-1 default model
scored 84.7% on files 0-499 against 88.7% on 2500-4999), so the first 25 per class under-stated the model.

    python -m tests.data.make_cifar10_sample data/cifar10-train
"""

import shutil
import sys
from pathlib import Path

import numpy as np

from training.data import IMAGE_SUFFIXES, Dataset, stratified_split

PER_CLASS = 30
OUT = Path(__file__).resolve().parent / "cifar10-sample"


def main(root: Path) -> None:
    """Copy PER_CLASS held-out images of each class, drawn at random (seed 0), from `root` into OUT."""
    names = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    files = [
        path for name in names for path in sorted((root / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    labels = np.asarray([names.index(path.parent.name) for path in files])
    # The same split as training: stratified_split only looks at labels and the seed.
    _, validation = stratified_split(Dataset(np.arange(len(files)), labels, names), 0.1, seed=0)
    rng = np.random.default_rng(0)
    shutil.rmtree(OUT, ignore_errors=True)
    for label, name in enumerate(names):
        chosen = rng.choice(validation.images[validation.labels == label], PER_CLASS, replace=False)
        (OUT / name).mkdir(parents=True)
        for index in chosen:
            shutil.copyfile(files[index], OUT / name / files[index].name)
    print(f"wrote {PER_CLASS * len(names)} images to {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""A training run's folder: the name of every file in it, and reading and writing what it holds. Training, export,
evaluation and the model card all find a run's files here; none of them needs the trainer (or TensorFlow) for it."""

import csv
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.data import Splits, load_splits
from training.evaluation import CONFUSION_PNG, METRICS_FILE

PARITY_COUNT = 256
"""Validation images kept with a run, on which the export compares Keras with ONNX Runtime."""


class RunError(Exception):
    """A run cannot start or go on: a run is in the way, none is where one is needed, or it cannot be built."""


@dataclass
class RunRecord:
    """What run.json holds: the config the run was started with, and what it found in its data and machine."""

    config: TrainConfig
    class_names: list[str]
    source: str
    """The data as the loader described it (such as 'image folder data/photos')."""
    command: str | None = None
    """The command line that started the run (None when started from Python)."""
    machine: str | None = None
    """The machine it trained on, as measured (`training.machine.describe`)."""

    def splits(self) -> Splits:
        """The run's data, split as it was for training (same seed, fraction, classes and image size)."""
        return splits_for(self.config, self.class_names)


class RunDirectory:
    """A training run's folder and its files.

    run.json (the config and the class names), history.csv (a row per epoch, appended as training goes) and
    history.json (the same, once finished), last.keras (the checkpoint after each epoch) and backup/ (Keras's
    state for resuming), model.keras (the finished model), parity_images.npy (validation images for the export's
    parity gate), metrics.json and confusion_matrix.png (the validation report) and training_curves.png.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.record_file = self.path / "run.json"
        self.history_csv = self.path / "history.csv"
        self.history_json = self.path / "history.json"
        self.last_checkpoint = self.path / "last.keras"
        self.backup_dir = self.path / "backup"
        self.final_model = self.path / "model.keras"
        self.parity_images_file = self.path / "parity_images.npy"
        self.metrics_file = self.path / METRICS_FILE
        self.confusion = self.path / CONFUSION_PNG
        self.curves = self.path / "training_curves.png"

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def exists(self) -> bool:
        """Whether a run was started here (its run.json is written before the first epoch)."""
        return self.record_file.is_file()

    def read_record(self) -> RunRecord:
        """The run's saved config, class names, command and machine."""
        if not self.exists():
            raise RunError(f"{self.path} is not a training run: it has no {self.record_file.name}")
        raw = json.loads(self.record_file.read_text())
        return RunRecord(
            TrainConfig.from_record(raw),
            list(raw["class_names"]),
            raw.get("source", raw["data"]),
            raw.get("command"),
            raw.get("machine"),
        )

    def write_record(self, record: RunRecord) -> None:
        """Save the config and what the run found (flat: the config's fields, then the rest)."""
        self.path.mkdir(parents=True, exist_ok=True)
        found = {key: value for key, value in dataclasses.asdict(record).items() if key != "config"}
        self.record_file.write_text(json.dumps(dataclasses.asdict(record.config) | found, indent=2))

    def check_free(self, *, overwrite: bool) -> None:
        """Raise RunError if this folder holds anything and `overwrite` was not asked for."""
        if self.path.exists() and any(self.path.iterdir()) and not overwrite:
            held = "a training run" if self.exists() else "files"
            raise RunError(
                f"{self.path} already holds {held}: give another --run-dir, --resume to continue a run, or "
                "--overwrite to start again in it"
            )

    def files(self) -> list[Path]:
        """Every file and folder a run writes here."""
        return [value for value in vars(self).values() if isinstance(value, Path) and value != self.path]

    def clear(self) -> None:
        """Remove what an earlier run wrote here (only the run's own files), so a new run starts at epoch 0."""
        for path in self.files():
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def load_splits(self) -> Splits:
        """The run's data, split as it was for training (same seed, fraction, classes and image size)."""
        return self.read_record().splits()

    def save_parity_images(self, images: np.ndarray) -> None:
        """Keep up to PARITY_COUNT validation images for the export's parity gate."""
        np.save(self.parity_images_file, images[:PARITY_COUNT])

    def load_parity_images(self, image_size: tuple[int, int]) -> tuple[np.ndarray, int]:
        """The saved validation images, topped up with seeded random images to PARITY_COUNT, and how many of them
        are real."""
        file = self.parity_images_file
        images = np.load(file)[:PARITY_COUNT] if file.exists() else np.zeros((0, *image_size, 3), dtype=np.uint8)
        real = len(images)
        if real < PARITY_COUNT:
            rng = np.random.default_rng(0)
            extra = rng.integers(0, 256, size=(PARITY_COUNT - real, *image_size, 3), dtype=np.uint8)
            images = np.concatenate([images, extra])
        return images, real

    def read_history(self) -> list[dict[str, float]]:
        """A row per epoch from history.csv; an epoch logged twice (a resumed run) keeps its last row."""
        rows: dict[int, dict[str, float]] = {}
        with self.history_csv.open() as handle:
            for row in csv.DictReader(handle):
                epoch = int(row["epoch"])
                rows[epoch] = {key: float(value) for key, value in row.items() if value != ""}
        return [rows[epoch] for epoch in sorted(rows)]

    def write_history(self, history: list[dict[str, float]]) -> None:
        """Save the finished run's history as history.json."""
        self.history_json.write_text(json.dumps(history, indent=2))

    def history(self) -> list[dict[str, float]]:
        """The finished run's history (history.json)."""
        history: list[dict[str, float]] = json.loads(self.history_json.read_text())
        return history

    def metrics(self) -> dict[str, Any]:
        """The validation report's figures written at the end of training, or {} if there are none."""
        if not self.metrics_file.exists():
            return {}
        metrics: dict[str, Any] = json.loads(self.metrics_file.read_text())
        return metrics


def splits_for(config: TrainConfig, class_names: list[str] | None = None) -> Splits:
    """The data of a run with this config, split as training splits it; `class_names` (the run's, once known)
    fixes the classes and their order."""
    return load_splits(
        config.data,
        image_size=config.image_size,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        class_names=class_names or config.classes,
        skip_invalid=config.skip_invalid,
    )

"""Evaluation: accuracy, per-class precision/recall/F1, macro averages and a confusion matrix (JSON + PNG)."""

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.inference import CPU, OnnxModel
from training.data import Dataset

Predictor = Callable[[np.ndarray], np.ndarray]
"""Maps a uint8 NHWC batch to class probabilities (N, classes)."""

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"


def keras_predictor(model: Any, batch_size: int = 256) -> Predictor:
    """A predictor backed by a Keras model."""
    return lambda images: np.asarray(model.predict(images, batch_size=batch_size, verbose=0))


def onnx_model(path: Path, threads: int = 0) -> OnnxModel:
    """The exported model at `path`, opened on the CPU exactly as the service opens it (`threads` 0: ONNX
    Runtime's choice)."""
    return OnnxModel(path, providers=(CPU,), intra_op_threads=threads, inter_op_threads=threads)


def onnx_predictor(model: OnnxModel, batch_size: int = 256) -> Predictor:
    """A predictor backed by an ONNX Runtime model, run `batch_size` images at a time."""

    def predict(images: np.ndarray) -> np.ndarray:
        chunks = [model.predict(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        return np.concatenate(chunks)

    return predict


def evaluate_model(predict: Predictor, dataset: Dataset) -> dict[str, Any]:
    """Run `predict` over `dataset` and compute every metric."""
    probabilities = predict(dataset.images)
    return compute_metrics(dataset.labels, probabilities.argmax(axis=1), dataset.class_names)


def compute_metrics(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, their macro averages, and the confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted ones. A class never predicted has
    precision 0 (and likewise recall 0 for a class absent from `labels`), as scikit-learn's zero_division=0.
    """
    num_classes = len(class_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positives = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    per_class = {
        name: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": round(float(true_positives.sum() / max(len(labels), 1)), 4),
        "examples": len(labels),
        "macro_precision": round(float(precision.mean()), 4),
        "macro_recall": round(float(recall.mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
    }


def write_report(metrics: dict[str, Any], out_dir: Path) -> None:
    """Write metrics.json and confusion_matrix.png into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), metrics["class_names"], out_dir / CONFUSION_PNG)


def plot_confusion_matrix(confusion: np.ndarray, class_names: list[str], path: Path) -> None:
    """A confusion-matrix heat map with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(5.0, 0.6 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(confusion, cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    axes.set_title(f"Confusion matrix (accuracy {accuracy:.1%}, n={confusion.sum()})")
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, column), count in np.ndenumerate(confusion):
        colour = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    _save(figure, path)


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch, training and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axes in (("loss", loss_axes), ("accuracy", accuracy_axes)):
        axes.plot(epochs, [row.get(key, np.nan) for row in history], label=f"train {key}")
        axes.plot(epochs, [row.get(f"val_{key}", np.nan) for row in history], label=f"validation {key}")
        axes.set_xlabel("epoch")
        axes.set_title(key)
        axes.grid(alpha=0.3)
        axes.legend()
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    """Write `figure` as a PNG and close it. A label in a script the font lacks (an emoji in a class name) is drawn
    as a box, quietly: matplotlib's warning for each missing glyph is noise in a training log."""
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    plt.close(figure)

"""Model card: what a model is, how it was made, how good and how fast it is (markdown and JSON)."""

import functools
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.config import RECIPE
from training.evaluation import evaluate_model, onnx_model, onnx_predictor
from training.machine import cpu_name
from training.run import RunDirectory, RunError

NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class CardPaths:
    """A model's card and figures, each named after the model file, so no model's card replaces another's."""

    markdown: Path
    data: Path
    curves: Path
    confusion: Path


def card_paths(model: Path, out_dir: Path) -> CardPaths:
    """Where the card of the model file `model` goes in `out_dir`: MODEL.card.md, MODEL.card.json and figures."""
    stem = out_dir / model.stem
    return CardPaths(
        Path(f"{stem}.card.md"), Path(f"{stem}.card.json"),
        Path(f"{stem}.training_curves.png"), Path(f"{stem}.confusion_matrix.png"),
    )  # fmt: skip


def median_seconds(call: Callable[[], object], seconds: float, at_least: int = 10) -> float:
    """The median time of `call()`, called again and again for `seconds` (and at least `at_least` times)."""
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(times) < at_least:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_latency(
    onnx_path: Path, batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128), seconds: float = 3.0
) -> dict[str, Any]:
    """ONNX Runtime on one CPU thread: median ms per image at each batch size (the issue's yardstick)."""
    model = onnx_model(onnx_path, threads=1)
    per_image: dict[int, float] = {}
    for batch in batch_sizes:
        images = np.random.default_rng(0).integers(0, 256, (batch, model.info.height, model.info.width, 3), np.uint8)
        for _ in range(5):
            model.predict(images)
        per_image[batch] = round(median_seconds(functools.partial(model.predict, images), seconds) * 1000 / batch, 4)
    best = min(per_image, key=lambda batch: per_image[batch])
    return {
        "threads": 1,
        "ms_per_image_by_batch": per_image,
        "batch1_ms": per_image[1],
        "best_batch": best,
        "best_ms_per_image": per_image[best],
    }


def training_stages(run_dir: Path) -> list[dict[str, Any]]:
    """The run and the runs it started from (`init_from`, when that model sits in a run dir), oldest first."""
    stages: list[dict[str, Any]] = []
    current: RunDirectory | None = RunDirectory(run_dir)
    while current is not None:
        record = current.read_record()
        config = record.config
        history = current.history()
        seconds = sum(row.get("epoch_seconds", 0.0) for row in history)
        stages.insert(
            0,
            {
                "run_dir": str(current.path),
                "command": record.command,
                "machine": record.machine,
                "recipe": config.recipe,
                "epochs": len(history),
                "hours": round(seconds / 3600, 2),
                "seconds": round(seconds, 1),
                "final_validation_accuracy": history[-1].get("val_accuracy") if history else None,
                "history": history,
            },
        )
        parent = RunDirectory(Path(config.init_from).parent) if config.init_from else None
        current = parent if parent is not None and parent.history_json.is_file() else None
    return stages


def combined_history(stages: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Every stage's epochs in one history, numbered on from one stage to the next."""
    rows: list[dict[str, float]] = []
    for stage in stages:
        rows.extend(row | {"epoch": len(rows)} for row in stage["history"])
    return rows


def build_card(
    run_dir: Path,
    onnx_path: Path,
    *,
    reproduce: str | None = None,
    trained_on_machine: str | None = None,
    latency_seconds: float = 3.0,
) -> dict[str, Any]:
    """Gather the card's facts from the run directory and the exported model; the accuracy figures are the
    exported file's own, measured on the run's validation split. `reproduce` and `trained_on_machine` default to
    what the runs and the export recorded: their command lines, and the machine as measured."""
    import keras

    from training.models import count_flops, with_flip_averaging

    run = RunDirectory(run_dir)
    record = run.read_record()
    exported = onnx_model(onnx_path)
    if list(exported.info.labels) != record.class_names:
        raise RunError(
            f"{onnx_path} is not an export of {run_dir}: its classes {list(exported.info.labels)} are not the run's "
            f"{record.class_names}"
        )
    metrics = evaluate_model(onnx_predictor(exported), record.splits().validation)
    stages = training_stages(run_dir)
    model = keras.saving.load_model(run.final_model, compile=False)
    properties = exported.info.metadata
    onnx_bytes = onnx_path.read_bytes()
    flip_averaging = properties.get("test_time_augmentation")
    commands = [stage["command"] for stage in stages] + [properties.get("export_command")]
    machines = list(dict.fromkeys(stage["machine"] for stage in stages if stage["machine"]))
    config, folder = record.config, record.source.startswith("image folder")
    seconds = sum(stage["seconds"] for stage in stages)
    return {
        "name": properties.get("model_name"),
        "version": properties.get("model_version"),
        "file": onnx_path.name,
        "file_bytes": len(onnx_bytes),
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "input": f"image: uint8 [batch, {exported.info.height}, {exported.info.width}, 3], raw RGB (the model "
        "normalises)",
        "output": "probabilities: float32 [batch, classes]",
        "classes": record.class_names,
        "data": {
            "source": record.source,
            "validation_examples": metrics["examples"],
            "validation_split": (
                f"a stratified {config.validation_fraction:.0%} of the folder held out (seed {config.seed})"
                if folder
                else "the official CIFAR-10 test split"
            ),
            "test_split": "none: every choice was made on the validation split" if folder else "none",
        },
        "architecture": config.architecture,
        "parameters": int(model.count_params()),
        "flops_per_image": count_flops(with_flip_averaging(model) if flip_averaging else model),
        "serving_graph": {
            "test_time_augmentation": flip_averaging,
            "quantization": properties.get("quantization"),
            "float_validation_accuracy": properties.get("float_eval_accuracy"),
        },
        "recipe": stages[-1]["recipe"],
        "reproduce": reproduce or ("\n".join(commands) if all(commands) else NOT_RECORDED),
        "training": {
            "epochs_run": sum(stage["epochs"] for stage in stages),
            "wall_clock_hours": round(seconds / 3600, 2),
            "wall_clock": _duration(seconds),
            "machine": trained_on_machine or ("; ".join(machines) if machines else NOT_RECORDED),
            "stages": stages,
        },
        "validation": {
            key: metrics[key]
            for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class", "confusion_matrix")
        },
        "latency_onnxruntime_cpu": measure_latency(onnx_path, seconds=latency_seconds) | {"cpu": cpu_name()},
    }


def _duration(seconds: float) -> str:
    """Seconds under a minute, minutes under an hour, hours above."""
    if seconds < 60:
        return f"{seconds:.0f} seconds"
    return f"{seconds / 60:.1f} minutes" if seconds < 3600 else f"{seconds / 3600:.2f} hours"


def render_markdown(card: dict[str, Any]) -> str:
    """The card as markdown."""
    validation = card["validation"]
    latency = card["latency_onnxruntime_cpu"]
    rows = "\n".join(
        f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for name, v in validation["per_class"].items()
    )
    stages = card["training"]["stages"]
    recipe = "\n".join(
        f"| {key} | " + " | ".join(str(stage["recipe"][key]) for stage in stages) + " |" for key in RECIPE
    )
    stage_header = " | ".join(f"stage {number}" for number in range(1, len(stages) + 1))
    stage_results = "\n".join(
        f"- stage {number}: {stage['epochs']} epochs, {_duration(stage['seconds'])}, final validation accuracy "
        f"{stage['final_validation_accuracy']:.2%} (Keras, during training)"
        for number, stage in enumerate(stages, 1)
    )
    figures = Path(card["file"]).stem
    macro = " / ".join(f"{validation[key]:.3f}" for key in ("macro_precision", "macro_recall", "macro_f1"))
    by_batch = ", ".join(f"batch {b}: {ms:.3f} ms" for b, ms in latency["ms_per_image_by_batch"].items())
    graph = card["serving_graph"]
    augmentation = graph["test_time_augmentation"] or "none"
    quantization = (
        f"{graph['quantization']}; the float32 export scored {float(graph['float_validation_accuracy']):.2%}"
        if graph["quantization"]
        else "none (float32)"
    )
    return f"""# Model card: {card["name"]} {card["version"]}

`{card["file"]}` ({card["file_bytes"] / 1e6:.2f} MB, sha256 `{card["sha256"][:16]}...`): {card["input"]};
{card["output"]}. Classes: {", ".join(card["classes"])}.

## Performance

| | |
|---|---|
| validation accuracy | **{validation["accuracy"]:.2%}** ({card["data"]["validation_examples"]} images) |
| macro precision / recall / F1 | {macro} |
| ONNX Runtime, 1 CPU thread, batch 1 | {latency["batch1_ms"]:.3f} ms per image |
| ONNX Runtime, 1 CPU thread, best batch ({latency["best_batch"]}) | {latency["best_ms_per_image"]:.3f} ms per image |

Per image by batch size: {by_batch}.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

![confusion matrix]({figures}.confusion_matrix.png)
![training curves]({figures}.training_curves.png)

## Data

{card["data"]["source"]}; validation: {card["data"]["validation_split"]}. Test split: {card["data"]["test_split"]}.

## Network and recipe

{card["architecture"]}: {card["parameters"]:,} parameters, {card["flops_per_image"] / 1e6:.1f} MFLOPs per image
(a multiply-add counts 2; with flip averaging the network runs twice).

In the exported graph:
- test-time augmentation: {augmentation};
- quantization: {quantization}.

| setting | {stage_header} |
|---|{"---|" * len(stages)}
{recipe}

Trained for {card["training"]["epochs_run"]} epochs in {card["training"]["wall_clock"]} (the epochs' time) on
{card["training"]["machine"]}:

{stage_results}

Reproduce:

```sh
{card["reproduce"]}
```
"""


def write_card(card: dict[str, Any], paths: CardPaths) -> None:
    """Write the card as markdown and as JSON."""
    paths.markdown.write_text(render_markdown(card))
    paths.data.write_text(json.dumps(card, indent=2) + "\n")

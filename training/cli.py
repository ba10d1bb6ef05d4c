"""Command line: `python -m training {train,evaluate,export,card} ...`."""

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError
from training.config import FIELDS, TrainConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before it is imported


PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# TrainConfig fields without a flag of their own: --run-dir is given apart (it is required, and `export` and
# `card` take it too); the input size is fixed by the data's loader.
_NOT_FLAGS = ("run_dir", "image_size")
# The fields that pick a run's data and its split, which `evaluate` takes too.
_SPLIT_FIELDS = ("seed", "validation_fraction", "skip_invalid")


def load_preset(name: str) -> dict[str, object]:
    """The TrainConfig fields stored in training/presets/NAME.json."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(preset.stem for preset in PRESETS_DIR.glob("*.json"))
        raise SystemExit(f"error: unknown preset {name!r}; known: {known}")
    preset: dict[str, object] = json.loads(path.read_text())
    return preset


def _train(args: argparse.Namespace) -> None:
    from training.models import ARCHITECTURES
    from training.train import IncompatibleWeightsError, train

    if args.resume:
        train(TrainConfig(data="", run_dir=args.run_dir), resume=True)
        return
    fields: dict[str, object] = load_preset(args.preset) if args.preset else {}
    fields.pop("description", None)
    # A flag given on the command line overrides the preset; one not given is None and leaves it be.
    fields |= {
        name: getattr(args, name) for name in FIELDS if name not in _NOT_FLAGS and getattr(args, name) is not None
    }
    if "data" not in fields:
        raise SystemExit("error: --data is required unless --resume (or a preset gives it)")
    architecture = fields.get("architecture", "baseline")
    if architecture not in ARCHITECTURES:
        raise SystemExit(f"error: unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    try:
        train(TrainConfig(run_dir=args.run_dir, **fields))  # type: ignore[arg-type]
    except IncompatibleWeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _evaluate(args: argparse.Namespace) -> None:
    from training.data import load_splits
    from training.evaluation import evaluate_model, keras_predictor, onnx_model, onnx_predictor, write_report

    model_path = Path(args.model)
    if not model_path.exists():
        raise SystemExit(f"error: model {model_path} does not exist")
    if model_path.suffix == ".onnx":
        model = onnx_model(model_path)
        predict, image_size = onnx_predictor(model), (model.info.height, model.info.width)
    else:
        import keras

        network = keras.saving.load_model(model_path)
        predict, image_size = keras_predictor(network), tuple(network.input_shape[1:3])
    splits = load_splits(
        args.data,
        image_size=image_size,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        skip_invalid=args.skip_invalid,
    )
    metrics = evaluate_model(predict, splits.validation)
    out_dir = Path(args.out) if args.out else model_path.parent / f"evaluation-{model_path.stem}"
    write_report(metrics, out_dir)
    print(f"accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} examples={metrics['examples']}")
    print(f"report written to {out_dir}")


def _export(args: argparse.Namespace) -> None:
    from training.export import ExportError, export_run

    try:
        path = export_run(
            Path(args.run_dir),
            Path(args.output),
            model_file=args.model,
            name=args.name,
            version=args.version,
            opset=args.opset,
            tolerance=args.tolerance,
            flip_averaging=args.flip_averaging,
            quantize=args.quantize == "int8",
            calibration_images=args.calibration_images,
            max_accuracy_drop=args.max_accuracy_drop,
        )
    except ExportError as error:
        raise SystemExit(f"export failed: {error}") from None
    print(f"exported {path}")


def _card(args: argparse.Namespace) -> None:
    import numpy as np

    from training.card import build_card, combined_history, write_card
    from training.evaluation import plot_confusion_matrix, plot_history

    run_dir, model, out = Path(args.run_dir), Path(args.model), Path(args.out)
    card = build_card(run_dir, model, reproduce=args.reproduce, trained_on_machine=args.machine)
    # The figures the card shows, named after the model: every stage's curves, and the exported file's confusion
    # matrix on the validation split.
    curves, confusion = out / f"{model.stem}.training_curves.png", out / f"{model.stem}.confusion_matrix.png"
    plot_history(combined_history(card["training"]["stages"]), curves)
    plot_confusion_matrix(np.asarray(card["validation"]["confusion_matrix"]), card["classes"], confusion)
    for path in (*write_card(card, out), curves, confusion):
        print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its three commands."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train an image classifier with Keras, evaluate it, and export it to ONNX for the service.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,export,card}")

    train = commands.add_parser("train", help="train a model into a run directory")
    train.add_argument("--run-dir", required=True, help=FIELDS["run_dir"].metadata["help"])
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    train.add_argument("--preset", help="a recipe from training/presets/ (flags given here override it)")
    for name, item in FIELDS.items():
        if name not in _NOT_FLAGS:
            _add_setting(train, item, with_default=False)

    evaluate = commands.add_parser("evaluate", help="evaluate a .keras or .onnx model on a validation split")
    evaluate.add_argument("--model", required=True, help="a .keras or .onnx file")
    evaluate.add_argument("--data", required=True, help="as for train")
    evaluate.add_argument("--out", help="report folder (default: next to the model)")
    for name in _SPLIT_FIELDS:
        _add_setting(evaluate, FIELDS[name], with_default=True)

    export = commands.add_parser("export", help="export a trained run to ONNX, gated on Keras/ORT parity")
    export.add_argument("--run-dir", required=True, help="a finished training run")
    export.add_argument("--output", required=True, help="path of the .onnx file to write")
    export.add_argument("--model", help="a .keras file to export instead of the run's model.keras")
    export.add_argument("--name", help="model name (default: the run's name or architecture)")
    export.add_argument("--version", default="1", help="model version string (default: 1)")
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--tolerance", type=float, default=1e-4, help="max |p_keras - p_onnx| allowed")
    export.add_argument(
        "--flip-averaging",
        action="store_true",
        help="fold test-time augmentation into the graph: average the image's and its mirror's probabilities",
    )
    export.add_argument("--quantize", choices=["int8"], help="post-training static quantization of the export")
    export.add_argument(
        "--calibration-images", type=int, default=512, help="training images that calibrate int8 (default 512)"
    )
    export.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.005,
        help="the most validation accuracy int8 may lose against the float export (default 0.005)",
    )

    card = commands.add_parser("card", help="write a model card (markdown + JSON) for an exported run")
    card.add_argument("--run-dir", required=True, help="the training run")
    card.add_argument("--model", required=True, help="the exported .onnx file")
    card.add_argument("--out", default="models", help="folder for MODEL_CARD.md and model_card.json")
    card.add_argument("--reproduce", default="make train-default export-default card", help="command to record")
    card.add_argument("--machine", default="2-core AMD EPYC CPU, no GPU", help="where it was trained")
    return parser


def _add_setting(parser: argparse.ArgumentParser, item: dataclasses.Field[Any], *, with_default: bool) -> None:
    """The flag of a TrainConfig field: --field-name, typed, its choices and its help from the field. Without
    `with_default` a flag not given is None, so that a preset's value stands."""
    default, help = item.default, item.metadata["help"]
    flag = "--" + item.name.replace("_", "-")
    if default is True:  # on unless turned off
        parser.add_argument(f"--no-{item.name.replace('_', '-')}", dest=item.name, action="store_false",
                            default=True if with_default else None, help=f"turn off: {help}")  # fmt: skip
    elif default is False:
        parser.add_argument(flag, action="store_true", default=False if with_default else None, help=help)
    else:
        shown = "" if default in (None, dataclasses.MISSING) else f" (default: {default})"
        parser.add_argument(
            flag,
            type=_flag_type(item),
            choices=item.metadata["choices"] or None,
            default=default if with_default else None,
            help=help + shown,
        )


def _flag_type(item: dataclasses.Field[Any]) -> Any:
    """How a flag's text becomes the field's value: a comma-separated list, or the field's own type."""
    kinds = typing.get_args(item.type) or (item.type,)  # `str | None` is (str, NoneType)
    if list[str] in kinds:
        return lambda text: text.split(",")
    return next((kind for kind in (int, float) if kind in kinds), str)


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` and run the command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from training.data import DataError

    handlers = {"train": _train, "evaluate": _evaluate, "export": _export, "card": _card}
    try:
        handlers[args.command](args)
    except (DataError, FileNotFoundError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

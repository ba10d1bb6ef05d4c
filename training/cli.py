"""Command line: `python -m training {train,evaluate,export} ...`."""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before it is imported


PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# CLI flag -> TrainConfig field, for the flags a preset may also set.
_TRAIN_FIELDS = (
    "data", "architecture", "epochs", "batch_size", "learning_rate", "optimizer", "momentum", "weight_decay",
    "schedule", "warmup_epochs", "label_smoothing", "cutout", "seed", "validation_fraction", "skip_invalid", "name",
    "init_from",
)  # fmt: skip


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
    from training.train import IncompatibleWeightsError, TrainConfig, train

    if args.resume:
        train(TrainConfig(data="", run_dir=args.run_dir), resume=True)
        return
    fields: dict[str, object] = load_preset(args.preset) if args.preset else {}
    fields.pop("description", None)
    fields |= {name: getattr(args, name) for name in _TRAIN_FIELDS if getattr(args, name) not in (None, False)}
    if args.no_augment:
        fields["augment"] = False
    if args.classes:
        fields["classes"] = args.classes.split(",")
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
    from training.evaluation import evaluate_model, keras_predictor, onnx_predictor, write_report

    model_path = Path(args.model)
    if not model_path.exists():
        raise SystemExit(f"error: model {model_path} does not exist")
    splits = load_splits(
        args.data,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        skip_invalid=args.skip_invalid,
    )
    if model_path.suffix == ".onnx":
        predict = onnx_predictor(model_path)
    else:
        import keras

        predict = keras_predictor(keras.saving.load_model(model_path))
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
    train.add_argument(
        "--data",
        help="'cifar10' (Keras download), a cifar-10-python.tar.gz or cifar-10-batches-py/, "
        "or a folder ROOT/<class>/*.{png,jpg,jpeg,webp,bmp}",
    )
    train.add_argument("--run-dir", required=True, help="where checkpoints, history and reports go")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    train.add_argument("--preset", help="a recipe from training/presets/ (flags given here override it)")
    train.add_argument("--architecture", help="network by name (default: baseline)")
    train.add_argument("--epochs", type=int, help="default 10")
    train.add_argument("--batch-size", type=int, help="default 64")
    train.add_argument("--learning-rate", type=float, help="peak rate; default 1e-3")
    train.add_argument("--optimizer", choices=["adam", "sgd"], help="default adam; sgd is Nesterov")
    train.add_argument("--momentum", type=float, help="SGD momentum; default 0.9")
    train.add_argument("--weight-decay", type=float, help="decoupled weight decay; default 0")
    train.add_argument("--schedule", choices=["constant", "cosine"], help="default constant")
    train.add_argument("--warmup-epochs", type=float, help="linear warm-up before the cosine decay; default 0")
    train.add_argument("--label-smoothing", type=float, help="default 0")
    train.add_argument("--cutout", type=int, help="side of the cutout square in pixels; default 0 (off)")
    train.add_argument("--no-augment", action="store_true", help="turn off flip, pad-and-crop and cutout")
    train.add_argument("--classes", help="comma-separated class list for an image folder (default: sorted names)")
    train.add_argument("--name", help="model name written into the exported ONNX (default: the architecture)")
    train.add_argument("--init-from", help="a .keras model of the same architecture to start from (a second stage)")
    _add_split_arguments(train, defaults=False)

    evaluate = commands.add_parser("evaluate", help="evaluate a .keras or .onnx model on a validation split")
    evaluate.add_argument("--model", required=True, help="a .keras or .onnx file")
    evaluate.add_argument("--data", required=True, help="as for train")
    evaluate.add_argument("--out", help="report folder (default: next to the model)")
    _add_split_arguments(evaluate)

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


def _add_split_arguments(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    parser.add_argument("--seed", type=int, default=0 if defaults else None, help="default 0")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1 if defaults else None,
        help="held out of an image folder, stratified; default 0.1",
    )
    parser.add_argument("--skip-invalid", action="store_true", help="skip undecodable images instead of failing")


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` and run the command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from training.data import DataError

    handlers = {"train": _train, "evaluate": _evaluate, "export": _export, "card": _card}
    try:
        handlers[args.command](args)
    except (DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

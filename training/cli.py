"""Command line: `python -m training {train,evaluate,export,card} ...`."""

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from service.errors import ModelLoadError
from training.config import FIELDS, TrainConfig
from training.framework import import_tensorflow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before it is imported


PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# The TrainConfig field without a flag of its own: --run-dir is given apart (it is required, and `export` and `card`
# take it too).
_NOT_FLAGS = ("run_dir",)
# The input sizes --image-size takes.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 1024
# The settings that pick a run's data and its split, which `evaluate` takes too.
_SPLIT_HELP = {
    "seed": "the seed of the split (default: the run's, else 0)",
    "validation_fraction": "the fraction held out of an image folder (default: the run's, else 0.1)",
    "skip_invalid": "skip undecodable images instead of failing (default: the run's)",
}


def load_preset(name: str) -> dict[str, object]:
    """The TrainConfig fields stored in training/presets/NAME.json."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(preset.stem for preset in PRESETS_DIR.glob("*.json"))
        raise SystemExit(f"error: unknown preset {name!r}; known: {known}")
    preset: dict[str, object] = json.loads(path.read_text())
    return preset


def _train(args: argparse.Namespace) -> None:
    from training.run import RunDirectory, splits_for

    # The run dir and the data are checked before TensorFlow is imported: a mistake there is said at once, without
    # TensorFlow's start-up lines before it.
    # A flag given on the command line overrides the preset; one not given is None and leaves it be.
    given = {name: value for name in FIELDS if name not in _NOT_FLAGS and (value := getattr(args, name)) is not None}
    if args.resume:
        if given or args.preset or args.overwrite:
            flags = [f"--{name.replace('_', '-')}" for name in given]
            extra = flags + ["--preset"] * bool(args.preset) + ["--overwrite"] * args.overwrite
            raise CommandError(f"--resume continues the run as it was started; it takes no {' '.join(extra)}")
        config = RunDirectory(args.run_dir).read_record().config
        splits = splits_for(config)
        import_tensorflow()
        from training.train import train

        train(config, resume=True, splits=splits)
        return
    fields: dict[str, object] = load_preset(args.preset) if args.preset else {}
    fields.pop("description", None)
    fields |= given
    if "data" not in fields:
        raise CommandError("--data is required unless --resume (or a preset gives it)")
    config = TrainConfig(run_dir=args.run_dir, **fields)  # type: ignore[arg-type]
    RunDirectory(config.run_dir).check_free(overwrite=args.overwrite)
    splits = splits_for(config)
    import_tensorflow()
    from training.models import ARCHITECTURES
    from training.train import train

    if config.architecture not in ARCHITECTURES:
        raise CommandError(f"unknown architecture {config.architecture!r}; known: {sorted(ARCHITECTURES)}")

    train(config, overwrite=args.overwrite, command=args.command_line, splits=splits)


def _evaluate(args: argparse.Namespace) -> None:
    from training.data import load_splits
    from training.evaluation import evaluate_model, keras_predictor, onnx_model, onnx_predictor, write_report
    from training.run import RunDirectory

    # The run (given, or the folder the model sits in) supplies the model, the data and its split, unless a flag
    # says otherwise: the same held-out images as in training.
    run = RunDirectory(args.run_dir) if args.run_dir else None
    if run is None and args.model and RunDirectory(Path(args.model).parent).exists():
        run = RunDirectory(Path(args.model).parent)
    record = run.read_record() if run else None
    config = record.config if record else TrainConfig(data="", run_dir="")
    model_path = Path(args.model) if args.model else run.final_model if run else None
    if model_path is None:
        raise CommandError("give --model, or --run-dir to evaluate the run's model")
    if model_path.suffix not in (".onnx", ".keras"):
        raise CommandError(f"model {model_path} is neither a .onnx nor a .keras file")
    data = args.data or (config.data if record else None)
    if not data:
        raise CommandError("give --data, or --run-dir to evaluate on the run's data")
    if not model_path.is_file():
        raise CommandError(f"model {model_path} does not exist")
    class_names = record.class_names if record else None
    if model_path.suffix == ".onnx":
        model = onnx_model(model_path)
        predict, image_size = onnx_predictor(model), (model.info.height, model.info.width)
        class_names = class_names or list(model.info.labels)  # the model's own label order
    else:
        import_tensorflow()
        import keras

        network = keras.saving.load_model(model_path)
        predict, image_size = keras_predictor(network), tuple(network.input_shape[1:3])
    splits = load_splits(
        data,
        image_size=image_size,
        validation_fraction=_given(args.validation_fraction, config.validation_fraction),
        seed=_given(args.seed, config.seed),
        class_names=class_names,
        skip_invalid=_given(args.skip_invalid, config.skip_invalid),
    )
    metrics = evaluate_model(predict, splits.validation)
    out_dir = Path(args.out) if args.out else model_path.parent / f"evaluation-{model_path.stem}"
    write_report(metrics, out_dir)
    print(f"accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} examples={metrics['examples']}")
    print(f"report written to {out_dir}")


def _given(flag: Any, fallback: Any) -> Any:
    """A flag's value where it was given (not None), else the fallback (the run's setting or the default)."""
    return fallback if flag is None else flag


def _export(args: argparse.Namespace) -> None:
    import_tensorflow()
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
            command=args.command_line,
            overwrite=args.overwrite,
        )
    except ExportError as error:
        raise CommandError(f"export failed: {error}") from None
    print(f"exported {path}")


def _card(args: argparse.Namespace) -> None:
    import_tensorflow()
    import numpy as np

    from training.card import build_card, card_paths, combined_history, write_card
    from training.evaluation import plot_confusion_matrix, plot_history

    run_dir, model = Path(args.run_dir), Path(args.model)
    if not model.is_file():
        raise CommandError(f"model {model} does not exist")
    out = Path(args.out) if args.out else model.parent
    card = build_card(run_dir, model, reproduce=args.reproduce, trained_on_machine=args.machine)
    # Every file is named after the model, so that no model's card replaces another's. The figures: every stage's
    # curves, and the exported file's confusion matrix on the validation split.
    paths = card_paths(model, out)
    out.mkdir(parents=True, exist_ok=True)
    plot_history(combined_history(card["training"]["stages"]), paths.curves)
    plot_confusion_matrix(np.asarray(card["validation"]["confusion_matrix"]), card["classes"], paths.confusion)
    write_card(card, paths)
    for path in (paths.markdown, paths.data, paths.curves, paths.confusion):
        print(f"wrote {path}")


class CommandError(Exception):
    """A mistake in how a command was called: said in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line (the usage is one --help away), and flags only as written: no
    abbreviations (argparse would take `--epoch 1` for `--epochs 1`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its four commands."""
    parser = Parser(
        prog="python -m training",
        description="Train an image classifier with Keras, evaluate it, and export it to ONNX for the service.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{train,evaluate,export,card}", parser_class=Parser
    )

    train = commands.add_parser("train", help="train a model into a run directory")
    train.add_argument("--run-dir", required=True, help=FIELDS["run_dir"].metadata["help"])
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    train.add_argument(
        "--overwrite", action="store_true", help="start again in a --run-dir that holds a run (its files are removed)"
    )
    train.add_argument("--preset", help="a recipe from training/presets/ (flags given here override it)")
    for name, item in FIELDS.items():
        if name not in _NOT_FLAGS:
            _add_setting(train, item, with_default=False)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a .keras or .onnx model on a validation split",
        description="Evaluate a model on the validation split. The run (--run-dir, or the folder the model is in) "
        "supplies the model, the data and the split settings; flags given here override them.",
    )
    evaluate.add_argument("--run-dir", help="a training run: its model.keras, its data and its split")
    evaluate.add_argument("--model", help="a .keras or .onnx file (default: the run's model.keras)")
    evaluate.add_argument("--data", help="as for train (default: the run's)")
    evaluate.add_argument("--out", help="report folder (default: next to the model)")
    for name, help in _SPLIT_HELP.items():
        _add_setting(evaluate, FIELDS[name], with_default=False, help=help)

    export = commands.add_parser("export", help="export a trained run to ONNX, gated on Keras/ORT parity")
    export.add_argument("--run-dir", required=True, help="a finished training run")
    export.add_argument("--output", required=True, help="path of the .onnx file to write (a Keras copy goes beside it)")
    export.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
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
        "--calibration-images",
        type=_bounded(int, minimum=1),
        default=512,
        help="training images that calibrate int8 (default 512; fewer if the run has fewer)",
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
    card.add_argument(
        "--out", help="folder for MODEL.card.md, MODEL.card.json and the figures, named after the model "
        "(default: the model's folder)",
    )  # fmt: skip
    card.add_argument("--reproduce", help="commands to record (default: the run's and the export's, as recorded)")
    card.add_argument("--machine", help="where it was trained (default: as measured and recorded by the run)")
    return parser


def _add_setting(
    parser: argparse.ArgumentParser, item: dataclasses.Field[Any], *, with_default: bool, help: str | None = None
) -> None:
    """The flag of a TrainConfig field: --field-name, typed and bounded, its choices and its help from the field
    (or `help`). Without `with_default` a flag not given is None, so that a preset's (or a run's) value stands."""
    default, help = item.default, help or item.metadata["help"]
    flag = "--" + item.name.replace("_", "-")
    if default is True:  # on unless turned off
        parser.add_argument(flag.replace("--", "--no-", 1), dest=item.name, action="store_false",
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
    """How a flag's text becomes the field's value: a comma-separated list, an image size, or the field's own type
    (at least its minimum)."""
    if item.type == tuple[int, int]:
        return _image_size
    kinds = typing.get_args(item.type) or (item.type,)  # `str | None` is (str, NoneType)
    if list[str] in kinds:
        return _names
    kind = next((kind for kind in (int, float) if kind in kinds), str)
    return _bounded(kind, item.metadata["minimum"], item.metadata["maximum"])


def _bounded(kind: type, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A flag type: `kind` of the text, refused below `minimum` or above `maximum`."""

    def parse(text: str) -> Any:
        value = kind(text)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message for a value that does not parse
    return parse


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give class names separated by commas, such as cat,dog")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} named more than once")
    return names


def _image_size(text: str) -> tuple[int, int]:
    """SIZE or HEIGHTxWIDTH, in pixels."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not SIZE or HEIGHTxWIDTH, such as 64 or 48x64")
    height, width = (int(parts[0]), int(parts[-1]))
    if not all(MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE for side in (height, width)):
        raise argparse.ArgumentTypeError(f"{text!r}: each side must be {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} pixels")
    return height, width


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` and run the command."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "training", *argv])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from service.imaging import configure_pillow
    from training.data import DataError

    configure_pillow()  # as the service decodes: the same images are read the same way
    from training.run import RunDirectory, RunError

    handlers = {"train": _train, "evaluate": _evaluate, "export": _export, "card": _card}
    try:
        handlers[args.command](args)
    except (CommandError, DataError, RunError, ModelLoadError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        resumable = args.command == "train" and RunDirectory(args.run_dir).exists()
        print(
            "interrupted" + (f": continue with --run-dir {args.run_dir} --resume" if resumable else ""), file=sys.stderr
        )
        raise SystemExit(130) from None

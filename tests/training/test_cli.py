"""The training command line: its flags are made from TrainConfig's fields."""

import dataclasses

import pytest

from training.cli import build_parser
from training.config import FIELDS, RECIPE, TrainConfig

# A value unlike the default for every field that has a flag, as typed on a command line and as parsed.
GIVEN = {
    "data": ("photos", "photos"),
    "architecture": ("resnet9-w16", "resnet9-w16"),
    "epochs": ("3", 3),
    "batch_size": ("16", 16),
    "optimizer": ("sgd", "sgd"),
    "learning_rate": ("0.05", 0.05),
    "momentum": ("0.5", 0.5),
    "weight_decay": ("0.001", 0.001),
    "schedule": ("cosine", "cosine"),
    "warmup_epochs": ("1.5", 1.5),
    "label_smoothing": ("0.1", 0.1),
    "precision": ("mixed_bfloat16", "mixed_bfloat16"),
    "cutout": ("8", 8),
    "seed": ("7", 7),
    "validation_fraction": ("0.2", 0.2),
    "image_size": ("48x64", (48, 64)),
    "classes": ("cat,dog", ["cat", "dog"]),
    "name": ("pets", "pets"),
    "init_from": ("stage1/model.keras", "stage1/model.keras"),
    "teacher": ("big/model.keras", "big/model.keras"),
    "distillation": ("0.7", 0.7),
}


def test_every_setting_but_the_run_dir_has_a_typed_flag() -> None:
    flags = [part for name, (typed, _) in GIVEN.items() for part in (f"--{name.replace('_', '-')}", typed)]
    argv = ["train", "--run-dir", "run", *flags, "--no-augment", "--skip-invalid"]
    args = vars(build_parser().parse_args(argv))
    assert set(FIELDS) <= set(args)
    for name, (_, parsed) in GIVEN.items():
        assert args[name] == parsed and type(args[name]) is type(parsed), name
    assert args["augment"] is False and args["skip_invalid"] is True
    config = TrainConfig(run_dir="run", **{name: args[name] for name in [*GIVEN, "augment"]})
    assert all(getattr(config, name) != item.default for name, item in FIELDS.items() if name in GIVEN)


def test_a_flag_not_given_leaves_the_presets_value() -> None:
    args = vars(build_parser().parse_args(["train", "--run-dir", "run"]))
    assert all(args[name] is None for name in FIELDS if name != "run_dir")


def test_help_shows_each_settings_help_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("epochs", "learning_rate", "momentum"):
        item = FIELDS[name]
        assert f"{item.metadata['help']} (default: {item.default})" in text


def test_evaluate_takes_the_split_settings_and_leaves_those_not_given_to_the_run() -> None:
    args = build_parser().parse_args(["evaluate", "--model", "m.onnx", "--data", "photos"])
    assert (args.seed, args.validation_fraction, args.skip_invalid) == (None, None, None)
    given = ["--seed", "3", "--validation-fraction", "0.2", "--skip-invalid"]
    args = build_parser().parse_args(["evaluate", "--run-dir", "run", *given])
    assert (args.run_dir, args.seed, args.validation_fraction, args.skip_invalid) == ("run", 3, 0.2, True)


def test_the_model_cards_recipe_is_the_training_settings() -> None:
    recipe = TrainConfig(data="d", run_dir="r").recipe
    assert list(recipe) == list(RECIPE)
    assert {"epochs", "learning_rate", "augment", "init_from"} <= set(recipe)
    assert not {"data", "run_dir", "name", "classes", "skip_invalid"} & set(recipe)
    saved = dataclasses.asdict(TrainConfig(data="d", run_dir="r", image_size=(64, 48))) | {"class_names": ["a"]}
    assert TrainConfig.from_record(saved) == TrainConfig(data="d", run_dir="r", image_size=(64, 48))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "argument --epochs: must be at least 1, not 0"),
        (["--batch-size", "-8"], "argument --batch-size: must be at least 1"),
        (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
        (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
        (["--image-size", "0"], "argument --image-size: '0': each side must be 8 to 1024 pixels"),
        (["--image-size", "64x"], "argument --image-size: '64x' is not SIZE or HEIGHTxWIDTH"),
        (["--image-size", "big"], "argument --image-size: 'big' is not SIZE or HEIGHTxWIDTH"),
        (["--classes", ","], "argument --classes: give class names separated by commas"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--run-dir", "run", "--data", "photos", *argv])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {message}") and line.endswith("(see python -m training train --help)"), line


@pytest.mark.parametrize(
    "argv",
    [["train", "--run-dir", "run", "--data", "photos", "--epoch", "1"], ["evaluate", "--mod", "m.onnx"],
     ["export", "--run-dir", "run", "--output", "m.onnx", "--overw"]],
)  # fmt: skip
def test_an_abbreviated_flag_is_refused_not_guessed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # argparse would take --epoch for --epochs: a typo would silently set another flag than the one meant.
    abbreviated = next(part for part in reversed(argv) if part.startswith("--"))
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: unrecognized arguments: {abbreviated}"), line


def test_image_size_takes_one_side_or_both() -> None:
    parse = build_parser().parse_args
    assert parse(["train", "--run-dir", "r", "--image-size", "64"]).image_size == (64, 64)
    assert parse(["train", "--run-dir", "r", "--image-size", "48X64"]).image_size == (48, 64)

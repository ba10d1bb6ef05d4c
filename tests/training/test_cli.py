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
    "cutout": ("8", 8),
    "seed": ("7", 7),
    "validation_fraction": ("0.2", 0.2),
    "classes": ("cat,dog", ["cat", "dog"]),
    "name": ("pets", "pets"),
    "init_from": ("stage1/model.keras", "stage1/model.keras"),
}


def test_every_setting_but_the_run_dir_and_input_size_has_a_typed_flag() -> None:
    flags = [part for name, (typed, _) in GIVEN.items() for part in (f"--{name.replace('_', '-')}", typed)]
    argv = ["train", "--run-dir", "run", *flags, "--no-augment", "--skip-invalid"]
    args = vars(build_parser().parse_args(argv))
    assert set(FIELDS) - set(args) == {"image_size"}
    for name, (_, parsed) in GIVEN.items():
        assert args[name] == parsed and type(args[name]) is type(parsed), name
    assert args["augment"] is False and args["skip_invalid"] is True
    config = TrainConfig(run_dir="run", image_size=(32, 32), **{name: args[name] for name in [*GIVEN, "augment"]})
    assert all(getattr(config, name) != item.default for name, item in FIELDS.items() if name in GIVEN)


def test_a_flag_not_given_leaves_the_presets_value() -> None:
    args = vars(build_parser().parse_args(["train", "--run-dir", "run"]))
    assert all(args[name] is None for name in FIELDS if name not in ("run_dir", "image_size"))


def test_help_shows_each_settings_help_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("epochs", "learning_rate", "momentum"):
        item = FIELDS[name]
        assert f"{item.metadata['help']} (default: {item.default})" in text


def test_evaluate_takes_the_split_settings_with_their_defaults() -> None:
    args = build_parser().parse_args(["evaluate", "--model", "m.onnx", "--data", "photos"])
    assert (args.seed, args.validation_fraction, args.skip_invalid) == (0, 0.1, False)


def test_the_model_cards_recipe_is_the_training_settings() -> None:
    recipe = TrainConfig(data="d", run_dir="r").recipe
    assert list(recipe) == list(RECIPE)
    assert {"epochs", "learning_rate", "augment", "init_from"} <= set(recipe)
    assert not {"data", "run_dir", "name", "classes", "skip_invalid"} & set(recipe)
    saved = dataclasses.asdict(TrainConfig(data="d", run_dir="r", image_size=(64, 48))) | {"class_names": ["a"]}
    assert TrainConfig.from_record(saved) == TrainConfig(data="d", run_dir="r", image_size=(64, 48))

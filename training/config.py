"""A training run's settings: one field each, with its default and its help. The command line's flags and the model
card's recipe table are made from these fields, so a setting is named, defaulted and explained once."""

import dataclasses
from dataclasses import MISSING, dataclass, field
from typing import Any


def setting(
    default: Any = MISSING,
    *,
    help: str,
    recipe: bool = True,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A TrainConfig field (required without a default): `help` is its flag's help; `recipe` settings are listed on
    the model card; `choices`, `minimum` and `maximum` bound the flag's values."""
    bounds = {"choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata={"help": help, "recipe": recipe} | bounds)


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as run.json so `--resume` needs only the run dir."""

    data: str = setting(
        help="'cifar10' (Keras download), a cifar-10-python.tar.gz or cifar-10-batches-py/, "
        "or a folder ROOT/<class>/<image> (PNG, JPEG, WebP, BMP, GIF, TIFF; dot-folders ignored)",
        recipe=False,
    )
    run_dir: str = setting(help="where checkpoints, history and reports go", recipe=False)
    architecture: str = setting("baseline", help="network by name, from training/models.py")
    epochs: int = setting(10, help="passes over the training split", minimum=1)
    batch_size: int = setting(64, help="images per training step", minimum=1)
    optimizer: str = setting("adam", help="sgd is Nesterov", choices=("adam", "sgd"))
    learning_rate: float = setting(1e-3, help="peak rate", minimum=0)
    momentum: float = setting(0.9, help="SGD momentum", minimum=0)
    weight_decay: float = setting(0.0, help="decoupled weight decay", minimum=0)
    bias_learning_rate_scale: float = setting(
        1.0,
        help="batch norm's shifts learn at this multiple of the rate (their weight decay is not scaled)",
        minimum=0,
    )
    schedule: str = setting("constant", help="learning-rate schedule", choices=("constant", "cosine"))
    warmup_epochs: float = setting(0.0, help="linear warm-up before the cosine decay", minimum=0)
    label_smoothing: float = setting(0.0, help="label smoothing of the cross-entropy", minimum=0)
    precision: str = setting(
        "float32",
        help="mixed_bfloat16 computes in bfloat16 with float32 weights: about 1.5x faster on CPUs with AMX or "
        "AVX-512 BF16 and on GPUs, slower on CPUs without; the export is float32 either way",
        choices=("float32", "mixed_bfloat16"),
    )
    augment: bool = setting(True, help="flip, pad-and-crop and cutout while training")
    cutout: int = setting(0, help="side of the cutout square in pixels; 0 is off", minimum=0)
    translate: int = setting(4, help="pad-and-crop moves the image by up to this many pixels each way", minimum=0)
    seed: int = setting(0, help="seeds the split, the shuffling and the weights", minimum=0, maximum=2**32 - 1)
    validation_fraction: float = setting(0.1, help="held out of an image folder, stratified")
    image_size: tuple[int, int] = setting(
        (32, 32), help="the model's input in pixels: SIZE or HEIGHTxWIDTH; images are resized to it"
    )
    classes: list[str] | None = setting(
        None, help="comma-separated class list for an image folder (default: the sorted folder names)", recipe=False
    )
    skip_invalid: bool = setting(False, help="skip undecodable images instead of failing", recipe=False)
    name: str | None = setting(
        None, help="model name written into the exported ONNX (default: the architecture)", recipe=False
    )
    init_from: str | None = setting(
        None, help="a .keras model of the same architecture whose weights start this run (a second stage)"
    )
    teacher: str | None = setting(
        None,
        help="a .keras model whose probabilities on each augmented batch are mixed into the targets "
        "(knowledge distillation; its classes must be this run's)",
    )
    distillation: float = setting(
        0.5,
        help="with --teacher, the teacher's share of each target (the labels have the rest)",
        minimum=0,
        maximum=1,
    )

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "TrainConfig":
        """The config in a run's saved record (which also holds what the run found, such as its class names)."""
        known = {key: value for key, value in record.items() if key in FIELDS}
        if "image_size" in known:
            known["image_size"] = tuple(known["image_size"])
        return cls(**known)

    @property
    def recipe(self) -> dict[str, Any]:
        """The settings that decide how the network was trained, as the model card lists them."""
        return {name: getattr(self, name) for name in RECIPE}


FIELDS = {item.name: item for item in dataclasses.fields(TrainConfig)}
RECIPE = tuple(name for name, item in FIELDS.items() if item.metadata["recipe"])

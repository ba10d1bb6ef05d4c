"""Training: seeded, augmented, checkpointed every epoch and resumable, into a run directory."""

import logging
import sys
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from training import machine
from training.config import TrainConfig
from training.data import Dataset, Splits
from training.evaluation import evaluate_model, keras_predictor, plot_history, write_report
from training.models import build_model, in_float32, initialise_from_data
from training.run import RunDirectory, RunError, RunRecord, splits_for

log = logging.getLogger(__name__)


def augment_image(image: tf.Tensor, padding: int = 4, cutout: int = 0) -> tf.Tensor:
    """Random horizontal flip, a random crop of the image padded by `padding` pixels (reflected), and
    optionally cutout: a `cutout`-pixel square around a random centre set to mid-grey."""
    height, width = image.shape[0], image.shape[1]
    image = tf.image.random_flip_left_right(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode="REFLECT")
    image = tf.image.random_crop(padded, [height, width, 3])
    if cutout:
        top = tf.random.uniform([], 0, height, dtype=tf.int32) - cutout // 2
        left = tf.random.uniform([], 0, width, dtype=tf.int32) - cutout // 2
        rows = tf.range(height)[:, None]
        columns = tf.range(width)[None, :]
        inside = (rows >= top) & (rows < top + cutout) & (columns >= left) & (columns < left + cutout)
        image = tf.where(inside[..., None], tf.constant(128, dtype=image.dtype), image)
    return image


def make_dataset(
    data: Dataset,
    *,
    batch_size: int,
    training: bool,
    augment: bool,
    seed: int,
    cutout: int = 0,
    translate: int = 4,
    teacher: keras.Model | None = None,
    distillation: float = 0.5,
) -> tf.data.Dataset:
    """A tf.data pipeline of (uint8 images, one-hot labels); shuffled and augmented only for training. With a
    `teacher`, each target is its probabilities on the batch as augmented, weighted `distillation`, plus the one-hot
    label weighted the rest."""
    num_classes = len(data.class_names)
    dataset = tf.data.Dataset.from_tensor_slices((data.images, data.labels))
    if training:
        dataset = dataset.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
        if augment:

            def augmented(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return augment_image(images, padding=translate, cutout=cutout), labels

            dataset = dataset.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    if teacher is not None:

        def distilled(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            taught = tf.cast(teacher(images, training=False), labels.dtype)
            return images, (1 - distillation) * labels + distillation * taught

        dataset = dataset.map(distilled)  # one teacher call at a time: the training step needs the cores more
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam or SGD (Nesterov), with a constant rate or a cosine decay after a linear warm-up."""
    rate: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if config.schedule == "cosine":
        warmup_steps = int(config.warmup_epochs * steps_per_epoch)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else config.learning_rate,
            decay_steps=max(config.epochs * steps_per_epoch - warmup_steps, 1),
            warmup_target=config.learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    elif config.schedule != "constant":
        raise ValueError(f"unknown schedule {config.schedule!r}; known: constant, cosine")
    weight_decay = config.weight_decay or None
    if config.optimizer == "sgd" and config.bias_learning_rate_scale != 1:
        return ScaledBiasSGD(
            rate,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=weight_decay,
            bias_learning_rate_scale=config.bias_learning_rate_scale,
        )
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=True, weight_decay=weight_decay)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: adam, sgd")


@keras.saving.register_keras_serializable(package="training")
class ScaledBiasSGD(keras.optimizers.SGD):
    """Keras's SGD with batch norm's shifts (`beta`) learning at `bias_learning_rate_scale` times the rate, as
    airbench trains them; weight decay, which Keras applies at the unscaled rate, is the same for all."""

    def __init__(self, *args: Any, bias_learning_rate_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bias_learning_rate_scale = bias_learning_rate_scale
        self._scaled: set[int] = set()

    def build(self, variables: list[keras.Variable]) -> None:
        super().build(variables)
        self._scaled = {self._var_key(variable) for variable in variables if variable.path.endswith("/beta")}

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self._var_key(variable) in self._scaled:
            learning_rate = learning_rate * self.bias_learning_rate_scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"bias_learning_rate_scale": self.bias_learning_rate_scale}


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` to each epoch's logs, so the history records wall-clock time."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._start, 2)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    splits: Splits | None = None,
) -> Path:
    """Train per `config` into its run dir; with `resume`, continue from the last completed epoch. A run dir that
    holds anything is refused unless `overwrite` (which removes an earlier run's files). Nothing is written until
    the data is read and the network is built: a run that cannot start leaves no trace. `command` is recorded;
    `splits`, the config's data already loaded, saves loading it again."""
    run = RunDirectory(config.run_dir)
    if resume:
        if not run.exists():
            raise RunError(f"cannot resume: {run.path} holds no run ({run.record_file.name} is missing)")
        started = run.read_record()
        config, command = started.config, started.command  # the command that started the run reproduces it
        config.run_dir = str(run.path)
    else:
        run.check_free(overwrite=overwrite)
    keras.utils.set_random_seed(config.seed)

    splits = splits or splits_for(config)
    class_names = splits.train.class_names
    log.info(
        "data source=%r train=%d validation=%d classes=%d skipped=%d",
        splits.source,
        len(splits.train),
        len(splits.validation),
        len(class_names),
        len(splits.skipped_files),
    )
    height, width = config.image_size
    try:
        model = build_model(config.architecture, (height, width, 3), len(class_names), config.precision)
    except ValueError:  # Keras: a layer's output would be empty
        raise RunError(
            f"the {config.architecture} network cannot take {height}x{width} images: its layers shrink them to "
            "nothing; give a larger --image-size (or a resnet9-* architecture)"
        ) from None
    if config.init_from:
        load_initial_weights(model, Path(config.init_from))
    else:
        initialise_from_data(model, splits.train.images)  # a network with a data-dependent first layer
    teacher = load_teacher(config, len(class_names))

    if not resume:
        run.clear()  # a new run must not pick up an earlier run's epoch counter, history or model
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    run.write_record(RunRecord(config, class_names, splits.source, command, machine.describe(gpus)))
    run.save_parity_images(splits.validation.images)
    steps_per_epoch = -(-len(splits.train) // config.batch_size)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    train_data = make_dataset(
        splits.train,
        batch_size=config.batch_size,
        training=True,
        augment=config.augment,
        seed=config.seed,
        cutout=config.cutout,
        translate=config.translate,
        teacher=teacher,
        distillation=config.distillation,
    )
    validation_data = make_dataset(splits.validation, batch_size=256, training=False, augment=False, seed=config.seed)
    callbacks = [
        EpochTimer(),
        keras.callbacks.BackupAndRestore(str(run.backup_dir), save_freq="epoch", delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(run.last_checkpoint), save_freq="epoch"),
        keras.callbacks.CSVLogger(str(run.history_csv), append=True),
    ]
    model.fit(
        train_data,
        validation_data=validation_data,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles, seeded
        verbose=1 if sys.stdout.isatty() else 2,  # a progress bar on a terminal, a line per epoch in a log
    )
    model.save(run.final_model)

    history = run.read_history()
    run.write_history(history)
    plot_history(history, run.curves)
    metrics = evaluate_model(keras_predictor(in_float32(model, config.architecture)), splits.validation)
    write_report(metrics, run.path)
    log.info("trained run_dir=%s validation_accuracy=%.4f", run.path, metrics["accuracy"])
    return run.path


def load_teacher(config: TrainConfig, num_classes: int) -> keras.Model | None:
    """The run's teacher model, if it has one, checked to give one probability per class of this run."""
    if not config.teacher:
        return None
    path = Path(config.teacher)
    if not path.is_file():
        raise RunError(f"cannot learn from teacher {path}: no such file")
    try:
        teacher = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a corrupt or foreign file
        raise RunError(f"cannot learn from teacher {path}: not a valid .keras file ({error})") from error
    if teacher.output_shape[-1] != num_classes:
        raise RunError(
            f"cannot learn from teacher {path}: it gives {teacher.output_shape[-1]} probabilities, "
            f"this run has {num_classes} classes"
        )
    log.info("teacher path=%s distillation=%.2f", path, config.distillation)
    return teacher


class IncompatibleWeightsError(RunError):
    """The model to start from has weights of other shapes than the architecture being trained."""


def load_initial_weights(model: keras.Model, path: Path) -> None:
    """Copy the weights of the saved model at `path` into `model`; both must have the same architecture."""
    if not path.is_file():
        raise FileNotFoundError(f"cannot start from {path}: no such file")
    try:
        model.set_weights(keras.saving.load_model(path).get_weights())
    except ValueError as error:  # Keras checks the count and every shape
        message = f"cannot start from {path}: its weights do not fit this architecture ({error})"
        raise IncompatibleWeightsError(message) from error
    log.info("initial weights path=%s", path)

"""Export a trained Keras model to ONNX with tf2onnx, gated on Keras vs ONNX Runtime parity."""

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.data import DataError, Splits
from training.evaluation import Predictor, compute_metrics, keras_predictor, onnx_model, onnx_predictor
from training.models import INPUT_NAME, OUTPUT_NAME
from training.run import RunDirectory, RunError, RunRecord

log = logging.getLogger(__name__)

MIN_OPSET = 17
BATCH_DIMENSION = "batch"


class ExportError(Exception):
    """The export could not produce a model that can be trusted; nothing was written at the output path."""


class ParityError(ExportError):
    """ONNX Runtime's answers differ from Keras's beyond the tolerance."""


@dataclass
class ParityReport:
    """How far the ONNX model's probabilities are from Keras's on the same images."""

    images: int
    max_abs_difference: float
    argmax_mismatches: int


def export_run(
    run_dir: Path,
    output: Path,
    *,
    model_file: str | None = None,
    name: str | None = None,
    version: str = "1",
    opset: int = MIN_OPSET,
    tolerance: float = 1e-4,
    flip_averaging: bool = False,
    quantize: bool = False,
    calibration_images: int = 512,
    max_accuracy_drop: float = 0.005,
    command: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the run's Keras model to ONNX at `output`, with metadata, if it passes the parity gate.

    `flip_averaging` folds test-time flip averaging into the graph. `quantize` converts the float export to int8
    (calibrated on `calibration_images` training images) and keeps it only if it loses at most
    `max_accuracy_drop` of validation accuracy against the float export. Either way the exported file is then
    evaluated on the run's validation split, and that accuracy is the one its metadata states. `command`, the
    command line that ran the export, is recorded in the metadata (the model card shows it). An existing `output`
    is replaced only with `overwrite`.
    """
    import keras

    from training.models import in_float32, with_flip_averaging

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the minimum {MIN_OPSET}")
    run = RunDirectory(run_dir)
    try:
        record = run.read_record()
    except RunError as error:
        raise ExportError(str(error)) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ExportError(f"{run_dir} is not a training run ({run.record_file.name}: {error})") from error
    config = record.config
    model_path = Path(model_file) if model_file else run.final_model
    check_output(output, run, model_path, overwrite=overwrite)
    if not model_path.is_file():
        raise ExportError(f"cannot load Keras model {model_path}: the file does not exist")
    try:
        model = keras.saving.load_model(model_path, compile=False)  # no optimizer: it would ride along
    except Exception as error:  # Keras raises many types for a corrupt or foreign file
        raise ExportError(f"cannot load Keras model {model_path}: not a valid .keras file ({error})") from error
    model = in_float32(model, config.architecture)  # what trained in mixed precision exports in float32
    if flip_averaging:
        model = with_flip_averaging(model)

    metrics = run.metrics()
    image_size = tuple(model.input_shape[1:3])
    metadata = {
        "model_name": name or config.name or config.architecture,
        "model_version": version,
        "class_names": json.dumps(record.class_names),
        "image_size": json.dumps(list(image_size)),
        "architecture": config.architecture,
        "trained_on": record.source,
        "eval_accuracy": str(metrics.get("accuracy", "")),
        "eval_examples": str(metrics.get("examples", "")),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "keras_version": keras.__version__,
    }
    if flip_averaging:
        metadata["test_time_augmentation"] = "horizontal flip: the probabilities of the image and its mirror averaged"
    if command:
        metadata["export_command"] = command
    images, validation_images = run.load_parity_images(image_size)
    if validation_images == 0:
        raise ExportError(
            f"{run.parity_images_file} holds no validation images: the parity gate will not pass on random images "
            "alone (train the run again to save them)"
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot write {output}: {error}") from error
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as scratch:
        exported = export_model(
            model, Path(scratch) / "float.onnx", metadata=metadata, images=images, opset=opset, tolerance=tolerance
        )
        log.info(
            "parity checked on %d images: %d of the run's validation images, %d random ones",
            len(images), validation_images, len(images) - validation_images,
        )  # fmt: skip
        if flip_averaging or quantize:
            splits = run_splits(record)
            validation = splits.validation
            probabilities = onnx_predictor(onnx_model(exported))(validation.images)
            if quantize:
                exported, probabilities, quantized = quantize_checked(
                    exported,
                    probabilities,
                    splits,
                    calibration_images=calibration_images,
                    max_accuracy_drop=max_accuracy_drop,
                )
                metadata |= quantized
            evaluation = compute_metrics(validation.labels, probabilities.argmax(axis=1), validation.class_names)
            metadata |= {"eval_accuracy": str(evaluation["accuracy"]), "eval_examples": str(evaluation["examples"])}
            write_metadata(exported, metadata)
        os.replace(exported, output)
    log.info("wrote path=%s eval_accuracy=%s", output, metadata["eval_accuracy"])
    copy = output.with_suffix(".keras")
    if copy.resolve() == model_path.resolve():
        log.info("kept path=%s: the Keras copy would replace the model it was exported from", copy)
    else:
        save_inference_copy(model, copy)
    return output


def check_output(output: Path, run: RunDirectory, model_path: Path, *, overwrite: bool) -> None:
    """Refuse an output that is not a .onnx file, one that exists (unless `overwrite`), and one whose Keras copy
    (written beside it) would replace one of the run's files other than the model exported."""
    if output.suffix != ".onnx":
        raise ExportError(f"the output {output} must be a .onnx file")
    if output.is_dir() or (output.exists() and not overwrite):
        raise ExportError(f"{output} exists: give another --output, or --overwrite to replace it")
    copy = output.with_suffix(".keras")
    if copy.resolve() != model_path.resolve() and copy.resolve() in {path.resolve() for path in run.files()}:
        raise ExportError(f"the Keras copy written beside {output} would replace the run's {copy.name}")


def run_splits(record: RunRecord) -> Splits:
    """The training run's data, split as it was for training; an ExportError if it cannot be read."""
    try:
        return record.splits()
    except (DataError, FileNotFoundError) as error:
        data = record.config.data
        raise ExportError(f"the run's data {data!r} is needed to calibrate or evaluate: {error}") from error


def quantize_checked(
    float_path: Path,
    float_probabilities: np.ndarray,
    splits: Splits,
    *,
    calibration_images: int,
    max_accuracy_drop: float,
) -> tuple[Path, np.ndarray, dict[str, str]]:
    """The int8 version of `float_path` beside it, its probabilities on the validation split, and its metadata,
    if it keeps the float model's validation accuracy (from `float_probabilities`) within `max_accuracy_drop`."""
    from training.quantization import DESCRIPTION, quantize_int8

    count = calibration_count(calibration_images, len(splits.train))
    chosen = np.random.default_rng(0).choice(len(splits.train), count, replace=False)
    int8_path = float_path.with_name("int8.onnx")
    quantize_int8(float_path, int8_path, splits.train.images[np.sort(chosen)])
    int8_probabilities = onnx_predictor(onnx_model(int8_path))(splits.validation.images)
    float_top, int8_top = float_probabilities.argmax(axis=1), int8_probabilities.argmax(axis=1)
    float_accuracy = float(np.mean(float_top == splits.validation.labels))
    int8_accuracy = float(np.mean(int8_top == splits.validation.labels))
    agreement = float(np.mean(float_top == int8_top))
    log.info(
        "quantized float_accuracy=%.4f int8_accuracy=%.4f top1_agreement=%.4f validation=%d",
        float_accuracy,
        int8_accuracy,
        agreement,
        len(splits.validation),
    )
    if float_accuracy - int8_accuracy > max_accuracy_drop:
        raise ExportError(
            f"int8 quantization loses {float_accuracy - int8_accuracy:.2%} of validation accuracy "
            f"(float {float_accuracy:.2%}, int8 {int8_accuracy:.2%}), more than the {max_accuracy_drop:.2%} allowed"
        )
    return (
        int8_path,
        int8_probabilities,
        {
            "quantization": DESCRIPTION,
            "calibration_images": str(count),
            "float_eval_accuracy": f"{float_accuracy:.4f}",
            "float_int8_top1_agreement": f"{agreement:.4f}",
        },
    )


def calibration_count(wanted: int, available: int) -> int:
    """How many training images calibrate: `wanted`, at most `available`, and a whole number of calibration
    batches (ONNX Runtime's calibrator cannot take a shorter last batch)."""
    from training.quantization import CALIBRATION_BATCH

    count = min(wanted, available)
    return count - count % CALIBRATION_BATCH if count > CALIBRATION_BATCH else count


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Set the ONNX file's metadata properties (replacing any of the same name)."""
    import onnx

    proto = onnx.load(path)
    existing = {prop.key: prop.value for prop in proto.metadata_props}
    onnx.helper.set_model_props(proto, existing | metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def save_inference_copy(model: Any, path: Path) -> None:
    """Save the exported network as Keras, without optimizer state: the reference for parity checks and for
    benchmarking Keras's `model.predict` against ONNX Runtime."""
    import keras

    # Not keras.models.clone_model: Keras 3 clones the compiled state too, and the optimizer's slots would double
    # the file.
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.save(path)


def export_model(
    model: Any,
    output: Path,
    *,
    metadata: dict[str, str],
    images: np.ndarray,
    opset: int = MIN_OPSET,
    tolerance: float = 1e-4,
) -> Path:
    """Convert `model`, store `metadata` in the ONNX file, and move it to `output` only if parity holds."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    height, width = images.shape[1:3]
    signature = (tf.TensorSpec((None, height, width, 3), tf.uint8, name=INPUT_NAME),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as error:  # tf2onnx surfaces TensorFlow tracing errors of many types
        raise ExportError(f"tf2onnx could not convert the model: {error}") from error
    if [node.name for node in proto.graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"expected one output named {OUTPUT_NAME!r}, got {[o.name for o in proto.graph.output]}")
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIMENSION
    metadata = metadata | {"tf2onnx_version": tf2onnx.__version__, "opset": str(opset)}
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = f"{metadata.get('model_name', '')} {metadata.get('model_version', '')}: uint8 RGB NHWC in"
    onnx.checker.check_model(proto)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial")
    onnx.save(proto, staging)
    try:
        report = check_parity(keras_predictor(model), staging, images, tolerance)
    except ParityError:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, output)
    log.info(
        "converted path=%s opset=%d parity_images=%d max_abs_difference=%.2e",
        output,
        opset,
        report.images,
        report.max_abs_difference,
    )
    return output


def check_parity(keras_predict: Predictor, onnx_path: Path, images: np.ndarray, tolerance: float) -> ParityReport:
    """Compare Keras and ONNX Runtime on `images`: probabilities within `tolerance` and the same argmax.

    An argmax that differs only between classes Keras itself scores within `tolerance` of each other is a tie,
    not a mismatch.
    """
    expected = keras_predict(images)
    try:
        actual = onnx_predictor(onnx_model(onnx_path))(images)
    except Exception as error:  # ONNX Runtime raises its own exception types for an invalid graph
        raise ParityError(f"ONNX Runtime could not run {onnx_path.name}: {error}") from error
    if actual.shape != expected.shape:
        raise ParityError(f"ONNX output shape {actual.shape} differs from Keras {expected.shape}")
    max_difference = float(np.abs(actual - expected).max())
    rows = np.arange(len(images))
    keras_top, onnx_top = expected.argmax(axis=1), actual.argmax(axis=1)
    margin = expected[rows, keras_top] - expected[rows, onnx_top]
    mismatches = int(np.count_nonzero((keras_top != onnx_top) & (margin > tolerance)))
    report = ParityReport(len(images), max_difference, mismatches)
    if max_difference > tolerance or mismatches:
        raise ParityError(
            f"parity gate failed on {report.images} images: max |p_keras - p_onnx| = {max_difference:.3g} "
            f"(tolerance {tolerance:g}), {mismatches} argmax mismatches"
        )
    return report

"""Post-training int8 quantization of an exported ONNX model with ONNX Runtime's static quantizer.

The convolutions run in int8 (weights per output channel, activations per tensor, ranges calibrated on training
images); the first convolution, which sees the normalised pixels, the residual additions and the classifier stay in
float32: quantizing those cost accuracy for almost no speed on these networks.
"""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from training.models import INPUT_NAME

QUANTIZED_OPS = ("Conv", "MaxPool", "Relu")
CALIBRATION_BATCH = 64
DESCRIPTION = (
    "int8 static QDQ (onnxruntime.quantization): convolutions after the first, per-channel int8 weights, "
    "uint8 activations, percentile calibration"
)


def quantize_int8(float_path: Path, output: Path, calibration_images: np.ndarray) -> None:
    """Write the int8 version of the float model at `float_path` to `output`, its activation ranges calibrated
    on `calibration_images` (uint8 NHWC, from the training split)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (
                calibration_images[start : start + CALIBRATION_BATCH]
                for start in range(0, len(calibration_images), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and ONNX Runtime's basic graph optimisations (BatchNorm folded into the convolutions).
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        first_conv = next(node.name for node in onnx.load(prepared).graph.node if node.op_type == "Conv")
        quantize_static(
            str(prepared),
            str(output),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=[first_conv],
        )

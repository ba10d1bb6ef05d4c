"""Network architectures by name. Every model takes raw uint8 RGB pixels (NHWC) and returns probabilities,
so its preprocessing travels with it into ONNX and serving cannot drift from training."""

from collections.abc import Callable

import keras
from keras import layers

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

ModelBuilder = Callable[[tuple[int, int, int], int], keras.Model]


def build_baseline(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The source article's network: Conv 32/64/128 (3x3, ReLU, 2x2 max-pool), Dense 128, softmax."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name=INPUT_NAME)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="baseline")


ARCHITECTURES: dict[str, ModelBuilder] = {
    "baseline": build_baseline,
}


def build_model(architecture: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Build the named architecture; an unknown name lists the known ones."""
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}") from None
    return builder(input_shape, num_classes)

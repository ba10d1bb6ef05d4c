"""Network architectures by name. Every model takes raw uint8 RGB pixels (NHWC) and returns probabilities,
so its preprocessing travels with it into ONNX and serving cannot drift from training."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
    outputs = layers.Dense(num_classes, activation="softmax", name=OUTPUT_NAME, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="baseline")


# CIFAR-10's per-channel pixel mean and standard deviation (of the training images).
CIFAR10_MEAN = (125.3, 122.9, 113.9)
CIFAR10_STD = (62.5, 61.9, 66.5)


def _conv_bn(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


def build_resnet9(input_shape: tuple[int, int, int], num_classes: int, width: int) -> keras.Model:
    """The DAWNBench ResNet-9 (Myrtle.ai) with every width scaled by `width / 64`.

    Stages: conv w; conv 2w + pool + residual(2 convs); conv 4w + pool; conv 8w + pool + residual(2 convs);
    global max pool; dense; logits scaled by 1/8 before the softmax, as in the original.
    """
    inputs = keras.Input(shape=input_shape, dtype="uint8", name=INPUT_NAME)
    x = layers.Normalization(mean=CIFAR10_MEAN, variance=[s * s for s in CIFAR10_STD], name="normalise")(inputs)
    x = _conv_bn(x, width)
    for filters, residual in ((2 * width, True), (4 * width, False), (8 * width, True)):
        x = layers.MaxPooling2D(2)(_conv_bn(x, filters))
        if residual:
            x = layers.Add()([x, _conv_bn(_conv_bn(x, filters), filters)])
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes)(x)
    x = layers.Rescaling(0.125, name="logit_scale")(x)
    outputs = layers.Activation("softmax", name=OUTPUT_NAME, dtype="float32")(x)  # float32 in mixed precision too
    return keras.Model(inputs, outputs, name=f"resnet9_w{width}")


def with_flip_averaging(model: keras.Model) -> keras.Model:
    """`model` with test-time augmentation folded in: each image and its mirror image go through the network as
    one batch of 2N, and the two probability vectors are averaged. Twice the compute per image."""
    inputs = keras.Input(shape=model.input_shape[1:], dtype="uint8", name=INPUT_NAME)
    both = keras.ops.concatenate([inputs, keras.ops.flip(inputs, axis=2)], axis=0)
    probabilities = model(both)
    pairs = keras.ops.reshape(probabilities, (2, -1, probabilities.shape[-1]))
    outputs = layers.Identity(name=OUTPUT_NAME)(keras.ops.mean(pairs, axis=0))
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_averaged")


def base_network(model: keras.Model) -> keras.Model:
    """The trained network inside a model made by `with_flip_averaging`, or `model` itself."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if len(nested) == 1 else model


ARCHITECTURES: dict[str, ModelBuilder] = {
    "baseline": build_baseline,
    "resnet9-w16": lambda shape, classes: build_resnet9(shape, classes, 16),
    "resnet9-w24": lambda shape, classes: build_resnet9(shape, classes, 24),
    "resnet9-w32": lambda shape, classes: build_resnet9(shape, classes, 32),
    "resnet9-w64": lambda shape, classes: build_resnet9(shape, classes, 64),  # full width, as published
}


def build_model(
    architecture: str, input_shape: tuple[int, int, int], num_classes: int, precision: str = "float32"
) -> keras.Model:
    """Build the named architecture, computing in `precision` (a Keras dtype policy: float32 or
    mixed_bfloat16, whose weights stay float32); an unknown name lists the known ones."""
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}") from None
    with dtype_policy(precision):
        return builder(input_shape, num_classes)


def in_float32(model: keras.Model, architecture: str) -> keras.Model:
    """`model` itself if it computes in float32, else the same architecture built in float32 with its weights:
    what is evaluated and exported, whatever precision it trained in."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model
    copy = build_model(architecture, model.input_shape[1:], model.output_shape[-1])
    copy.set_weights(model.get_weights())  # mixed precision keeps float32 weights: they copy as they are
    return copy


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy set to `name` while layers are built inside the block."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def count_flops(model: keras.Model) -> int:
    """Floating-point operations for one image (a multiply-add counts 2), over convolutions and dense layers;
    normalisation, activations and pooling add well under 1% for these networks and are left out. A
    flip-averaged model counts its network twice."""
    if (network := base_network(model)) is not model:
        return 2 * count_flops(network)  # flip averaging runs the network twice
    flops = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            channels_in = layer.input.shape[-1]
            flops += 2 * height * width * kernel_h * kernel_w * channels_in * channels_out
        elif isinstance(layer, layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)

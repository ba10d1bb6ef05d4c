"""Network architectures by name. Every model takes raw uint8 RGB pixels (NHWC) and returns probabilities,
so its preprocessing travels with it into ONNX and serving cannot drift from training."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import keras
import numpy as np
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


WHITEN = "whiten"


def build_airbench(input_shape: tuple[int, int, int], num_classes: int, widths: tuple[int, int, int]) -> keras.Model:
    """Keller Jordan's airbench94 network (94% on CIFAR-10 in under 10 epochs), with ReLU for its GELU.

    A frozen 2x2 convolution that whitens the image's pixel patches (set from the training images by
    `initialise_from_data`), then three groups of conv + max-pool + batch norm + ReLU + conv + batch norm + ReLU
    of `widths` channels, a 3x3 max-pool, a dense layer without bias and logits scaled by 1/9. Batch norm learns
    a shift but no scale. Each convolution starts as the identity on its first input channels (plus noise on the
    rest), so the untrained network passes its input through. ReLU, not GELU: the int8 export runs GELU in
    float between the int8 convolutions, which made one image 36% slower at batch 1.
    """
    uniform = keras.initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform")  # PyTorch's default
    inputs = keras.Input(shape=input_shape, dtype="uint8", name=INPUT_NAME)
    x = layers.Normalization(mean=CIFAR10_MEAN, variance=[s * s for s in CIFAR10_STD], name="normalise")(inputs)
    x = layers.Conv2D(2 * 3 * 2 * 2, 2, use_bias=False, trainable=False, name=WHITEN)(x)
    x = layers.ReLU()(x)
    for group, filters in enumerate(widths, start=1):
        for conv in (1, 2):
            name = f"group{group}_conv{conv}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=uniform, name=name)(x)
            if conv == 1:
                x = layers.MaxPooling2D(2)(x)
            x = layers.BatchNormalization(momentum=0.6, epsilon=1e-5, scale=False)(x)
            x = layers.ReLU()(x)
    x = layers.MaxPooling2D(3)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=uniform)(x)
    x = layers.Rescaling(1 / 9, name="logit_scale")(x)
    outputs = layers.Activation("softmax", name=OUTPUT_NAME, dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=f"airbench_w{widths[0]}")
    for layer in model.layers:
        if layer.name.startswith("group"):
            kernel = layer.kernel.numpy()
            channels_in = kernel.shape[2]
            kernel[..., :channels_in] = 0
            kernel[1, 1, np.arange(channels_in), np.arange(channels_in)] = 1  # the identity, as a 3x3 convolution
            layer.kernel.assign(kernel)
    return model


def initialise_from_data(model: keras.Model, images: np.ndarray, samples: int = 5000, epsilon: float = 5e-4) -> None:
    """Set a model's whitening layer, if it has one, from the first `samples` of `images` (uint8 NHWC): its filters
    are the eigenvectors of the covariance of the normalised images' pixel patches, each scaled by its eigenvalue's
    inverse square root, and their negatives (so that a ReLU after it loses nothing)."""
    names = [layer.name for layer in model.layers]
    if WHITEN not in names:
        return
    whiten = model.get_layer(WHITEN)
    normalised = (images[:samples].astype("float64") - CIFAR10_MEAN) / CIFAR10_STD  # as the network's first layer
    kernel_h, kernel_w, channels, _ = whiten.kernel.shape
    height, width = normalised.shape[1:3]
    rows, columns = height - kernel_h + 1, width - kernel_w + 1
    offsets = [(i, j) for i in range(kernel_h) for j in range(kernel_w)]
    patches = np.stack([normalised[:, i : i + rows, j : j + columns] for i, j in offsets], axis=3)
    patches = patches.reshape(-1, kernel_h * kernel_w * channels)  # one patch a row, ordered (row, column, channel)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = (eigenvectors / np.sqrt(eigenvalues + epsilon)).T.reshape(-1, kernel_h, kernel_w, channels)
    kernel = np.concatenate([filters, -filters]).transpose(1, 2, 3, 0)  # (height, width, channels in, filters)
    whiten.kernel.assign(kernel.astype("float32"))


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
    "airbench-w64": lambda shape, classes: build_airbench(shape, classes, (64, 256, 256)),
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

"""The bundled default model on real labelled CIFAR-10 images shipped in tests/data/cifar10-sample/.

The sample is 30 images per class drawn at random from the validation split training held out
(tests/data/make_cifar10_sample.py), decoded the way the service decodes uploads.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from service.inference import CPU, OnnxModel
from training.data import Dataset, load_image_folder
from training.evaluation import keras_predictor
from training.export import check_parity

SAMPLE = Path(__file__).resolve().parent / "data" / "cifar10-sample"
MAX_BYTES = 10 * 1024 * 1024
INT8_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def model(bundled_model: Path) -> OnnxModel:
    return OnnxModel(bundled_model, providers=(CPU,))


@pytest.fixture(scope="module")
def sample(model: OnnxModel) -> Dataset:
    dataset, skipped = load_image_folder(SAMPLE, size=(model.info.height, model.info.width))
    assert not skipped
    return dataset


def test_the_sample_is_real_labelled_cifar10(sample: Dataset, model: OnnxModel) -> None:
    assert len(sample) == 300
    assert sample.class_names == sorted(model.info.labels)
    assert np.bincount(sample.labels).tolist() == [30] * 10


def test_bundled_model_gets_at_least_85_percent_of_the_sample_right(sample: Dataset, model: OnnxModel) -> None:
    # The sample's classes are folder names sorted; map them onto the model's label order.
    to_model = np.asarray([model.info.labels.index(name) for name in sample.class_names])
    predicted = model.predict(sample.images).argmax(axis=1)
    correct, total = int(np.count_nonzero(predicted == to_model[sample.labels])), len(sample)
    assert correct / total >= 0.85, f"{correct}/{total} correct"


def test_keras_and_onnx_runtime_agree_on_the_sample(sample: Dataset, bundled_model: Path, model: OnnxModel) -> None:
    import keras

    # models/default.keras is the float network the ONNX file was exported from. An int8 file cannot match it to
    # 1e-4: its probabilities may move by up to INT8_TOLERANCE, and its top class may differ from Keras's only
    # where Keras itself has two classes within that tolerance.
    tolerance = INT8_TOLERANCE if "quantization" in model.info.metadata else 1e-4
    reference = keras.saving.load_model(bundled_model.with_suffix(".keras"))
    report = check_parity(keras_predictor(reference), bundled_model, sample.images, tolerance=tolerance)
    assert report.images == len(sample)
    assert report.max_abs_difference <= tolerance
    assert report.argmax_mismatches == 0


def test_bundled_model_is_small_and_its_card_matches_it(bundled_model: Path, model: OnnxModel) -> None:
    card = json.loads((bundled_model.parent / "default.card.json").read_text())
    assert bundled_model.stat().st_size <= MAX_BYTES
    assert card["file_bytes"] == bundled_model.stat().st_size
    assert (card["name"], card["version"]) == (model.info.name, model.info.version)
    assert card["validation"]["accuracy"] == pytest.approx(model.info.eval_accuracy, abs=1e-4)
